"""Positional-embedding resizing: longer text contexts (EPE, Long-CLIP) and 2:1 image inputs."""

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg, CustomTextCLIP
from torch import nn

from cvgtext.model.positional import (
    causal_mask,
    resize_state_dict_context_length,
    resize_text_positional_embedding,
    resize_vision_positional_embedding,
    set_context_length,
    set_image_size,
    vision_grid,
)

VISION = dict(image_size=64, patch_size=16, width=32, layers=1, head_width=16)
TEXT = dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1)
MODEL_CLASSES = [CLIP, CustomTextCLIP]


def tiny_model(model_class=CLIP, **vision) -> nn.Module:
    """A randomly initialised open_clip model, the same for the same arguments."""
    torch.manual_seed(0)
    vision_cfg = CLIPVisionCfg(**{**VISION, **vision})
    return model_class(embed_dim=16, vision_cfg=vision_cfg, text_cfg=CLIPTextCfg(**TEXT)).eval()


def text_tower(model: nn.Module) -> nn.Module:
    """The module holding the text positional embedding and attention mask."""
    return model.text if isinstance(model, CustomTextCLIP) else model


def encode(model: nn.Module, texts: list[str]) -> torch.Tensor:
    tokens = open_clip.tokenize(texts, context_length=model.context_length)
    with torch.no_grad():
        return model.encode_text(tokens)


def long_clip_stretch(pos: torch.Tensor, keep: int = 20) -> torch.Tensor:
    """Long-CLIP's own 4x stretch of the rows after ``keep``, written out as in its code."""
    length = pos.shape[0]
    new = torch.zeros(4 * length - 3 * keep, pos.shape[1])
    new[:keep] = pos[:keep]
    for i in range(length - 1 - keep):
        for k in range(4):
            new[4 * i + k + keep] = (4 - k) * pos[i + keep] / 4 + k * pos[i + 1 + keep] / 4
    for k in range(4):
        new[4 * length - 3 * keep - 4 + k] = pos[-1] + k * (pos[-1] - pos[-2]) / 4
    return new


# Text positional embedding


@pytest.mark.parametrize("mode", ["interpolate", "keep_first"])
@pytest.mark.parametrize(("old", "new"), [(77, 300), (300, 77), (77, 248)])
def test_resize_gives_requested_shape_and_dtype(mode, old, new):
    pos = torch.randn(old, 8, dtype=torch.float16)

    resized = resize_text_positional_embedding(pos, new, mode=mode)

    assert resized.shape == (new, 8)
    assert resized.dtype == torch.float16


@pytest.mark.parametrize("mode", ["interpolate", "keep_first"])
def test_resize_to_same_length_is_identity(mode):
    pos = torch.randn(77, 8)

    assert torch.equal(resize_text_positional_embedding(pos, 77, mode=mode), pos)


def test_keep_first_keeps_the_first_rows_exactly():
    pos = torch.randn(77, 8)

    resized = resize_text_positional_embedding(pos, 300, mode="keep_first", keep=20)

    assert torch.equal(resized[:20], pos[:20])


def test_keep_first_reproduces_long_clip_248():
    pos = torch.randn(77, 8)

    resized = resize_text_positional_embedding(pos, 248, mode="keep_first", keep=20)

    torch.testing.assert_close(resized, long_clip_stretch(pos), atol=1e-6, rtol=1e-6)


def test_interpolate_keeps_a_constant_embedding_constant():
    pos = torch.full((77, 8), 0.25)

    resized = resize_text_positional_embedding(pos, 300)

    torch.testing.assert_close(resized, torch.full((300, 8), 0.25))


def test_resize_rejects_unknown_mode_and_too_short_tail():
    pos = torch.randn(77, 8)
    with pytest.raises(ValueError, match="unknown resize mode"):
        resize_text_positional_embedding(pos, 300, mode="nearest")
    with pytest.raises(ValueError, match="keep"):
        resize_text_positional_embedding(pos, 10, mode="keep_first", keep=20)


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_set_context_length_accepts_300_tokens(model_class):
    model = set_context_length(tiny_model(model_class), 300)
    tower = text_tower(model)

    features = encode(model, ["a street corner next to a park", "a roundabout"])

    assert features.shape == (2, 16)
    assert model.context_length == 300
    assert tower.positional_embedding.shape == (300, TEXT["width"])
    assert any(p is tower.positional_embedding for p in model.parameters())


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_set_context_length_rebuilds_causal_mask(model_class):
    model = set_context_length(tiny_model(model_class), 300)

    mask = text_tower(model).attn_mask

    assert mask.shape == (300, 300)
    above_diagonal = torch.ones(300, 300, dtype=torch.bool).triu(1)
    assert torch.isinf(mask[above_diagonal]).all() and (mask[above_diagonal] < 0).all()
    assert (mask[~above_diagonal] == 0).all()
    assert torch.equal(mask, causal_mask(300))


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_words_after_77_tokens_count_only_with_longer_context(model_class):
    prefix = "a " * 100  # one token per word, so both texts share far more than 76 tokens
    texts = [prefix + "north of the river", prefix + "south of the station"]
    short_tokens = open_clip.tokenize(texts, context_length=77)
    assert torch.equal(short_tokens[0], short_tokens[1])

    at_77 = encode(tiny_model(model_class), texts)
    at_300 = encode(set_context_length(tiny_model(model_class), 300), texts)

    assert torch.equal(at_77[0], at_77[1])
    assert not torch.allclose(at_300[0], at_300[1])


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_keep_first_leaves_short_captions_unchanged(model_class):
    # The causal mask limits each token to the positions before it and pooling reads the
    # end-of-text token, so a caption within the 20 kept positions is encoded as before.
    texts = ["a tall tower", "two bus stops by a bakery"]

    at_77 = encode(tiny_model(model_class), texts)
    at_300 = encode(set_context_length(tiny_model(model_class), 300, mode="keep_first"), texts)

    torch.testing.assert_close(at_300, at_77, atol=1e-6, rtol=1e-5)


