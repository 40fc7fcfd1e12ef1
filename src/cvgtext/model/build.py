"""The LightningModule a command evaluates or queries: built from the run's config, with the
weights of ``ckpt_path`` (a checkpoint of this project, or an open_clip / OpenAI-format state
dict) or the backbone's own pretrained weights (zero-shot)."""

from __future__ import annotations

from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from cvgtext.model.module import CrossViewRetrieval
from cvgtext.model.weights import load_state
from cvgtext.utils.checkpoints import check_backbone, model_state_dict, read_checkpoint
from cvgtext.utils.library_messages import weights_loaded_by_cvgtext

# What a checkpoint of this project records about its model and must keep when evaluated.
ARCHITECTURE_KEYS = ("context_length", "context_resize", "image_size", "image_aspect", "quick_gelu")
# What the model was built with where the config left it to the pretrained weights (a BLIP
# model's configuration, the tokenizer they came with): taken from the checkpoint as it is.
RESOLVED_KEYS = ("config", "tokenizer")


def backbone_for_checkpoint(backbone: dict[str, Any], checkpoint: dict[str, Any], path: str) -> dict[str, Any]:
    """The backbone to build for ``checkpoint``: no pretrained download, its own text length."""
    saved = checkpoint.get("hyper_parameters", {}).get("backbone")
    backbone = {**backbone, "pretrained": None}
    if "trained_on" in backbone:  # the checkpoint's weights, not an official file's
        backbone["trained_on"] = None
    if saved:
        check_backbone(saved, backbone["model_name"], path)
        backbone.update({key: saved[key] for key in ARCHITECTURE_KEYS + RESOLVED_KEYS if key in saved})
        # A checkpoint that does not record its activation was built with what its model name gives.
        backbone["quick_gelu"] = saved.get("quick_gelu")
    return backbone


def build_module(cfg: DictConfig) -> tuple[CrossViewRetrieval, dict[str, Any]]:
    """The module with the weights of ``cfg.ckpt_path``, or the backbone's own (zero-shot), and the
    backbone it was built with."""
    backbone = OmegaConf.to_container(cfg.backbone, resolve=True)
    state = None
    if cfg.get("ckpt_path"):
        checkpoint = read_checkpoint(cfg.ckpt_path)
        backbone = backbone_for_checkpoint(backbone, checkpoint, cfg.ckpt_path)
        state = model_state_dict(checkpoint)
        del checkpoint
    with weights_loaded_by_cvgtext(state is not None):  # built without weights, then given the checkpoint's
        module = instantiate(cfg.model, backbone=backbone)
    if state is not None:
        load_state(module.model, state, backbone.get("context_length"), backbone["context_resize"], cfg.ckpt_path)
    # with what the backbone resolved when it was built (the official checkpoint's file, ...)
    return module, dict(module.hparams.backbone)
