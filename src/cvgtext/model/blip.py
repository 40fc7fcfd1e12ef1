"""BLIP's image-text retrieval model (``transformers``) as a dual encoder, with its matching head.

BLIP retrieves with image-text contrastive (ITC) embeddings: the ViT's class token and the text
encoder's ``[CLS]`` token, each through its projection and L2-normalised, the same forward as
``BlipForImageTextRetrieval(..., use_itm_head=False)``. Its image-text matching (ITM) head reads
the text encoder run with cross-attention to the image's patch tokens and says whether the two
match: too slow to rank a city, it re-ranks each description's top candidates
(``reranker=blip_itm``, :mod:`cvgtext.rerank.itm`).

Training uses the symmetric InfoNCE loss of every backbone (``model.loss``) on the ITC
embeddings, with a learnt temperature held here: ``transformers``'s retrieval model has no
temperature and no training loss of its own (BLIP's original code computes ITC and ITM losses
in its forward; stock ``transformers`` does not). ``model.loss.itm_weight`` adds BLIP's ITM
loss on hard negatives of the batch (:meth:`BlipDualEncoder.matching_loss`; with
``model.loss.negatives=global`` and several devices, of the global batch, as BLIP draws them),
which the matching head needs to be of use when the weights did not bring it trained.

Architectures (``backbone.model_name``): ``blip-base`` (ViT-B/16, the published BLIP
baseline) and ``blip-large`` (ViT-L/16), both at 384 px and BERT-base text;
``backbone.config`` overrides any field of ``BlipConfig`` (the tests build tiny ones).
``backbone.pretrained``: a model-hub name (``Salesforce/blip-itm-base-coco``) or a folder
saved by ``save_pretrained``; null builds random weights.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import transforms

from cvgtext.model.family import Encoder
from cvgtext.model.loss import MatchingPool
from cvgtext.utils.errors import ConfigError

log = logging.getLogger(__name__)

# BlipConfig fields of each architecture that differ from transformers' defaults (BERT-base
# text has 12 heads where BlipTextConfig's default has 8).
_BERT_BASE = {"text_config": {"num_attention_heads": 12}}
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "blip-base": _BERT_BASE,
    "blip-large": {
        **_BERT_BASE,
        "vision_config": {
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
        },
    },
}
# BLIP normalises images with OpenAI CLIP's statistics, after a bicubic resize without crop.
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
INIT_LOGIT_SCALE = math.log(1 / 0.07)  # BLIP's initial temperature, 0.07


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ConfigError(
            "backbone.family=blip needs the transformers package: pip install 'cvgtext[baselines]'"
        ) from None
    return transformers


class BlipDualEncoder(nn.Module):
    """``BlipForImageTextRetrieval`` with the dual-encoder surface of every backbone family.

    ``tokens`` are the tokenizer's ids padded with ``pad_token_id``, which masks them.
    """

    def __init__(self, blip: nn.Module, pad_token_id: int, context_length: int):
        super().__init__()
        self.blip = blip
        self.pad_token_id = int(pad_token_id)
        self.context_length = int(context_length)
        self.logit_scale = nn.Parameter(torch.tensor(INIT_LOGIT_SCALE))

    def image_tokens(self, image: torch.Tensor) -> torch.Tensor:
        """The ViT's output tokens ``[B, 1 + patches, width]``, class token first."""
        return self.blip.vision_model(pixel_values=image).last_hidden_state

    def image_features(self, image_tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """The ITC embedding of :meth:`image_tokens`' output (so that the matching loss reuses them)."""
        features = self.blip.vision_proj(image_tokens[:, 0])
        return F.normalize(features, dim=-1) if normalize else features

    def _text_tokens(self, text: torch.Tensor, image_tokens: torch.Tensor | None = None) -> torch.Tensor:
        cross = {}
        if image_tokens is not None:
            cross = {
                "encoder_hidden_states": image_tokens,
                "encoder_attention_mask": torch.ones(
                    image_tokens.shape[:-1], dtype=torch.long, device=image_tokens.device
                ),
            }
        mask = (text != self.pad_token_id).long()
        return self.blip.text_encoder(input_ids=text, attention_mask=mask, **cross).last_hidden_state

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.image_features(self.image_tokens(image), normalize)

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.blip.text_proj(self._text_tokens(text)[:, 0])
        return F.normalize(features, dim=-1) if normalize else features

    def match_logits(self, image: torch.Tensor | None, text: torch.Tensor, image_tokens: torch.Tensor | None = None):
        """The ITM head's ``[no match, match]`` logits of each (image, text) row, ``[B, 2]``."""
        if image_tokens is None:
            image_tokens = self.image_tokens(image)
        return self.blip.itm_head(self._text_tokens(text, image_tokens)[:, 0])

    def match(self, image: torch.Tensor | None, text: torch.Tensor, image_tokens: torch.Tensor | None = None):
        """The probability that each image matches its text, ``[B]``; ``image_tokens`` (of
        :meth:`image_tokens`) stand for the images where they were computed already."""
        return self.match_logits(image, text, image_tokens).float().softmax(dim=-1)[:, 1]

    def matching_loss(self, pool: MatchingPool) -> torch.Tensor:
        """BLIP's ITM loss on this rank's pairs of ``pool`` (:func:`cvgtext.model.loss.matching_pool`):
        each pair, each image with a hard negative caption and each caption with a hard negative
        image, drawn from the whole pool in proportion to the softmax of their ITC similarity.
        Pairs of the same tile are never drawn; a pair with nothing else to draw has no negatives.
        The pool's image tokens are those the contrastive loss's image pass computed."""
        local = pool.local
        if pool.batch == 0:  # still a function of the gathered tokens: this rank joins the backward collective
            return pool.image_tokens.sum() * 0.0
        with torch.no_grad():
            scale = self.logit_scale.exp()
            same = pool.tiles[local, None] == pool.tiles[None, :]  # [batch, N]
            rows = (~same).any(dim=1)
            negative_text = _draw(scale * pool.image_features[local].float() @ pool.text_features.float().T, same)
            negative_image = _draw(scale * pool.text_features[local].float() @ pool.image_features.float().T, same)
        text, image_tokens = pool.text[local], pool.image_tokens[local]
        logits = self.match_logits(
            None,
            torch.cat([text, pool.text[negative_text][rows], text[rows]]),
            torch.cat([image_tokens, image_tokens[rows], pool.image_tokens[negative_image][rows]]),
        )
        labels = torch.zeros(len(logits), dtype=torch.long, device=logits.device)
        labels[: pool.batch] = 1
        return F.cross_entropy(logits.float(), labels)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if enable:
            self.blip.gradient_checkpointing_enable()
        else:
            self.blip.gradient_checkpointing_disable()


def _draw(similarity: torch.Tensor, excluded: torch.Tensor) -> torch.Tensor:
    """One column per row, drawn in proportion to the softmax of ``similarity`` off ``excluded``."""
    weights = similarity.softmax(dim=1).masked_fill(excluded, 0) + 1e-8 * (~excluded)
    weights[weights.sum(dim=1) == 0] = 1  # rows without a column to draw (left out by the caller)
    return torch.multinomial(weights, 1).squeeze(1)


class BlipTokenizer:
    """Captions -> ``[B, context_length]`` token ids, as BLIP's processor tokenizes them."""

    def __init__(self, tokenizer: Any, context_length: int):
        self.tokenizer = tokenizer
        self.context_length = context_length

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        return self.tokenizer(
            texts,
            padding="max_length",
            truncation=True,
            max_length=context_length or self.context_length,
            return_tensors="pt",
        ).input_ids

    def __repr__(self) -> str:
        return f"BlipTokenizer({type(self.tokenizer).__name__}, {len(self.tokenizer)} tokens, {self.context_length})"


def blip_config(model_name: str, config: dict[str, Any] | None = None):
    """The ``BlipConfig`` of an architecture, with ``config``'s fields over it."""
    if model_name not in ARCHITECTURES:
        raise ConfigError(
            f"backbone.model_name={model_name!r} is not a BLIP architecture; choose one of {', '.join(ARCHITECTURES)}"
        )
    transformers = _transformers()
    fields = {
        key: dict(value) if isinstance(value, dict) else value for key, value in ARCHITECTURES[model_name].items()
    }
    for key, value in (config or {}).items():
        if isinstance(value, dict):
            fields[key] = {**fields.get(key, {}), **value}
        else:
            fields[key] = value
    try:
        return transformers.BlipConfig(**fields)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"backbone.config is not a BlipConfig ({error})") from None


