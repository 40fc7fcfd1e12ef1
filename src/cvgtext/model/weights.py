"""Weights into an open_clip model: a checkpoint's state dict fitted to the model's text
context and image patch grid, then loaded, with what does not fit reported.

Reading files safely is :mod:`cvgtext.utils.checkpoints`'s job; this module changes only models and
state dicts, so imports run one way: encoder -> weights -> positional, checkpoints.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from cvgtext.model.positional import (
    resize_state_dict_context_length,
    resize_vision_positional_embedding,
    set_context_length,
    vision_grid,
)
from cvgtext.utils.checkpoints import model_state_dict, read_checkpoint
from cvgtext.utils.errors import CheckpointError

log = logging.getLogger(__name__)


def load_weights(
    model: nn.Module,
    path: str | Path,
    context_length: int | None = None,
    context_resize: str = "interpolate",
) -> None:
    """Load a checkpoint file's weights into ``model``; see :func:`load_state`."""
    load_state(model, model_state_dict(read_checkpoint(path)), context_length, context_resize, source=str(path))


def load_state(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    context_length: int | None = None,
    context_resize: str = "interpolate",
    source: str = "checkpoint",
) -> None:
    """Load weights into ``model``; an open_clip model's text context becomes ``context_length``.

    A state whose text positional embedding has another number of rows (e.g. 300 for the
    official CrossText2Loc weights) is resized with ``context_resize``; one whose image patch grid
    differs from the model's (square weights into a model set to 2:1 street views) is
    interpolated to the model's grid (:func:`~cvgtext.model.positional.set_image_size`). Keys present on one side
    only are reported; weights of another architecture (shape mismatches) are refused.
    """
    if _open_clip_text(model):
        length = context_length or int(model.context_length)
        if length != int(model.context_length):
            set_context_length(model, length, mode=context_resize)
        state = merge_long_clip_positions(state, source)
        try:
            state = resize_state_dict_context_length(state, length, mode=context_resize)
        except ValueError as error:
            raise CheckpointError(f"checkpoint {source} has no usable text positional embedding ({error})") from None
        state = fit_vision_grid(model, state, source)
    expected = model.state_dict()
    mismatched = [
        f"{key} {tuple(value.shape)} vs {tuple(expected[key].shape)}"
        for key, value in state.items()
        if key in expected and expected[key].shape != value.shape and key != "logit_scale"
    ]
    if mismatched or not set(state) & set(expected):
        detail = "; ".join(mismatched[:3]) if mismatched else "no parameter names in common"
        raise CheckpointError(
            f"checkpoint {source} does not fit the {type(model).__name__} of this backbone "
            f"(checkpoint vs model: {detail}); set backbone=... to the architecture it was trained with"
        )
    if "logit_scale" in state:
        state["logit_scale"] = state["logit_scale"].reshape(expected["logit_scale"].shape)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys:
        log.warning(
            "checkpoint %s lacks %d weights, left as initialised: %s",
            source,
            len(result.missing_keys),
            ", ".join(result.missing_keys[:10]),
        )
    if result.unexpected_keys:
        log.warning(
            "checkpoint %s has %d weights this model does not use: %s",
            source,
            len(result.unexpected_keys),
            ", ".join(result.unexpected_keys[:10]),
        )


def _open_clip_text(model: nn.Module) -> bool:
    """Whether ``model`` has an open_clip text tower (CLIP's, or CustomTextCLIP's ``text``), whose
    positions and image grid are fitted; other families' weights load as they are."""
    return getattr(model, "positional_embedding", None) is not None or hasattr(model, "text")


# Long-CLIP adds to the positions of the first LONG_CLIP_KEPT text tokens from ``positional_embedding``
# and to the others from ``positional_embedding_res`` (its two masks).
LONG_CLIP_KEPT = 20


def merge_long_clip_positions(state: dict[str, torch.Tensor], source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """A Long-CLIP state dict's two text positional embeddings as the one the model adds.

    Long-CLIP keeps ``positional_embedding`` (its first rows, frozen in training) and
    ``positional_embedding_res`` (the rest, trained) and adds the first
    :data:`LONG_CLIP_KEPT` rows of one and the remaining rows of the other; open_clip's text
    tower has one embedding, which gets exactly those rows. Other states are returned as they are.
    """
    if "positional_embedding_res" not in state:
        return state
    kept, rest = state.get("positional_embedding"), state["positional_embedding_res"]
    if kept is None or kept.shape != rest.shape or kept.ndim != 2 or kept.shape[0] <= LONG_CLIP_KEPT:
        raise CheckpointError(
            f"checkpoint {source} has a positional_embedding_res of shape {tuple(rest.shape)} that does not "
            f"match its positional_embedding ({None if kept is None else tuple(kept.shape)}); it is not "
            "Long-CLIP's layout"
        )
    log.info(
        "checkpoint %s: Long-CLIP text positions (the first %d of positional_embedding, the rest of "
        "positional_embedding_res)",
        source,
        LONG_CLIP_KEPT,
    )
    merged = torch.cat([kept[:LONG_CLIP_KEPT], rest[LONG_CLIP_KEPT:]])
    return {
        **{key: value for key, value in state.items() if key != "positional_embedding_res"},
        "positional_embedding": merged,
    }


def fit_vision_grid(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """``state`` with its vision positional embedding resized to the patch grid of ``model``."""
    key = "visual.positional_embedding"
    visual = getattr(model, "visual", None)
    if key not in state or not hasattr(visual, "grid_size") or not hasattr(visual, "positional_embedding"):
        return state
    pos = state[key]
    expected = visual.positional_embedding
    if pos.shape == expected.shape or pos.ndim != 2 or pos.shape[1] != expected.shape[1]:
        return state  # the same grid, or another architecture, which load_state reports
    grid = tuple(visual.grid_size)
    prefix_tokens = expected.shape[0] - grid[0] * grid[1]
    try:
        saved_grid = vision_grid(pos.shape[0], prefix_tokens)
    except ValueError as error:
        raise CheckpointError(f"checkpoint {source}: {error}") from None
    log.info("Resizing the image patch grid of %s from %s to %s", source, saved_grid, grid)
    return {**state, key: resize_vision_positional_embedding(pos, saved_grid, grid)}
