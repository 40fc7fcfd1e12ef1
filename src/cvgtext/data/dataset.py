"""A dataset of (caption, gallery image) pairs, as the model sees them, and the bad-image policy.

An image that cannot be decoded (truncated, empty, not an image) is only found when a batch is
loaded. ``on_bad_image="raise"`` stops the run with a :class:`~cvgtext.utils.errors.DataError` naming
the file. ``"skip"`` leaves the pair out of its training batch instead (:func:`collate_pairs`
drops it and lists it under ``skipped``, for the module to count); validation and test raise
either way, since a gallery without the tile would change their metrics.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, default_collate

from cvgtext.data.annotations import Pair
from cvgtext.utils.errors import DataError

BAD_IMAGE_POLICIES = ("raise", "skip")


def load_image(path, header_only: bool = False) -> Image.Image | None:
    """Decode an image fully, turning any decoding failure into a DataError naming the file.

    ``convert`` reads every pixel, so a truncated JPEG fails here (PIL's
    ``LOAD_TRUNCATED_IMAGES`` is left off) rather than training on a half-grey tile. With
    ``header_only`` the file is only opened and its format and size read; nothing is returned.
    """
    return decode_image(path, f"image {path}", header_only)


def _rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB. 16-bit grey images (PNG, TIFF) are scaled to 8 bits: PIL's own conversion
    clips them, turning nearly every pixel white."""
    if image.mode == "I" or image.mode.startswith("I;16"):
        levels = np.asarray(image, dtype=np.float64) / 257
        image = Image.fromarray(np.clip(np.round(levels), 0, 255).astype(np.uint8), "L")
    return image.convert("RGB")


def read_image_bytes(path) -> bytes:
    """An image file's bytes, for the device to decode (``data.decode=device``)."""
    try:
        return path.read_bytes()
    except OSError as error:
        raise DataError(f"image {path} cannot be read ({error.strerror or error})") from None


def decode_image(source: Any, name: str, header_only: bool = False) -> Image.Image | None:
    """:func:`load_image` of a path or of an in-memory file (``io.BytesIO``), whose errors name
    it ``name``."""
    try:
        with Image.open(source) as image:
            return None if header_only else _rgb(image)
    except UnidentifiedImageError:
        # PIL's own message repeats the path and does not say what it found.
        empty = source.getbuffer().nbytes == 0 if isinstance(source, io.BytesIO) else os.path.getsize(source) == 0
        found = "an empty file" if empty else "no image format PIL reads"
        raise DataError(f"{name} cannot be decoded ({found}; expected an image such as a JPEG)") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise DataError(f"{name} cannot be decoded ({error})") from None


@dataclass(frozen=True)
class SkippedImage:
    """The item of a pair whose image cannot be decoded, in a training dataset that skips them."""

    message: str  # the DataError's: names the file and what went wrong


class PairDataset(Dataset):
    """Items are dicts: ``image`` [3, H, W], ``tokens`` [context], ``lat``/``lon`` (degrees),
    ``is_panorama``, ``index`` (position in this dataset), ``name`` and ``caption``.

    With ``on_bad_image="skip"`` and ``split="train"``, the item of an image that cannot be
    decoded is a :class:`SkippedImage`; every other split raises, saying why. With
    ``images=False`` items have no ``image`` and no image is read: evaluation against a
    gallery whose embeddings are already known needs only the captions. With ``tiles`` (a
    ``TileCache``) images come preprocessed from the decoded-tile cache instead of their files.
    With ``encoded`` items carry ``image_bytes`` (the file's bytes) and ``image_file`` (how
    messages name it) instead of ``image``: the device decodes them (``data.decode=device``).
    """

    def __init__(
        self,
        pairs: Sequence[Pair],
        preprocess: Callable[[Image.Image], torch.Tensor],
        tokenizer: Callable[..., torch.Tensor],
        split: str = "train",
        on_bad_image: str = "raise",
        images: bool = True,
        tiles: Any = None,
        encoded: bool = False,
    ):
        self.pairs = list(pairs)
        self.images = images
        # data.decode=device: items carry the file's bytes (image_bytes), decoded on the device
        self.encoded = encoded
        # A data.tile_cache.TileCache holding these pairs' images preprocessed, or None: decode each file.
        self.tiles = tiles
        # With the cache, the captions are tokenized once too.
        self.tokens = tokenizer([pair.caption for pair in self.pairs]) if tiles is not None and self.pairs else None
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.split = split
        self.on_bad_image = on_bad_image

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def names(self) -> list[str]:
        return [pair.name for pair in self.pairs]

    def __getitem__(self, index: int) -> dict[str, Any] | SkippedImage:
        pair = self.pairs[index]
        tokens = self.tokens[index] if self.tokens is not None else self.tokenizer([pair.caption])[0]
        item = pair_fields(pair, index, tokens)
        if not self.images:
            return item
        try:
            if self.tiles is not None:
                return {"image": self.tiles.image(pair.image_path), **item}
            if self.encoded:
                return {
                    "image_bytes": read_image_bytes(pair.image_path),
                    "image_file": f"image {pair.image_path}",
                    **item,
                }
            image = load_image(pair.image_path)
        except DataError as error:
            if self.on_bad_image == "raise":
                raise
            if self.split == "train":
                return SkippedImage(str(error))
            raise needs_every_image(str(error), self.split) from None
        return {"image": self.preprocess(image), **item}


def needs_every_image(message: str, split: str) -> DataError:
    """The error for an image of an evaluation split that cannot be decoded, under ``data.on_bad_image=skip``."""
    return DataError(
        f"{message}; data.on_bad_image=skip leaves bad images out of training only: "
        f"the {split} split needs every image, as a smaller gallery changes its metrics"
    )


def no_image_decoded(count: int, example: str) -> DataError:
    """The error for a training batch none of whose ``count`` images can be decoded (``example``: one's message)."""
    return DataError(
        f"none of the {count} images of a training batch can be decoded, e.g. {example}; check the image folder"
    )


def pair_fields(pair: Pair, index: int, tokens: torch.Tensor) -> dict[str, Any]:
    """An item's fields besides its image: the tokenized caption, the place, the view and the pair's position."""
    return {
        "tokens": tokens,
        "lat": pair.lat,
        "lon": pair.lon,
        "is_panorama": pair.is_panorama,
        "index": index,
        "name": pair.name,
        "caption": pair.caption,
    }


def collate_pairs(items: list[dict[str, Any] | SkippedImage]) -> dict[str, Any]:
    """Collate training items, leaving out the pairs whose image could not be decoded.

    The batch may then be smaller than asked for; ``skipped`` lists the messages of the pairs
    left out, so that the main process can count them (this runs in the loader's workers). A
    batch with no image left cannot be trained on, and means a broken folder rather than a few
    bad files: it raises.
    """
    kept = [item for item in items if not isinstance(item, SkippedImage)]
    skipped = [item.message for item in items if isinstance(item, SkippedImage)]
    if not kept:
        raise no_image_decoded(len(items), skipped[0])
    batch = default_collate(kept)
    batch["skipped"] = skipped
    return batch
