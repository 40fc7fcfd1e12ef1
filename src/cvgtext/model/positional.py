"""Resizing positional embeddings: longer captions (text tower) and 2:1 panoramas (image tower).

CLIP's text tower has 77 learnt positions; CVG-Text captions are longer. CrossText2Loc's
expanded positional embedding (EPE) stretches the 77 rows to 300 by linear interpolation and
rebuilds the causal attention mask, so longer token sequences fit while the pooled feature is
still read at the end-of-text token. Long-CLIP's variant keeps the first 20 rows, which CLIP
learnt well, and stretches only the rest.

Street-view panoramas are twice as wide as high, so the image tower's patch grid is resized to a
non-square one (e.g. 24 x 48 patches for ViT-L/14 at 336 x 672).

The functions work on open_clip's ``CLIP`` (text tower stored on the model itself) and
``CustomTextCLIP`` (text tower in ``model.text``) and change the model in place: call them before
the optimizer is built, because the resized embeddings are new ``nn.Parameter`` objects.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Literal

import torch
import torch.nn.functional as F
from open_clip.model import CLIP, CustomTextCLIP, resize_text_pos_embed
from open_clip.transformer import TextTransformer, VisionTransformer
from torch import nn

ResizeMode = Literal["interpolate", "keep_first"]
RESIZE_MODES = ("interpolate", "keep_first")


def resize_text_positional_embedding(
    pos: torch.Tensor,
    new_length: int,
    mode: ResizeMode = "interpolate",
    keep: int = 20,
) -> torch.Tensor:
    """Resize a text positional embedding ``[L, W]`` to ``[new_length, W]``.

    ``interpolate`` (CrossText2Loc's EPE) resamples the whole sequence with 1-D linear
    interpolation, ``F.interpolate(mode="linear", align_corners=False)``, through open_clip's
    ``resize_text_pos_embed``.

    ``keep_first`` (Long-CLIP) copies the first ``keep`` rows unchanged and stretches the other
    ``L - keep`` rows over ``new_length - keep`` positions: new row ``j`` of the tail samples old
    tail position ``j * (L - keep) / (new_length - keep)``, interpolating linearly between
    neighbours and extrapolating from the last two rows past the end. For 77 -> 248 with
    ``keep=20`` this reproduces Long-CLIP's 4x stretch exactly.

    Resizing to the same length returns an exact copy in both modes.
    """
    if pos.ndim != 2:
        raise ValueError(f"expected a positional embedding of shape [L, W], got {tuple(pos.shape)}")
    if new_length < 1:
        raise ValueError(f"new_length must be positive, got {new_length}")
    # Interpolate in at least float32: half-precision rounding of the weights would shift rows.
    compute_dtype = torch.promote_types(pos.dtype, torch.float32)
    rows = pos.detach().to(compute_dtype)
    if mode == "interpolate":
        # open_clip's own resizing of a state dict's text positions computes exactly this.
        state = {"positional_embedding": rows}
        target = SimpleNamespace(positional_embedding=rows.new_empty(new_length, rows.shape[1]))
        resize_text_pos_embed(state, target)
        resized = state["positional_embedding"]
    elif mode == "keep_first":
        length = rows.shape[0]
        if keep < 0 or length - keep < 2 or new_length <= keep:
            raise ValueError(
                f"keep_first needs 0 <= keep, at least two rows after the kept ones and "
                f"new_length > keep; got keep={keep}, {length} rows, new_length={new_length}"
            )
        resized = torch.cat([rows[:keep], _stretch(rows[keep:], new_length - keep)])
    else:
        raise ValueError(f"unknown resize mode {mode!r}; choose one of {RESIZE_MODES}")
    return resized.to(pos.dtype).contiguous()


def _stretch(rows: torch.Tensor, length: int) -> torch.Tensor:
    """Resample ``rows`` [n, W] to [length, W], row j sampling position j * n / length."""
    n = rows.shape[0]
    positions = torch.arange(length, dtype=torch.float64) * (n / length)
    # Past position n - 1 the left neighbour stays n - 2, so the weight exceeds 1: extrapolation.
    left = positions.floor().long().clamp(max=n - 2)
    weight = (positions - left).to(rows.dtype).unsqueeze(1)  # [length, 1]
    return rows[left] * (1 - weight) + rows[left + 1] * weight


def causal_mask(length: int, like: torch.Tensor | None = None) -> torch.Tensor:
    """Additive causal attention mask ``[length, length]``: 0 on and below the diagonal, -inf above.

    Built as open_clip's ``TextTransformer.build_causal_mask``; ``like`` gives dtype and device.
    """
    mask = torch.full((length, length), float("-inf")).triu_(1)
    if like is not None:
        mask = mask.to(dtype=like.dtype, device=like.device)
    return mask


def set_context_length(
    model: nn.Module,
    new_length: int,
    mode: ResizeMode = "interpolate",
    keep: int = 20,
) -> nn.Module:
    """Make ``model.encode_text`` accept ``[B, new_length]`` token ids; returns ``model``.

    The text positional embedding is resized (see ``resize_text_positional_embedding``) into a
    new ``nn.Parameter``, the causal attention mask is rebuilt for the new length and
    ``context_length`` is updated. Pooling is unchanged: the end-of-text token (the largest id
    from the OpenAI tokenizer) is found anywhere in the longer sequence. Tokenize with the same
    ``context_length``.
    """
    if isinstance(model, CLIP):
        owner = model
        extra_rows = 0
    elif isinstance(model, CustomTextCLIP) and isinstance(model.text, TextTransformer):
        owner = model.text
        # CoCa-style towers append a class token whose positional row sits after the sequence.
        extra_rows = 0 if owner.cls_emb is None else 1
    else:
        text = getattr(model, "text", None)
        tower = f" with a {type(text).__name__} text tower" if text is not None else ""
        raise ValueError(
            f"cannot change the context length of {type(model).__name__}{tower}: supported are "
            "open_clip CLIP and CustomTextCLIP models with a TextTransformer text tower"
        )

    old = owner.positional_embedding
    context_rows = old.shape[0] - extra_rows
    with torch.no_grad():
        resized = resize_text_positional_embedding(old[:context_rows], new_length, mode, keep)
        new = torch.cat([resized, old[context_rows:].detach()])
    owner.positional_embedding = nn.Parameter(new, requires_grad=old.requires_grad)

    # A bidirectional tower (no_causal_mask) keeps attn_mask = None.
    if owner.attn_mask is not None:
        owner.attn_mask = causal_mask(new_length + extra_rows, like=owner.attn_mask)
    if owner is not model:
        owner.num_pos = new_length + extra_rows
        owner.context_length = new_length
    model.context_length = new_length
    return model


def resize_state_dict_context_length(
    state_dict: Mapping[str, torch.Tensor],
    new_length: int,
    mode: ResizeMode = "interpolate",
    keep: int = 20,
    prefix: str = "",
) -> dict[str, torch.Tensor]:
    """Return a copy of an open_clip state dict whose text positions fit ``new_length``.

    Use it to load a checkpoint saved at another context length, e.g. an official
    CrossText2Loc checkpoint (300 positions) into a model at 77, or a 77-position checkpoint into
    a model already set to 300. The text positional embedding (``positional_embedding`` for
    ``CLIP``, ``text.positional_embedding`` for ``CustomTextCLIP``) is resized and a saved
    ``attn_mask`` is rebuilt as a causal mask; other entries are shared with the input.
    ``prefix`` is prepended to these keys for state dicts saved from a wrapper (``"module."``,
    ``"model."``).
    """
    resized = dict(state_dict)
    for tower in ("", "text."):
        key = f"{prefix}{tower}positional_embedding"
        if key not in resized:
            continue
        pos = resized[key]
        extra_rows = 1 if f"{prefix}{tower}cls_emb" in resized else 0
        context_rows = pos.shape[0] - extra_rows
        resized[key] = torch.cat(
            [
                resize_text_positional_embedding(pos[:context_rows], new_length, mode, keep),
                pos[context_rows:],
            ]
        )
        mask_key = f"{prefix}{tower}attn_mask"
        if mask_key in resized:
            resized[mask_key] = causal_mask(new_length + extra_rows, like=resized[mask_key])
        return resized
    raise ValueError(
        f"no text positional embedding in the state dict (looked for {prefix}positional_embedding "
        f"and {prefix}text.positional_embedding); pass prefix= if the keys carry one"
    )


def set_image_size(model: nn.Module, image_size: int | tuple[int, int]) -> nn.Module:
    """Make ``model.encode_image`` accept ``[B, 3, height, width]`` images; returns ``model``.

    For 2:1 street-view panoramas, e.g. ``(336, 672)``. The vision transformer's positional
    embedding keeps its class-token row and resizes the patch grid to ``(height // patch,
    width // patch)`` (see :func:`resize_vision_positional_embedding`). ``image_size``,
    ``grid_size`` and, if present, ``preprocess_cfg["size"]`` of
    ``model.visual`` are updated. Only open_clip ``VisionTransformer`` towers have a grid to
    resize; others raise ``ValueError``.
    """
    visual = getattr(model, "visual", None)
    if not isinstance(visual, VisionTransformer):
        raise ValueError(
            f"cannot change the image size of {type(model).__name__} with a "
            f"{type(visual).__name__} image tower: only open_clip VisionTransformer towers "
            "have a positional-embedding grid to resize"
        )
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    patch_height, patch_width = visual.patch_size
    if height % patch_height or width % patch_width:
        raise ValueError(
            f"image size {height}x{width} is not a multiple of the patch size {patch_height}x{patch_width}"
        )
    grid = (height // patch_height, width // patch_width)
    old_grid = tuple(visual.grid_size)

    old = visual.positional_embedding  # [prefix tokens + grid h * grid w, width]
    if grid != old_grid:
        new = resize_vision_positional_embedding(old.detach(), old_grid, grid)
        visual.positional_embedding = nn.Parameter(new, requires_grad=old.requires_grad)

    visual.image_size = (height, width)
    visual.grid_size = grid
    preprocess_cfg = getattr(visual, "preprocess_cfg", None)
    if isinstance(preprocess_cfg, dict) and "size" in preprocess_cfg:
        preprocess_cfg["size"] = (height, width)
    return model


def resize_vision_positional_embedding(
    pos: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]
) -> torch.Tensor:
    """Resize a vision positional embedding ``[prefix + gh * gw, W]`` to another patch grid.

    The prefix rows (the class token) are kept apart and unchanged; the patch rows, laid out
    row-major as the patch embedding flattens its output, are resampled as an image with
    ``F.interpolate(mode="bicubic", align_corners=False, antialias=False)``, as the official
    CrossText2Loc code does for its 2:1 street views. open_clip's ``resize_pos_embed``
    antialiases, whose bicubic kernel differs even when enlarging, so it is not used here.
    """
    patches_before = old_grid[0] * old_grid[1]
    prefix_tokens = pos.shape[0] - patches_before
    if prefix_tokens < 0:
        raise ValueError(f"a positional embedding of {pos.shape[0]} rows has no {old_grid[0]}x{old_grid[1]} grid")
    if tuple(new_grid) == tuple(old_grid):
        return pos.clone()
    compute_dtype = torch.promote_types(pos.dtype, torch.float32)
    patches = pos[prefix_tokens:].to(compute_dtype)
    patches = patches.reshape(1, *old_grid, -1).permute(0, 3, 1, 2)  # [1, W, gh, gw]
    patches = F.interpolate(patches, size=tuple(new_grid), mode="bicubic", align_corners=False, antialias=False)
    patches = patches.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], -1).to(pos.dtype)
    return torch.cat([pos[:prefix_tokens], patches])


def vision_grid(rows: int, prefix_tokens: int = 1) -> tuple[int, int]:
    """The patch grid of a vision positional embedding of ``rows`` rows: square or 2:1.

    A weight file does not record its grid; CLIP checkpoints are square and street-view
    checkpoints twice as wide as high, so those are the two shapes recognised.
    """
    patches = rows - prefix_tokens
    side = math.isqrt(max(patches, 0))
    if side > 0 and side * side == patches:
        return side, side
    half = math.isqrt(max(patches // 2, 0))
    if half > 0 and 2 * half * half == patches:
        return half, 2 * half
    raise ValueError(f"{rows} vision positions are neither a square nor a 2:1 patch grid plus a class token")
