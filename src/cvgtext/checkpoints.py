"""Reading checkpoints safely and loading their weights into an open_clip model.

Accepted: this project's Lightning checkpoints (weights under ``state_dict`` as ``model.*``),
open_clip training checkpoints (``state_dict`` with ``module.*``), plain open_clip / OpenAI-format
state dicts, and the official CrossText2Loc checkpoints, whose text positional embedding has
300 rows, as PyTorch files or ``.safetensors``. Files are read with ``weights_only=True``: a
pickle that would run code is refused, and so is a TorchScript archive (OpenAI's released
``.pt`` files), which ``python -m cvgtext.convert_weights`` turns into a safetensors file once.
"""

from __future__ import annotations

import io
import logging
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import nn

from cvgtext.atomic import atomic_write
from cvgtext.errors import CheckpointError

log = logging.getLogger(__name__)


def read_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint file as plain tensors and containers, or raise CheckpointError.

    ``mmap=True`` maps the tensors instead of reading them: cheap when only the metadata is needed.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if is_torchscript(path):
        raise CheckpointError(
            f"checkpoint {path} is a TorchScript archive (as OpenAI's released CLIP files are), which "
            f"could run code when loaded; if you trust it, convert it once with "
            f"python -m cvgtext.convert_weights {path} {path.with_suffix('.safetensors')} and use that file"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            content = load_file(str(path), device="cpu")
        else:
            content = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:  # torch raises many types for a file that is not a checkpoint
        if isinstance(error, pickle.UnpicklingError) and "Unsupported global" in str(error):
            raise CheckpointError(
                f"checkpoint {path} was refused: it holds objects other than tensors and plain "
                "containers, which could run code when loaded"
            ) from None
        raise CheckpointError(f"checkpoint {path} is not a readable PyTorch checkpoint ({error})") from None
    if not isinstance(content, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(content).__name__}, not a dict of weights")
    return content


def is_torchscript(path: str | Path) -> bool:
    """Whether ``path`` is a TorchScript archive: a zip file whose records hold code and constants."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def check_backbone(saved: dict[str, Any], model_name: str, path: str | Path) -> None:
    """Refuse a checkpoint whose recorded backbone (``saved``) is not ``model_name``."""
    if saved and saved.get("model_name") != model_name:
        raise CheckpointError(
            f"checkpoint {path} was trained with backbone.model_name={saved.get('model_name')} "
            f"(backbone={saved.get('name')}), but this run builds {model_name}; add backbone={saved.get('name')}"
        )


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made atomic: a kill mid-write keeps the previous file.

    Lightning serialises a checkpoint in memory and then writes it over the old file, so a job
    killed during the write leaves a truncated ``last.ckpt``. This writes a temporary file beside
    it, flushes it to disk and renames it over the old one. A full disk is reported as an
    :class:`~cvgtext.errors.OutputError` naming the file. Remote paths (``s3://``...) are written
    as Lightning writes them.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        # Serialised in memory first, as Lightning does: a failing write then raises the file
        # system's OSError (a full disk) rather than an error of torch's zip writer.
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        with atomic_write(path, "wb") as stream:
            stream.write(buffer.getbuffer())


def model_state_dict(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The open_clip model weights of a checkpoint of any accepted format."""
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, dict):
        raise CheckpointError("checkpoint has a 'state_dict' entry that is not a dict of weights")
    if any(key.startswith("model.") for key in state):
        # A Lightning checkpoint of this project: the open_clip model is the module's ``model``.
        state = {key[len("model.") :]: value for key, value in state.items() if key.startswith("model.")}
    elif state and all(key.startswith("module.") for key in state):
        # Saved from a DistributedDataParallel wrapper, as open_clip's training does.
        state = {key[len("module.") :]: value for key, value in state.items()}
    return {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}


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
    """Load open_clip weights into ``model``, whose text context becomes ``context_length``.

    A state whose text positional embedding has another number of rows (e.g. 300 for the
    official CrossText2Loc weights) is resized with ``context_resize``; one whose image patch grid
    differs from the model's (square weights into a model set to 2:1 street views) is
    interpolated to the model's grid (:func:`~cvgtext.model.positional.set_image_size`). Keys present on one side
    only are reported; weights of another architecture (shape mismatches) are refused.
    """
    from cvgtext.model.encoder import model_context_length
    from cvgtext.model.positional import resize_state_dict_context_length, set_context_length

    length = context_length or model_context_length(model)
    if length != model_context_length(model):
        set_context_length(model, length, mode=context_resize)
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
            source, len(result.missing_keys), ", ".join(result.missing_keys[:10]),
        )
    if result.unexpected_keys:
        log.warning(
            "checkpoint %s has %d weights this model does not use: %s",
            source, len(result.unexpected_keys), ", ".join(result.unexpected_keys[:10]),
        )


def fit_vision_grid(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """``state`` with its vision positional embedding resized to the patch grid of ``model``."""
    from cvgtext.model.positional import resize_vision_positional_embedding, vision_grid

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