def test_set_context_length_rejects_towers_without_positional_embedding():
    with pytest.raises(ValueError, match="Linear"):
        set_context_length(nn.Linear(2, 2), 300)


# Checkpoints with another number of text positions


def test_300_position_state_dict_round_trips(tmp_path):
    saved = set_context_length(tiny_model(), 300)
    torch.save(saved.state_dict(), tmp_path / "epe.pt")

    fresh = set_context_length(tiny_model(), 300)
    with torch.no_grad():
        for parameter in fresh.parameters():
            parameter.zero_()
    fresh.load_state_dict(torch.load(tmp_path / "epe.pt"))

    texts = ["a long description " * 30, "a short one"]
    assert torch.equal(encode(fresh, texts), encode(saved, texts))


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_300_position_state_dict_loads_into_77_model(model_class):
    state_dict = set_context_length(tiny_model(model_class), 300).state_dict()

    resized = resize_state_dict_context_length(state_dict, 77)
    model = tiny_model(model_class)
    result = model.load_state_dict(resized, strict=True)

    assert not result.missing_keys and not result.unexpected_keys
    assert text_tower(model).positional_embedding.shape == (77, TEXT["width"])


def test_resizing_state_dict_equals_resizing_model():
    texts = ["a long description " * 30, "a short one"]
    expected = encode(set_context_length(tiny_model(), 300), texts)

    model = set_context_length(tiny_model(), 300)
    model.load_state_dict(resize_state_dict_context_length(tiny_model().state_dict(), 300))

    assert torch.equal(encode(model, texts), expected)


def test_state_dict_resize_handles_prefix_and_saved_mask():
    state_dict = {f"module.{k}": v for k, v in tiny_model().state_dict().items()}
    state_dict["module.attn_mask"] = causal_mask(77)

    resized = resize_state_dict_context_length(state_dict, 300, prefix="module.")

    assert resized["module.positional_embedding"].shape == (300, TEXT["width"])
    assert torch.equal(resized["module.attn_mask"], causal_mask(300))
    assert state_dict["module.positional_embedding"].shape[0] == 77  # input left as it was
    with pytest.raises(ValueError, match="prefix"):
        resize_state_dict_context_length(state_dict, 300)


# Image size


def test_set_image_size_accepts_2_to_1_panoramas():
    model = set_image_size(tiny_model(), (64, 128))

    with torch.no_grad():
        features = model.encode_image(torch.randn(2, 3, 64, 128))

    assert features.shape == (2, 16)
    assert model.visual.image_size == (64, 128)
    assert model.visual.grid_size == (4, 8)
    assert model.visual.positional_embedding.shape == (1 + 4 * 8, VISION["width"])


def test_set_image_size_to_same_size_is_identity():
    reference = tiny_model()
    model = set_image_size(tiny_model(), (64, 64))
    images = torch.randn(2, 3, 64, 64)

    assert torch.equal(model.visual.positional_embedding, reference.visual.positional_embedding)
    with torch.no_grad():
        assert torch.equal(model.encode_image(images), reference.encode_image(images))


def test_set_image_size_keeps_class_token_and_resizes_rows_and_columns_separately():
    model = tiny_model()
    with torch.no_grad():
        # Patch positions that vary with the grid row only: doubling the width must copy each
        # row along the new columns, which catches a height/width mix-up in the reshape.
        rows = torch.randn(4, 1, VISION["width"]).expand(4, 4, -1).reshape(16, -1)
        model.visual.positional_embedding[1:] = rows
    class_row = model.visual.positional_embedding[0].clone()

    set_image_size(model, (64, 128))

    pos = model.visual.positional_embedding.detach()
    assert torch.equal(pos[0], class_row)
    grid = pos[1:].reshape(4, 8, -1)
    torch.testing.assert_close(grid, rows.reshape(4, 4, -1)[:, :1].expand(4, 8, -1))


def test_set_image_size_rejects_resnet_tower():
    model = tiny_model(layers=(1, 1, 1, 1), width=8)

    with pytest.raises(ValueError, match="ModifiedResNet"):
        set_image_size(model, (64, 128))


def test_set_image_size_rejects_sizes_not_divisible_by_patch():
    with pytest.raises(ValueError, match="patch size"):
        set_image_size(tiny_model(), (64, 100))


def test_vision_grid_resize_is_the_official_bicubic_without_antialiasing():
    pos = torch.randn(1 + 14 * 14, 32, generator=torch.Generator().manual_seed(0))
    resized = resize_vision_positional_embedding(pos, (14, 14), (14, 28))
    grid = pos[1:].reshape(1, 14, 14, 32).permute(0, 3, 1, 2)
    for antialias, same in ((False, True), (True, False)):
        expected = F.interpolate(grid, size=(14, 28), mode="bicubic", align_corners=False, antialias=antialias)
        expected = torch.cat([pos[:1], expected.permute(0, 2, 3, 1).reshape(14 * 28, 32)])
        assert torch.equal(resized, expected) is same


def test_vision_grids_of_weight_files_are_recognised_as_square_or_2_to_1():
    assert vision_grid(1 + 24 * 24) == (24, 24)
    assert vision_grid(1 + 14 * 28) == (14, 28)
    with pytest.raises(ValueError, match="neither a square nor a 2:1"):
        vision_grid(1 + 10 * 30)
