"""Builds the :class:`~cvgtext.model.family.Encoder` of every backbone family.

Its ``model`` is what training, evaluation, the query tool and the re-rankers use, whatever the
family (:class:`~cvgtext.model.family.DualEncoder`): ``encode_image`` and ``encode_text`` give
the embeddings, ``logit_scale`` the learnt temperature (and ``logit_bias``, where the model has
one, the sigmoid loss's bias); the loss is chosen by ``model.loss`` for every family. Families:

- ``open_clip``: an open_clip model name (CLIP ``ViT-B-16``, ``ViT-L-14-336``, SigLIP
  ``ViT-B-16-SigLIP-256``, or the project's own ``cvg-tiny`` models from ``configs/``) and
  ``pretrained``: an open_clip pretrained tag (``openai``, ``webli``, ...), a local checkpoint
  file, ``crosstext2loc`` (the official CrossText2Loc checkpoint of ``trained_on``'s city and
  gallery type in the folder ``checkpoints``, :mod:`cvgtext.model.official`), or nothing
  (random init).
- ``blip``: BLIP's image-text retrieval model from ``transformers`` (``model/blip.py``), whose
  image-text matching head also re-ranks (``reranker=blip_itm``).
- ``vilt``: ViLT's image-and-text retrieval model from ``transformers`` (``model/vilt.py``), a
  single-stream pair scorer, evaluated pair by pair.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import open_clip
from torch import nn

from cvgtext.model import official
from cvgtext.model.family import FAMILIES, Encoder
from cvgtext.model.weights import load_weights
from cvgtext.utils.errors import ConfigError
from cvgtext.utils.library_messages import download_failure_reported_by_cvgtext, weights_loaded_by_cvgtext

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "configs"
open_clip.add_model_config(CONFIG_DIR)


def _check_model_name(model_name: str) -> None:
    if model_name not in open_clip.list_models():
        raise ConfigError(
            f"backbone.model_name={model_name!r} is not an open_clip model; "
            f"choose one of open_clip.list_models(), e.g. ViT-B-16, ViT-L-14-336 or cvg-tiny"
        )


def _is_local_file(pretrained: str | None) -> bool:
    return bool(pretrained) and (Path(pretrained).suffix != "" or Path(pretrained).exists())


def resolve_quick_gelu(model_name: str, pretrained: str | None, quick_gelu: bool | None) -> bool:
    """Whether the model uses QuickGELU: ``quick_gelu``, or when ``None`` what the weights need.

    OpenAI's CLIP, and every model fine-tuned from it (CrossText2Loc's among them), uses
    QuickGELU, ``x * sigmoid(1.702 x)``; most other weights use GELU. A weight file does not
    say which (OpenAI and open_clip state dicts have the same keys), so for a file the setting
    decides; for an open_clip pretrained tag, ``None`` follows the tag, and a setting that
    contradicts the tag is refused rather than giving silently wrong embeddings.
    """
    model_cfg = open_clip.get_model_config(model_name) or {}
    built_in = bool(model_cfg.get("quick_gelu", False))  # the -quickgelu model names
    tag = None if _is_local_file(pretrained) else pretrained
    tag_cfg = open_clip.get_pretrained_cfg(model_name, tag) if tag else {}
    tag_quick = bool(tag_cfg.get("quick_gelu", False)) if tag_cfg else None
    if quick_gelu is None:
        return built_in or bool(tag_quick)
    if built_in and not quick_gelu:
        raise ConfigError(
            f"backbone.quick_gelu=false, but open_clip's {model_name} is built with QuickGELU; "
            f"use the model name without -quickgelu"
        )
    if tag_quick is not None and tag_quick != bool(quick_gelu):
        activation = "QuickGELU" if tag_quick else "GELU"
        raise ConfigError(
            f"backbone.quick_gelu={str(bool(quick_gelu)).lower()}, but the pretrained weights "
            f"{model_name}/{tag} were trained with {activation}: set backbone.quick_gelu="
            f"{str(tag_quick).lower()} (or null to follow the pretrained tag)"
        )
    return bool(quick_gelu)


def input_size(native: tuple[int, int], image_size: int | list[int] | None, image_aspect: float) -> tuple[int, int]:
    """``(height, width)`` of the model's input images.

    ``image_size``: ``[height, width]`` as given, or a height (``None``: the model's own) whose
    width is ``image_aspect`` times it (2 for the 2:1 street-view panoramas).
    """
    if image_size is not None and not isinstance(image_size, int):
        if len(image_size) != 2:
            raise ConfigError(f"backbone.image_size={list(image_size)} must be a height or [height, width]")
        return int(image_size[0]), int(image_size[1])
    height = native[0] if image_size is None else image_size
    return height, int(round(height * image_aspect))


def build_encoder(
    model_name: str = "cvg-tiny",
    pretrained: str | None = None,
    *,
    family: str = "open_clip",
    loss: str | None = None,
    **settings: Any,
) -> Encoder:
    """The encoder of ``backbone.family`` built from the rest of the backbone's settings
    (``loss``, the loss the backbone was trained with, is ``model.loss.kind``'s default)."""
    if family == "blip":
        from cvgtext.model.blip import build_blip_encoder

        return build_blip_encoder(model_name, pretrained, **settings)
    if family == "vilt":
        from cvgtext.model.vilt import build_vilt_encoder

        return build_vilt_encoder(model_name, pretrained, **settings)
    if family != "open_clip":
        raise ConfigError(f"backbone.family={family!r} is not a backbone family; choose one of {', '.join(FAMILIES)}")
    return build_open_clip_encoder(model_name, pretrained, **settings)


def build_open_clip_encoder(
    model_name: str = "cvg-tiny",
    pretrained: str | None = None,
    context_length: int | None = None,
    context_resize: str = "interpolate",
    image_size: int | list[int] | None = None,
    image_aspect: float = 1,
    quick_gelu: bool | None = None,
    tokenizer: str | None = None,
    name: str | None = None,
    trained_on: dict[str, str] | None = None,
    checkpoints: str | None = None,
) -> Encoder:
    """Build the open_clip model, its evaluation preprocessing and tokenizer.

    ``context_length`` other than the model's own resizes the text positional embedding
    (``context_resize``: ``interpolate`` or ``keep_first``) after the weights are loaded, so
    pretrained positions are stretched, not re-learnt. ``image_size`` and ``image_aspect``
    give the input size of the image tower (see :func:`input_size`); another size than the
    model's own interpolates the vision positional embedding to the new patch grid after the
    weights are loaded, and images are then resized to it without cropping (2:1 street-view
    panoramas). ``quick_gelu`` chooses the activation (see :func:`resolve_quick_gelu`).
    ``tokenizer``: for models with a Hugging Face tokenizer (SigLIP), a folder holding a copy of
    it instead of the model hub's (see :func:`open_clip_tokenizer`). ``name`` is the config's
    short label of the backbone and plays no part here. ``pretrained=crosstext2loc`` loads the
    official checkpoint trained on ``trained_on`` (``{city, img}``) found in ``checkpoints``.
    """
    from cvgtext.model.positional import set_context_length, set_image_size

    _check_model_name(model_name)
    resolved: dict[str, Any] = {}
    if pretrained == official.TAG:
        found = official.official_checkpoint(checkpoints or "", **(trained_on or {"city": "", "img": ""}))
        log.info("backbone.pretrained=%s: the official checkpoint %s", official.TAG, found.path)
        pretrained = resolved["pretrained"] = str(found.path)
    checkpoint = pretrained if _is_local_file(pretrained) else None
    tag = None if checkpoint else pretrained
    if checkpoint and not Path(checkpoint).is_file():
        raise ConfigError(f"backbone.pretrained={checkpoint!r}: no such checkpoint file")
    quick = resolve_quick_gelu(model_name, pretrained, quick_gelu)
    try:
        # open_clip's own words on weights it did not load: untrue for a checkpoint loaded below,
        # and a download failure is reported here, once
        with weights_loaded_by_cvgtext(bool(checkpoint)), download_failure_reported_by_cvgtext():
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=tag, force_quick_gelu=quick
            )
    except RuntimeError as error:
        raise ConfigError(
            f"backbone.pretrained={tag!r} could not be loaded for {model_name} ({error}); "
            f"known tags: {open_clip.list_pretrained_tags_by_model(model_name)}"
        ) from error
    native_length = model_context_length(model)
    length = context_length or native_length
    native = getattr(model.visual, "image_size", None) or 0  # ResNet towers keep an int
    native_size = (native, native) if isinstance(native, int) else tuple(native)
    size = input_size(native_size, image_size, image_aspect)
    if size != native_size:
        _check_resizable(model, model_name, size)
        try:
            # Before a checkpoint is loaded, which is then interpolated to this grid if it is square.
            set_image_size(model, size)
        except ValueError as error:
            raise ConfigError(
                f"backbone.image_size / img: cannot feed {size[0]}x{size[1]} images to {model_name} ({error})"
            ) from None
        resize_mode = "shortest" if size[0] == size[1] else "squash"  # panoramas: resize, no crop
        preprocess = open_clip.image_transform(
            size,
            is_train=False,
            mean=model.visual.image_mean,
            std=model.visual.image_std,
            resize_mode=resize_mode,
            interpolation="bicubic",
        )
    if checkpoint:
        load_weights(model, checkpoint, context_length=length, context_resize=context_resize)
        log.info("backbone.pretrained=%s: weights loaded into %s", checkpoint, model_name)
    elif length != native_length:
        set_context_length(model, length, mode=context_resize)
    return Encoder(
        model=model,
        preprocess=preprocess,
        tokenizer=open_clip_tokenizer(model_name, length, tokenizer),
        context_length=length,
        image_size=size,
        resolved={**resolved, "quick_gelu": quick},
    )


def _check_resizable(model: nn.Module, model_name: str, size: tuple[int, int]) -> None:
    """Refuse another input size than the model's own for towers without a grid to resize."""
    from open_clip.transformer import VisionTransformer

    if not isinstance(model.visual, VisionTransformer):
        raise ConfigError(
            f"backbone.image_size / img: {model_name} (a {type(model.visual).__name__} image tower) takes "
            f"only its own image size, not {size[0]}x{size[1]}; street-view panoramas (img=stv) and other "
            f"sizes are supported by the CLIP and Long-CLIP backbones (open_clip ViT towers)"
        )


def open_clip_tokenizer(model_name: str, context_length: int, folder: str | None = None) -> Callable:
    """open_clip's tokenizer of ``model_name``; for models with a Hugging Face tokenizer (SigLIP),
    ``folder`` is a local copy of it (``tokenizer.json``, or ``spiece.model`` with its
    ``tokenizer_config.json``) used instead of the model hub's."""
    text_cfg = (open_clip.get_model_config(model_name) or {}).get("text_cfg", {})
    hub_name = text_cfg.get("hf_tokenizer_name")
    if folder is None:
        try:
            return open_clip.get_tokenizer(model_name, context_length=context_length)
        except (OSError, ValueError) as error:
            raise ConfigError(
                f"backbone.tokenizer: the tokenizer of {model_name} ({hub_name}) could not be loaded "
                f"({str(error).splitlines()[0]}); without the model hub, set backbone.tokenizer to a folder "
                f"holding a copy of it"
            ) from None
    if not hub_name:
        raise ConfigError(
            f"backbone.tokenizer={folder!r}: {model_name} uses open_clip's own CLIP tokenizer; leave "
            f"backbone.tokenizer null"
        )
    if not Path(folder).is_dir():
        raise ConfigError(f"backbone.tokenizer={folder!r}: no such folder (expected a copy of {hub_name})")
    from open_clip.tokenizer import HFTokenizer

    try:
        tokenizer = HFTokenizer(folder, context_length=context_length, **text_cfg.get("tokenizer_kwargs", {}))
    except (OSError, ValueError) as error:
        raise ConfigError(f"backbone.tokenizer={folder!r} holds no tokenizer transformers can load ({error})") from None
    vocabulary = len(tokenizer.tokenizer)
    if vocabulary > text_cfg.get("vocab_size", vocabulary):
        raise ConfigError(
            f"backbone.tokenizer={folder!r} has {vocabulary} tokens; {model_name} embeds {text_cfg['vocab_size']}"
        )
    return tokenizer


def model_context_length(model: nn.Module) -> int:
    """Number of text tokens the model accepts (open_clip keeps it on the model)."""
    return int(model.context_length)