def preprocess_for(size: tuple[int, int]) -> transforms.Compose:
    """BLIP's evaluation preprocessing: bicubic resize to ``size`` without crop, CLIP's statistics."""
    return transforms.Compose(
        [
            transforms.Lambda(_rgb),
            transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.ToTensor(),
            transforms.Normalize(IMAGE_MEAN, IMAGE_STD),
        ]
    )


def _rgb(image):
    return image.convert("RGB")


def _load_tokenizer(source: str | None, model_name: str) -> Any:
    transformers = _transformers()
    if source is None:
        raise ConfigError(
            f"backbone.tokenizer: {model_name} with random weights needs a tokenizer; set backbone.tokenizer to a "
            "model-hub name (Salesforce/blip-itm-base-coco) or a folder holding a copy of it"
        )
    try:
        return transformers.AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise ConfigError(
            f"backbone.tokenizer={source!r} could not be loaded ({str(error).splitlines()[0]}); without the model "
            "hub, set backbone.tokenizer to a folder holding a copy of it"
        ) from None


def _load_model(model_name: str, pretrained: str | None, config: dict[str, Any] | None) -> nn.Module:
    transformers = _transformers()
    if pretrained is None:
        return transformers.BlipForImageTextRetrieval(blip_config(model_name, config))
    if config:
        raise ConfigError("backbone.config applies to random weights only; pretrained weights bring their own")
    try:
        return transformers.BlipForImageTextRetrieval.from_pretrained(pretrained)
    except (OSError, ValueError) as error:
        where = "folder" if Path(pretrained).exists() else "model-hub name"
        raise ConfigError(
            f"backbone.pretrained={pretrained!r} ({where}) could not be loaded as BLIP's retrieval model "
            f"({str(error).splitlines()[0]}); without the model hub, give a folder saved by save_pretrained"
        ) from None


