"""Turn a weight file that cannot be read safely into a plain safetensors state dict, once.

    python -m cvgtext.model.convert_weights ViT-L-14-336.pt ViT-L-14-336.safetensors

OpenAI's released CLIP files are TorchScript archives, and some checkpoints are pickles of
whole objects; both can run code when loaded, so every entry point of this project refuses
them. Running this command is the explicit request to load such a file once, on the CPU,
from a source you trust: its weights are written as a safetensors file (tensors only), which
``backbone.pretrained=`` and ``ckpt_path=`` then read safely. Checkpoints of this project,
open_clip's, and OpenAI-format state dicts are accepted too (their ``state_dict`` /
``module.`` wrapping is removed). Choose the activation when loading the result:
``backbone.quick_gelu=true`` for OpenAI's weights and models fine-tuned from them.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from cvgtext.utils.atomic import atomic_write
from cvgtext.utils.checkpoints import is_torchscript, model_state_dict
from cvgtext.utils.errors import CheckpointError, ConfigError, CVGTextError

# Scalars OpenAI's TorchScript models carry among their weights, which no model loads.
NON_WEIGHTS = ("input_resolution", "context_length", "vocab_size")


def read_trusted(path: Path) -> dict[str, torch.Tensor]:
    """The weights of a TorchScript archive, a pickled model or a checkpoint; may run its code."""
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        if is_torchscript(path):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated; the files remain
                content = torch.jit.load(str(path), map_location="cpu")
        else:
            content = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises many types for a file that is not a checkpoint
        raise CheckpointError(f"{path} is not a readable PyTorch or TorchScript file ({error})") from None
    if isinstance(content, (nn.Module, torch.jit.ScriptModule)):
        content = content.state_dict()
    if not isinstance(content, dict):
        raise CheckpointError(f"{path} holds a {type(content).__name__}, not a model or a dict of weights")
    state = model_state_dict(content)
    state = {key: value for key, value in state.items() if key not in NON_WEIGHTS}
    if not state:
        raise CheckpointError(f"{path} holds no weights")
    return state


def convert(source: str | Path, target: str | Path) -> dict[str, torch.Tensor]:
    """Write the weights of ``source`` to the safetensors file ``target``; returns them."""
    from safetensors.torch import save

    source, target = Path(source), Path(target)
    if target.suffix != ".safetensors":
        raise ConfigError(f"{target}: the converted file must end in .safetensors, which is how it is read back")
    state = read_trusted(source)
    # safetensors stores each tensor on its own: no shared storage, no views.
    plain = {key: value.detach().to("cpu").contiguous().clone() for key, value in state.items()}
    with atomic_write(target, "wb") as stream:
        stream.write(save(plain, metadata={"format": "pt"}))
    return plain


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cvgtext.model.convert_weights",
        description="Load a trusted TorchScript or pickled weight file once and write its weights as safetensors.",
    )
    parser.add_argument("source", help="the file to convert, e.g. OpenAI's ViT-L-14-336.pt")
    parser.add_argument("target", help="the .safetensors file to write")
    args = parser.parse_args(argv)
    try:
        state = convert(args.source, args.target)
    except CVGTextError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    parameters = sum(value.numel() for value in state.values())
    print(f"wrote {len(state)} tensors ({parameters / 1e6:.1f} M values) to {args.target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
