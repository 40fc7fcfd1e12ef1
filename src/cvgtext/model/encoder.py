"""The dual encoder: an open_clip CLIP model with its image preprocessing and tokenizer.

The backbone is chosen by an open_clip model name (``ViT-B-16``, ``ViT-L-14-336``, or the
project's own ``cvg-tiny`` from ``configs/``) and ``pretrained``: an open_clip pretrained tag
(``openai``, ``laion2b_s34b_b88k``, ...), a local checkpoint file, or nothing (random init).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import open_clip
import torch
from torch import nn

from cvgtext.errors import ConfigError

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "configs"
open_clip.add_model_config(CONFIG_DIR)


@dataclass
class Encoder:
    """What a run needs from a backbone: the model, how to prepare images, how to tokenize text."""

    model: nn.Module
    preprocess: Callable[[Any], torch.Tensor]
    tokenizer: Callable[..., torch.Tensor]
    context_length: int


def _check_model_name(model_name: str) -> None:
    if model_name not in open_clip.list_models():
        raise ConfigError(
            f"backbone.model_name={model_name!r} is not an open_clip model; "
            f"choose one of open_clip.list_models(), e.g. ViT-B-16, ViT-L-14-336 or cvg-tiny"
        )


def _is_local_file(pretrained: str | None) -> bool:
    return bool(pretrained) and (Path(pretrained).suffix != "" or Path(pretrained).exists())


def build_encoder(
    model_name: str = "cvg-tiny",
    pretrained: str | None = None,
    context_length: int | None = None,
    context_resize: str = "interpolate",
    image_size: int | list[int] | None = None,
    name: str | None = None,
) -> Encoder:
    """Build the open_clip model, its evaluation preprocessing and tokenizer.

    ``context_length`` other than the model's own resizes the text positional embedding
    (``context_resize``: ``interpolate`` or ``keep_first``) after the weights are loaded, so
    pretrained positions are stretched, not re-learnt. ``image_size`` changes the input size of
    the image tower (``[height, width]`` for 2:1 street-view panoramas). ``name`` is the
    config's short label of the backbone and plays no part here.
    """
    from cvgtext.model.positional import set_context_length, set_image_size

    _check_model_name(model_name)
    checkpoint = pretrained if _is_local_file(pretrained) else None
    tag = None if checkpoint else pretrained
    if checkpoint and not Path(checkpoint).is_file():
        raise ConfigError(f"backbone.pretrained={checkpoint!r}: no such checkpoint file")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=tag)
    except RuntimeError as error:
        raise ConfigError(
            f"backbone.pretrained={tag!r} could not be loaded for {model_name} ({error}); "
            f"known tags: {open_clip.list_pretrained_tags_by_model(model_name)}"
        ) from error
    native_length = model_context_length(model)
    length = context_length or native_length
    if checkpoint:
        from cvgtext.checkpoints import load_weights

        load_weights(model, checkpoint, context_length=length, context_resize=context_resize)
    elif length != native_length:
        set_context_length(model, length, mode=context_resize)
    if image_size is not None:
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        set_image_size(model, size)
        preprocess = open_clip.image_transform(
            size, is_train=False, mean=model.visual.image_mean, std=model.visual.image_std
        )
    tokenizer = open_clip.get_tokenizer(model_name, context_length=length)
    return Encoder(model=model, preprocess=preprocess, tokenizer=tokenizer, context_length=length)


def model_context_length(model: nn.Module) -> int:
    """Number of text tokens the model accepts (open_clip keeps it on the model)."""
    return int(model.context_length)
