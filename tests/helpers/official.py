"""A fake CVG-Text release with official-format checkpoints: tiny cities named as the real ones,
and, for each city and gallery type, a random CLIP state dict in the official files' format (bare
OpenAI keys, the text positions stretched to 300) under the hub's file name."""

from __future__ import annotations

from pathlib import Path

CITIES = ("Brisbane", "NewYork", "Tokyo")
IMAGE_TYPES = ("sat", "osm")
FOLDER = "checkpoints/CrossText2Loc"


def official_name(city: str, img: str, epoch: int = 7, r1: float = 43.58) -> str:
    return f"long_model_{city}-mixed_1e-05_128_{img}_epoch{epoch}_{r1:.2f}.pth"


def official_state(model_name: str, seed: int, half: bool = False) -> dict:
    """Random weights of the open_clip CLIP ``model_name`` (OpenAI's keys), its 77 text positions
    linearly interpolated to 300 as the paper's EPE does."""
    import open_clip
    import torch
    import torch.nn.functional as F

    import cvgtext.model.encoder  # noqa: F401  (registers the project's model configs, cvg-tiny)

    torch.manual_seed(seed)
    state = open_clip.create_model(model_name).state_dict()
    positions = state["positional_embedding"].T.unsqueeze(0)  # [1, width, 77]
    state["positional_embedding"] = F.interpolate(positions, size=300, mode="linear", align_corners=False)[0].T
    return {key: value.half() if half and value.is_floating_point() else value for key, value in state.items()}


def write_fake_release(root: Path, model_name: str, cities=CITIES, images=IMAGE_TYPES, half: bool = False) -> Path:
    """Tiny cities ``cities`` in the release layout under ``root``, and an official-format
    checkpoint of each city and gallery type in ``root/checkpoints/CrossText2Loc``."""
    import torch

    from helpers.city import write_release

    for city in cities:
        write_release(root, city=city)
    folder = root / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for number, (city, img) in enumerate((c, i) for c in cities for i in images):
        state = official_state(model_name, seed=number, half=half)
        torch.save(state, folder / official_name(city, img, epoch=number, r1=40.0 + number))
    return root
