"""A dataset of (caption, gallery image) pairs, as the model sees them."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from cvgtext.data.annotations import Pair
from cvgtext.errors import DataError


def load_image(path) -> Image.Image:
    """Decode an image fully, turning any decoding failure into a DataError naming the file."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as error:
        raise DataError(f"image {path} cannot be decoded ({error})") from None


class PairDataset(Dataset):
    """Items are dicts: ``image`` [3, H, W], ``tokens`` [context], ``lat``/``lon`` (degrees),
    ``is_panorama``, ``index`` (position in this dataset), ``name`` and ``caption``."""

    def __init__(
        self,
        pairs: Sequence[Pair],
        preprocess: Callable[[Image.Image], torch.Tensor],
        tokenizer: Callable[..., torch.Tensor],
    ):
        self.pairs = list(pairs)
        self.preprocess = preprocess
        self.tokenizer = tokenizer

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def names(self) -> list[str]:
        return [pair.name for pair in self.pairs]

    def __getitem__(self, index: int) -> dict[str, Any]:
        pair = self.pairs[index]
        return {
            "image": self.preprocess(load_image(pair.image_path)),
            "tokens": self.tokenizer([pair.caption])[0],
            "lat": pair.lat,
            "lon": pair.lon,
            "is_panorama": pair.is_panorama,
            "index": index,
            "name": pair.name,
            "caption": pair.caption,
        }
