"""Decoding images, and the bad-image policy: raise, or leave the pair out of its training batch."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from cvgtext.data.annotations import Pair
from cvgtext.data.dataset import PairDataset, SkippedImage, collate_pairs, load_image
from cvgtext.utils.errors import DataError


def jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 60).convert("RGB").save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "content, found",
    [
        (jpeg_bytes()[:-2], "truncated"),
        (jpeg_bytes()[:300], "Truncated"),
        (b"", "an empty file"),
        (b"this is text, not a JPEG\n", "no image format PIL reads"),
    ],
    ids=["end-missing", "half-missing", "zero-bytes", "text"],
)
def test_an_image_that_cannot_be_fully_decoded_is_named(tmp_path, content, found):
    path = tmp_path / "1.0,2.0_a.jpg"
    path.write_bytes(content)
    with pytest.raises(DataError, match=f"image {path} cannot be decoded \\(.*{found}"):
        load_image(path)


def dataset(tmp_path, split: str, on_bad_image: str) -> PairDataset:
    """Two pairs; the second's image is empty."""
    pairs = []
    for i, content in enumerate((jpeg_bytes(), b"")):
        path = tmp_path / f"1.0,{i}.0_a.jpg"
        path.write_bytes(content)
        pairs.append(Pair(path.name, f"caption {i}", path, 1.0, float(i), False))
    return PairDataset(pairs, lambda image: torch.zeros(3, 4, 4), lambda texts: torch.zeros(1, 5), split, on_bad_image)


def test_raise_stops_at_the_bad_image(tmp_path):
    with pytest.raises(DataError, match="cannot be decoded") as error:
        dataset(tmp_path, "train", "raise")[1]
    assert "on_bad_image" not in str(error.value)


def test_skip_leaves_a_training_pair_out_and_keeps_its_message(tmp_path):
    training = dataset(tmp_path, "train", "skip")
    skipped = training[1]
    assert isinstance(skipped, SkippedImage) and str(training.pairs[1].image_path) in skipped.message
    batch = collate_pairs([training[0], skipped])
    assert batch["index"].tolist() == [0] and batch["skipped"] == [skipped.message]


@pytest.mark.parametrize("split", ["val", "test"])
def test_skip_does_not_apply_to_evaluation_splits(tmp_path, split):
    with pytest.raises(DataError, match=f"training only: the {split} split needs every image"):
        dataset(tmp_path, split, "skip")[1]


def test_a_training_batch_without_any_readable_image_stops(tmp_path):
    skipped = dataset(tmp_path, "train", "skip")[1]
    with pytest.raises(DataError, match="none of the 2 images of a training batch can be decoded"):
        collate_pairs([skipped, skipped])


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_a_16_bit_grey_image_is_scaled_to_8_bits_not_clipped(tmp_path, mode):
    import numpy as np

    ramp = np.tile(np.linspace(0, 65535, 256), (4, 1)).round().astype(np.uint16 if mode == "I;16" else np.int32)
    path = tmp_path / "grey16.png"
    Image.fromarray(ramp, mode).save(path)
    pixels = np.asarray(load_image(path))
    assert pixels.shape == (4, 256, 3) and pixels.dtype == np.uint8
    # 0 .. 65535 becomes 0 .. 255 in even steps (PIL's own conversion makes nearly all of it 255).
    assert pixels[0, 0, 0] == 0 and pixels[0, -1, 0] == 255 and abs(int(pixels[0, 128, 0]) - 128) <= 2
    assert (pixels == 255).mean() < 0.01
