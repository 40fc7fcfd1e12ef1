"""Small models and checkpoints for tests: random tiny weights, two-layer real shapes, a pickle that runs code."""

from __future__ import annotations

import json
from pathlib import Path


def two_layer_config(folder: Path, model_name: str) -> str:
    """Register ``model_name`` with two layers per tower and otherwise its own shapes (real
    widths, heads, patch grid and context, for checks where depth adds nothing)."""
    import open_clip

    config = open_clip.get_model_config(model_name)
    config["vision_cfg"]["layers"] = config["text_cfg"]["layers"] = 2
    name = f"{model_name}-2layers"
    path = folder / f"{name}.json"
    path.write_text(json.dumps(config))
    open_clip.add_model_config(path)
    return name


def tiny_checkpoint(path: Path, seed: int) -> Path:
    """A checkpoint of this project's layout holding a randomly initialised tiny model."""
    import torch

    from cvgtext.model.encoder import build_encoder

    torch.manual_seed(seed)
    model = build_encoder("cvg-tiny").model
    backbone = {
        "name": "tiny",
        "model_name": "cvg-tiny",
        "context_length": 77,
        "context_resize": "interpolate",
        "image_size": None,
    }
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "hyper_parameters": {"backbone": backbone},
        },
        path,
    )
    return path


class WritesMarker:
    """A pickle payload that creates the file ``marker`` when it is unpickled: a checkpoint
    holding one is refused by a safe reader, and its code never runs."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))
