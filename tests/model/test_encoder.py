"""What the backbone settings build: activation, input size and aspect, and what is refused."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from open_clip.transformer import QuickGELU
from PIL import Image

from cvgtext.model.encoder import build_encoder, resolve_quick_gelu
from cvgtext.model.module import CrossViewRetrieval
from cvgtext.utils.errors import ConfigError
from helpers.runs import compose_config


def backbone(tmp_path, *overrides: str) -> dict:
    cfg = compose_config("train", list(overrides), tmp_path)
    return OmegaConf.to_container(cfg.backbone, resolve=True)


def activations(model: torch.nn.Module) -> set[type]:
    return {type(block.mlp.gelu) for block in model.transformer.resblocks}


@pytest.mark.parametrize(
    "img, overrides, size",
    [
        ("sat", [], (64, 64)),
        ("stv", [], (64, 128)),
        ("stv", ["backbone.image_size=32"], (32, 64)),
        ("stv", ["backbone.image_size=[48,48]"], (48, 48)),
    ],
)
def test_street_views_are_fed_at_twice_the_width_unless_the_size_is_given(tmp_path, img, overrides, size):
    encoder = build_encoder(**backbone(tmp_path, f"img={img}", *overrides))
    assert encoder.image_size == size
    panorama = Image.new("RGB", (200, 100), (10, 20, 30))
    assert encoder.preprocess(panorama).shape == (3, *size)
    with torch.no_grad():
        assert encoder.model.encode_image(torch.zeros(1, 3, *size)).shape == (1, 128)


def test_the_real_backbones_use_quickgelu_and_the_tiny_one_gelu(tmp_path):
    assert backbone(tmp_path, "backbone=vit_b16")["quick_gelu"] is True
    assert backbone(tmp_path, "backbone=vit_l14_336")["quick_gelu"] is True
    assert backbone(tmp_path)["quick_gelu"] is False
    assert activations(build_encoder("cvg-tiny", quick_gelu=True).model) == {QuickGELU}
    assert activations(build_encoder("cvg-tiny", quick_gelu=False).model) == {torch.nn.GELU}


def test_quick_gelu_follows_or_must_agree_with_a_pretrained_tag():
    assert resolve_quick_gelu("ViT-B-16", "openai", None) is True
    assert resolve_quick_gelu("ViT-B-16", "laion2b_s34b_b88k", None) is False
    assert resolve_quick_gelu("ViT-B-16", "weights/finetuned.pt", True) is True  # a file: the setting decides
    with pytest.raises(ConfigError, match=r"backbone.quick_gelu=true, but .*laion2b_s34b_b88k were trained with GELU"):
        resolve_quick_gelu("ViT-B-16", "laion2b_s34b_b88k", True)
    with pytest.raises(ConfigError, match=r"quick_gelu=false, but .*ViT-B-16/openai were trained with QuickGELU"):
        resolve_quick_gelu("ViT-B-16", "openai", False)


def test_checkpoints_record_the_activation_a_pretrained_tag_chose(monkeypatch):
    monkeypatch.setattr(
        "cvgtext.model.module.build_encoder",
        lambda **backbone: build_encoder(
            **{**backbone, "pretrained": None, "quick_gelu": resolve_quick_gelu("ViT-B-16", "openai", None)}
        ),
    )
    module = CrossViewRetrieval(
        backbone={"model_name": "cvg-tiny", "pretrained": "openai", "quick_gelu": None},
        optimizer={"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3},
    )
    assert module.hparams.backbone["quick_gelu"] is True
