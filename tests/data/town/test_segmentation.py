"""The scene summary: classes by direction, vehicle boxes, a model loaded offline from a folder."""

from __future__ import annotations

import numpy as np
import pytest

from cvgtext.data.town.segmentation import SceneSegmenter, summarise_labels, vehicle_boxes

NAMES = {0: "sky", 1: "building", 2: "car", 3: "tree"}


def scene() -> np.ndarray:
    """A 40 x 80 panorama: sky above, buildings at the left (columns 10-30), a car ahead, a tree behind
    (400, 80 and 80 pixels of 3200)."""
    labels = np.zeros((40, 80), dtype=np.int64)
    labels[20:, 10:30] = 1
    labels[30:38, 36:46] = 2
    labels[20:, 0:4] = 3
    return labels


def test_classes_are_named_with_their_share_and_directions():
    summary = summarise_labels(scene(), NAMES, "panorama", 0.02)
    assert summary == "sky 82 % (behind, left, ahead, right); building 12 % (left); car 2 % (ahead); tree 2 % (behind)"
    # a photo's thirds: the buildings reach 3 columns into the middle third (60 of its 1040 pixels)
    assert (
        summarise_labels(scene(), NAMES, "single", 0.05) == "sky 82 % (left, ahead, right); building 12 % (left, ahead)"
    )


def test_vehicles_have_boxes():
    labels = scene()
    labels[5:8, 70:75] = 2  # a second car, apart from the first
    assert vehicle_boxes(labels, {2}) == [(70.0, 5.0, 75.0, 8.0), (36.0, 30.0, 46.0, 38.0)]


def test_a_segformer_loads_offline_from_a_folder_and_summarises(tmp_path):
    transformers = pytest.importorskip("transformers")
    import torch
    from PIL import Image

    torch.manual_seed(0)
    config = transformers.SegformerConfig(
        num_encoder_blocks=1, depths=[1], sr_ratios=[1], hidden_sizes=[8], num_attention_heads=[1], patch_sizes=[3],
        strides=[2], mlp_ratios=[1], decoder_hidden_size=8, num_labels=4, id2label=NAMES,
        label2id={v: k for k, v in NAMES.items()},
    )  # fmt: skip
    transformers.SegformerForSemanticSegmentation(config).save_pretrained(tmp_path / "segformer")
    transformers.SegformerImageProcessor(size={"height": 32, "width": 64}).save_pretrained(tmp_path / "segformer")
    segmenter = SceneSegmenter(str(tmp_path / "segformer"))
    boxes, summary = segmenter.summarise(Image.new("RGB", (128, 64), (120, 130, 140)), "panorama")
    labels = segmenter.labels(Image.new("RGB", (128, 64), (120, 130, 140)))
    assert labels.shape == (64, 128) and summary == summarise_labels(labels, NAMES, "panorama", 0.02)
    assert boxes == vehicle_boxes(labels, {2})


def test_a_folder_that_holds_no_model_is_named(tmp_path):
    pytest.importorskip("transformers")
    from cvgtext.utils.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot be loaded as a segmentation model"):
        SceneSegmenter(str(tmp_path))
