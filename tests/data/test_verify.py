"""data.verify_images: every unreadable image listed in one message before training, or left out."""

from __future__ import annotations

import pytest
from torchvision.transforms.functional import to_tensor

from cvgtext.data.datamodule import CVGTextDataModule
from cvgtext.data.verify import check_image, unreadable_images
from cvgtext.utils.errors import ConfigError, DataError
from helpers.city import CITY, image_path, photo_name, training_names


def make(release_dir, **kwargs):
    kwargs.setdefault("batch_size", 4)
    return CVGTextDataModule(
        data_dir=release_dir, city=CITY, val_fraction=0.3, preprocess=to_tensor, tokenizer=lambda texts: texts, **kwargs
    )


def break_images(release_dir):
    """A truncated and an empty training image, and a training image that is text; their paths."""
    names = training_names(release_dir)[:3]
    paths = [image_path(release_dir, name) for name in names]
    jpeg = paths[0].read_bytes()
    paths[0].write_bytes(jpeg[:-10])  # the header is whole, the pixels are not
    paths[1].write_bytes(b"")
    paths[2].write_bytes(b"not an image\n")
    return paths


def test_header_finds_empty_and_foreign_files_and_full_also_truncated_ones(release_dir):
    truncated, empty, text = break_images(release_dir)
    header = unreadable_images([truncated, empty, text, truncated], "header")
    assert set(header) == {empty, text}
    assert "an empty file" in header[empty]
    full = unreadable_images([truncated, empty, text], "full")
    assert set(full) == {truncated, empty, text}
    assert check_image(image_path(release_dir, training_names(release_dir)[5]), "full") is None
    assert unreadable_images([truncated], "off") == {}


def test_verify_lists_every_unreadable_image_in_one_message(release_dir):
    paths = break_images(release_dir)
    with pytest.raises(DataError) as raised:
        make(release_dir, verify_images="full").setup("fit")
    message = str(raised.value)
    assert message.startswith(f"3 images of {CITY} cannot be used (data.verify_images=full)")
    assert all(str(path) in message for path in paths)
    assert "data.on_bad_image=skip" in message


def test_with_skip_the_unreadable_training_pairs_are_left_out_up_front(release_dir, caplog):
    paths = break_images(release_dir)
    reference = make(release_dir)
    reference.setup("fit")
    datamodule = make(release_dir, verify_images="full", on_bad_image="skip")
    datamodule.setup("fit")
    assert len(datamodule.pairs["train"]) == len(reference.pairs["train"]) - 3
    assert not {pair.image_path for pair in datamodule.pairs["train"]} & set(paths)
    assert len(datamodule.left_out) == 3
    assert "left 3 training pairs out" in caplog.text


def test_skip_does_not_leave_out_a_test_tile(release_dir):
    tile = image_path(release_dir, photo_name(0), f"{CITY}-photos")  # photo 0 is a test image
    tile.write_bytes(b"")
    with pytest.raises(DataError, match="validation and test need every image"):
        make(release_dir, verify_images="header", on_bad_image="skip").setup("fit")


def test_an_unknown_level_is_refused(release_dir):
    with pytest.raises(ConfigError, match="data.verify_images='fast' is not one of off, header, full"):
        make(release_dir, verify_images="fast")


def test_a_training_split_smaller_than_a_batch_is_refused_for_fitting_only(release_dir):
    datamodule = make(release_dir, batch_size=64)
    datamodule.setup("test")  # evaluation does not need a training batch
    with pytest.raises(ConfigError, match=r"the train split of .* has \d+ pairs, fewer than data.batch_size=64"):
        datamodule.setup("fit")