def build_blip_encoder(
    model_name: str = "blip-base",
    pretrained: str | None = None,
    context_length: int | None = 77,
    image_size: int | list[int] | None = None,
    image_aspect: float = 1,
    tokenizer: str | None = None,
    config: dict[str, Any] | None = None,
    quick_gelu: bool | None = None,
    context_resize: str | None = None,
    name: str | None = None,
):
    """The BLIP :class:`~cvgtext.model.encoder.Encoder`.

    ``tokenizer``: a model-hub name or folder (null: ``pretrained``'s). ``image_size``: null
    or the model's own (square tiles only: street-view panoramas are refused).
    ``quick_gelu`` and ``context_resize`` are CLIP settings, refused when set otherwise.
    """
    if quick_gelu:
        raise ConfigError("backbone.quick_gelu=true is a CLIP setting; BLIP uses GELU (set it to null)")
    model = _load_model(model_name, pretrained, config)
    native = int(model.config.vision_config.image_size)
    height = image_size if isinstance(image_size, int) or image_size is None else None
    if image_aspect != 1 or height not in (None, native):
        raise ConfigError(
            f"backbone.image_size / img: BLIP takes square {native}x{native} images only (img=sat or img=osm); "
            "street-view panoramas (img=stv) and other sizes are supported by the CLIP and Long-CLIP backbones"
        )
    length = int(context_length or 35)
    limit = int(model.config.text_config.max_position_embeddings)
    if length > limit:
        raise ConfigError(f"backbone.context_length={length}: BLIP's text encoder reads at most {limit} tokens")
    source = tokenizer or pretrained
    hf_tokenizer = _load_tokenizer(source, model_name)
    vocabulary = int(model.config.text_config.vocab_size)
    if len(hf_tokenizer) > vocabulary:
        raise ConfigError(
            f"backbone.tokenizer={source!r} has {len(hf_tokenizer)} tokens; the model embeds {vocabulary}"
        )
    return Encoder(
        model=BlipDualEncoder(model, hf_tokenizer.pad_token_id, length),
        preprocess=preprocess_for((native, native)),
        tokenizer=BlipTokenizer(hf_tokenizer, length),
        context_length=length,
        image_size=(native, native),
        resolved={"config": _config_fields(model.config), "tokenizer": source, "quick_gelu": None},
        image_tower=("blip.vision_model.", "blip.vision_proj."),
    )


def _config_fields(config: Any) -> dict[str, Any]:
    """The fields of a BlipConfig that rebuild it (checkpoints record them)."""
    fields = config.to_diff_dict()
    keep = ("vision_config", "text_config", "projection_dim", "image_text_hidden_size")
    out = {key: fields[key] for key in keep if key in fields}
    for tower in ("vision_config", "text_config"):
        if tower in out:
            out[tower] = {k: v for k, v in out[tower].items() if k not in ("transformers_version", "model_type")}
    return out
