"""Reading checkpoints safely and writing them atomically (``model/weights.py`` loads weights into models).

Accepted: this project's Lightning checkpoints (weights under ``state_dict`` as ``model.*``),
open_clip training checkpoints (``state_dict`` with ``module.*``), plain open_clip / OpenAI-format
state dicts, and the official CrossText2Loc checkpoints, whose text positional embedding has
300 rows, as PyTorch files or ``.safetensors``. Files are read with ``weights_only=True``: a
pickle that would run code is refused, and so is a TorchScript archive (OpenAI's released
``.pt`` files), which ``python -m cvgtext.model.convert_weights`` turns into a safetensors file once.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from cvgtext.utils.atomic import atomic_write
from cvgtext.utils.errors import CheckpointError


def read_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint file as plain tensors and containers, or raise CheckpointError.

    ``mmap=True`` maps the tensors instead of reading them: cheap when only the metadata is needed.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder; expected a checkpoint file (.ckpt, .pt, .safetensors)")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    with open(path, "rb") as stream:
        start = stream.read(8)
    if not start:
        raise CheckpointError(f"checkpoint {path} is an empty file")
    if is_torchscript(path):
        raise CheckpointError(
            f"checkpoint {path} is a TorchScript archive (as OpenAI's released CLIP files are), which "
            f"could run code when loaded; if you trust it, convert it once with "
            f"python -m cvgtext.model.convert_weights {path} {path.with_suffix('.safetensors')} and use that file"
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
        if path.suffix != ".safetensors" and not start.startswith((b"PK\x03\x04", b"\x80")):
            raise CheckpointError(
                f"checkpoint {path} is not a PyTorch checkpoint (neither the zip archive torch.save writes nor a "
                "pickle)"
            ) from None
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"checkpoint {path} is not a readable PyTorch checkpoint ({reason})") from None
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
    :class:`~cvgtext.utils.errors.OutputError` naming the file. Remote paths (``s3://``...) are written
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
