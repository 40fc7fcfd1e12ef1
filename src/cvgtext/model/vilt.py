"""ViLT's image-and-text retrieval model (``transformers``) as a pair scorer: the official code's
last baseline (its ``train_vilt.py`` and ``evaluate_vilt``).

ViLT is single-stream: a description and a tile go through one transformer together, and its
ranking head gives the pair one logit (``ViltForImageAndTextRetrieval``). There are no separate
embeddings to compare, so a gallery is ranked by scoring every (description, tile) pair it needs,
a forward pass of the whole model each (:mod:`cvgtext.retrieval.pairs`). The official evaluation
scores each description against the 100 tiles nearest its true place, with the text cut at ViLT's
40 token positions, and ranks them by that logit: 100 passes per description where a dual
encoder needs one text pass (the tiles' passes are shared by every description).

Images go through transformers' own ``ViltImageProcessor`` (the shorter side to 384 px, at most
640 on the longer, both multiples of 32; street-view panoramas keep their aspect), texts through
the model's BERT tokenizer. ``backbone.pretrained``: a model-hub name
(``dandelin/vilt-b32-finetuned-coco``, the official baseline) or a folder saved by
``save_pretrained``; null builds random weights of ``backbone.config`` (the tests' small ViLTs).

ViLT is evaluated, not trained: transformers' retrieval head has no training loss (its forward
refuses labels), and the official ``train_vilt.py`` asks it for a loss it does not return.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from cvgtext.model.blip import BlipTokenizer
from cvgtext.model.family import Encoder
from cvgtext.utils.errors import ConfigError

MODEL_NAMES = ("vilt-b32",)


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ConfigError(
            "backbone.family=vilt needs the transformers package: pip install 'cvgtext[baselines]'"
        ) from None
    return transformers


class ViltScorer(nn.Module):
    """``ViltForImageAndTextRetrieval`` scoring (description, tile) pairs, one logit each.

    ``tokens`` are the tokenizer's ids padded with ``pad_token_id``, which masks them; the
    images' ``pixel_mask`` marks their pixels where a batch pads them to a common size.
    """

    scores_pairs = True  # ranked pair by pair, not by comparing embeddings

    def __init__(self, vilt: nn.Module, pad_token_id: int, context_length: int):
        super().__init__()
        self.vilt = vilt
        self.pad_token_id = int(pad_token_id)
        self.context_length = int(context_length)

    def score(self, images: torch.Tensor, tokens: torch.Tensor, pixel_mask: torch.Tensor | None = None):
        """``[B]``: the ranking head's logit of each (image, text) row."""
        if pixel_mask is None:
            pixel_mask = torch.ones(images.shape[0], *images.shape[2:], dtype=torch.long, device=images.device)
        output = self.vilt(
            input_ids=tokens,
            attention_mask=(tokens != self.pad_token_id).long(),
            token_type_ids=torch.zeros_like(tokens),
            pixel_values=images,
            pixel_mask=pixel_mask,
        )
        return output.logits[:, 0]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if enable:
            self.vilt.gradient_checkpointing_enable()
        else:
            self.vilt.gradient_checkpointing_disable()


class ViltPreprocess:
    """An image -> ``[3, H, W]`` pixel values, as ``ViltImageProcessor`` gives them for that image alone."""

    def __init__(self, processor: Any):
        self.processor = processor

    def __call__(self, image) -> torch.Tensor:
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]

    def __repr__(self) -> str:
        return f"ViltPreprocess({self.processor!r})"


def pad_images(images: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, 3, H, W]`` pixel values and the ``[B, H, W]`` mask of their pixels: images of other
    sizes padded with zeros at the bottom and right, as ViLT's image processor pads a batch."""
    height, width = max(i.shape[1] for i in images), max(i.shape[2] for i in images)
    pixels = images[0].new_zeros(len(images), 3, height, width)
    mask = torch.zeros(len(images), height, width, dtype=torch.long)
    for row, image in enumerate(images):
        pixels[row, :, : image.shape[1], : image.shape[2]] = image
        mask[row, : image.shape[1], : image.shape[2]] = 1
    return pixels, mask


def _load(source: str, what: str, loader: Any) -> Any:
    try:
        return loader.from_pretrained(source)
    except (OSError, ValueError) as error:
        where = "folder" if Path(source).exists() else "model-hub name"
        raise ConfigError(
            f"{what}={source!r} ({where}) could not be loaded ({str(error).splitlines()[0]}); without the model "
            "hub, give a folder saved by save_pretrained"
        ) from None


