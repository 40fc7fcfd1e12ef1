"""Text encoding that reads only the positions a batch uses, where that changes nothing.

CLIP's text tower is causal: position ``i`` attends to positions ``0..i`` only, and the caption's
feature is read at its end-of-text token. The positions after the last end-of-text token of a
batch therefore change no feature, and a batch needs only as many positions as its longest
caption: a 25-token description through a 77-position (or EPE's 300-position) tower does a third
(or a twelfth) of the work. :func:`encode_text` runs the tower on that prefix: the same
operations as open_clip's ``encode_text`` on fewer positions, with the positional embedding and
the causal mask cut to them, so the features agree with the full context up to the rounding
of the smaller matrix products.

It applies to towers where this is exact (:func:`trims_exactly`): open_clip's ``CLIP`` (text
tower on the model: CLIP, Long-CLIP, the tiny models) and ``TextTransformer`` towers with a
causal mask, no class token and pooling at the end-of-text token. Bidirectional towers (SigLIP,
pooled at the last position; BLIP's BERT) and compiled encoders (which want one shape) are
encoded at the full context by the model's own ``encode_text``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from open_clip.model import CLIP, CustomTextCLIP
from open_clip.transformer import TextTransformer, text_global_pool
from torch import nn

EXACT_POOLING = ("argmax", "eos")  # pooled at the end-of-text token: later positions play no part


@dataclass
class CausalTower:
    """The parts of a causal text tower that :func:`encode_text` runs."""

    token_embedding: nn.Embedding
    positional_embedding: torch.Tensor  # [context, width]
    transformer: nn.Module
    attn_mask: torch.Tensor  # [context, context] additive causal mask
    ln_final: nn.Module
    text_projection: Any
    pool_type: str
    eos_id: int | None


def causal_tower(model: nn.Module) -> CausalTower | None:
    """The causal text tower of ``model`` when cutting its context is exact, else None."""
    if "encode_text" in vars(model):  # replaced on the instance (torch.compile): keep its one shape
        return None
    if isinstance(model, CLIP):
        tower, pool_type, eos_id = model, model.text_pool_type, getattr(model, "text_eos_id", None)
    elif isinstance(model, CustomTextCLIP) and isinstance(model.text, TextTransformer):
        tower, pool_type, eos_id = model.text, model.text.pool_type, model.text.eos_id
        if tower.cls_emb is not None or getattr(tower, "output_tokens", False):
            return None
    else:
        return None
    mask = getattr(tower, "attn_mask", None)
    if mask is None or pool_type not in EXACT_POOLING or not _is_causal(mask):
        return None
    return CausalTower(
        tower.token_embedding,
        tower.positional_embedding,
        tower.transformer,
        mask,
        tower.ln_final,
        tower.text_projection,
        pool_type,
        eos_id,
    )


def trims_exactly(model: nn.Module) -> bool:
    """Whether :func:`encode_text` reads only the positions a batch uses for this model."""
    return causal_tower(model) is not None


def _is_causal(mask: torch.Tensor) -> bool:
    """An additive mask that hides every later position and no earlier one."""
    if mask.ndim != 2 or mask.shape[0] != mask.shape[1]:
        return False
    later = torch.ones_like(mask, dtype=torch.bool).triu(1)
    return bool(torch.isneginf(mask[later]).all()) and bool((mask[~later] == 0).all())


def used_positions(tokens: torch.Tensor, pool_type: str, eos_id: int | None = None) -> int:
    """Positions up to the batch's last pooled (end-of-text) token: all that its features read."""
    if pool_type == "argmax":  # open_clip pools at the first occurrence of the largest id
        pooled = tokens.argmax(dim=-1)
    else:
        pooled = (tokens == eos_id).int().argmax(dim=-1)
    return int(pooled.max()) + 1 if tokens.numel() else tokens.shape[-1]


def encode_text(model: nn.Module, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """``model.encode_text(tokens, normalize)``, on the positions the batch uses where exact."""
    tower = causal_tower(model)
    if tower is None or tokens.ndim != 2 or tokens.shape[1] != tower.positional_embedding.shape[0]:
        return model.encode_text(tokens, normalize=normalize)
    length = used_positions(tokens, tower.pool_type, tower.eos_id)
    if length >= tokens.shape[1]:
        return model.encode_text(tokens, normalize=normalize)
    tokens = tokens[:, :length]
    cast_dtype = tower.transformer.get_cast_dtype()
    x = tower.token_embedding(tokens).to(cast_dtype)  # [batch, length, width]
    x = x + tower.positional_embedding[:length].to(cast_dtype)
    x = tower.transformer(x, attn_mask=tower.attn_mask[:length, :length])
    x = tower.ln_final(x)
    x = text_global_pool(x, tokens, tower.pool_type, eos_token_id=tower.eos_id)
    if tower.text_projection is not None:
        x = tower.text_projection(x) if isinstance(tower.text_projection, nn.Linear) else x @ tower.text_projection
    return F.normalize(x, dim=-1) if normalize else x