def vilt_config(config: dict[str, Any] | None = None):
    """``ViltConfig`` with ``config``'s fields over transformers' defaults (ViLT-B/32)."""
    try:
        return _transformers().ViltConfig(**(config or {}))
    except (TypeError, ValueError) as error:
        raise ConfigError(f"backbone.config is not a ViltConfig ({error})") from None


def build_vilt_encoder(
    model_name: str = "vilt-b32",
    pretrained: str | None = None,
    context_length: int | None = 40,
    tokenizer: str | None = None,
    config: dict[str, Any] | None = None,
    image_size: int | list[int] | None = None,
    image_aspect: float = 1,
    quick_gelu: bool | None = None,
    context_resize: str | None = None,
    name: str | None = None,
    whole_gallery: bool = False,
) -> Encoder:
    """The ViLT :class:`~cvgtext.model.family.Encoder`, whose model is a :class:`ViltScorer`.

    ``tokenizer`` and the image processor come from ``tokenizer`` or ``pretrained`` (null: the
    processor's defaults, ViLT-B/32's). ``image_size`` sets the processor's shorter side (null:
    its own, 384). ``whole_gallery`` is read by the evaluation (:mod:`cvgtext.retrieval.pairs`).
    ``quick_gelu`` and ``context_resize`` are CLIP settings, refused when set otherwise.
    """
    transformers = _transformers()
    if model_name not in MODEL_NAMES:
        raise ConfigError(f"backbone.model_name={model_name!r} is not a ViLT architecture; choose {MODEL_NAMES[0]}")
    if quick_gelu or context_resize not in (None, "interpolate"):
        raise ConfigError("backbone.quick_gelu and backbone.context_resize are CLIP settings; ViLT uses neither")
    if pretrained is None:
        model = transformers.ViltForImageAndTextRetrieval(vilt_config(config))
    elif config:
        raise ConfigError("backbone.config applies to random weights only; pretrained weights bring their own")
    else:
        model = _load(pretrained, "backbone.pretrained", transformers.ViltForImageAndTextRetrieval)
    limit = int(model.config.max_position_embeddings)
    length = int(context_length or limit)
    if length > limit:
        raise ConfigError(f"backbone.context_length={length}: ViLT's text embeddings have {limit} positions")
    source = tokenizer or pretrained
    if source is None:
        raise ConfigError(
            "backbone.tokenizer: ViLT with random weights needs a tokenizer; set backbone.tokenizer to a model-hub "
            "name (dandelin/vilt-b32-finetuned-coco) or a folder holding a copy of it"
        )
    hf_tokenizer = _load(source, "backbone.tokenizer", transformers.AutoTokenizer)
    if len(hf_tokenizer) > int(model.config.vocab_size):
        raise ConfigError(
            f"backbone.tokenizer={source!r} has {len(hf_tokenizer)} tokens; the model embeds {model.config.vocab_size}"
        )
    processor = _image_processor(transformers, source, image_size)
    return Encoder(
        model=ViltScorer(model, hf_tokenizer.pad_token_id, length),
        preprocess=ViltPreprocess(processor),
        tokenizer=BlipTokenizer(hf_tokenizer, length),
        context_length=length,
        image_size=None,  # the processor keeps each image's aspect
        resolved={"config": _config_fields(model.config), "tokenizer": source, "quick_gelu": None},
        image_tower=("vilt.embeddings.patch_embeddings.",),
    )


def _image_processor(transformers: Any, source: str, image_size: int | list[int] | None) -> Any:
    """The image processor saved with the model (a folder or hub name), else ViLT's defaults."""
    try:
        processor = transformers.ViltImageProcessor.from_pretrained(source)
    except (OSError, ValueError):
        processor = transformers.ViltImageProcessor()
    if image_size is not None:
        if not isinstance(image_size, int):
            raise ConfigError(f"backbone.image_size={list(image_size)}: ViLT takes the shorter side only (an int)")
        processor.size = {"shortest_edge": int(image_size)}
    return processor


def _config_fields(config: Any) -> dict[str, Any]:
    """The fields of a ViltConfig that rebuild it (checkpoints record them)."""
    fields = config.to_diff_dict()
    return {key: value for key, value in fields.items() if key not in ("transformers_version", "model_type")}
