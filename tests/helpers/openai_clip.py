"""OpenAI's own CLIP code and weights in its format, for the tests that hold the backbones to it.

OpenAI's implementation comes from the ``openai-clip`` package (a test dependency). Its
``clip/clip.py`` cannot be imported here (it needs ``pkg_resources``), so ``clip/model.py`` and
``clip/simple_tokenizer.py`` are loaded by file path and ``clip.tokenize(truncate=True)`` is
restated below. Weight files are written as OpenAI's are (fp16 state dicts).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F

TOLERANCE = 1e-5  # max abs difference of L2-normalised embeddings
SHORT = "A red roof beside a narrow street with two trees."
LONG = " ".join(
    f"Building {i} has a {colour} facade, {i % 4 + 2} floors and a shop with a striped awning."
    for i, colour in enumerate(["grey", "white", "brick red", "pale blue", "green", "yellow", "beige", "dark"])
)  # about 150 tokens: truncated at 77, whole at 300


def _load_by_path(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def openai_tokenize(tokenizer, texts: list[str], context_length: int) -> torch.Tensor:
    """``clip.tokenize(texts, context_length, truncate=True)``, restated."""
    sot, eot = tokenizer.encoder["<|startoftext|>"], tokenizer.encoder["<|endoftext|>"]
    result = torch.zeros(len(texts), context_length, dtype=torch.long)
    for row, text in enumerate(texts):
        tokens = [sot] + tokenizer.encode(text) + [eot]
        if len(tokens) > context_length:
            tokens = tokens[:context_length]
            tokens[-1] = eot
        result[row, : len(tokens)] = torch.tensor(tokens)
    return result


def openai_model(module, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """OpenAI's ``build_model(state).float()`` (it casts to fp16)."""
    return module.build_model(dict(state)).float().eval()


def random_state(model_name: str, seed: int) -> dict[str, torch.Tensor]:
    """Random OpenAI-format (fp16) weights of ``model_name``'s shapes, scaled as trained weights are.

    Tensors are windows of a few shared draws (one per scale), which makes them cheap to draw.
    """
    with torch.device("meta"):  # shapes only: nothing is initialised
        model = open_clip.create_model(model_name, device="meta")
    shapes = {key: value.shape for key, value in model.state_dict().items()}
    scales = {}
    for key, shape in shapes.items():
        owner = key.split(".")[-2] if "." in key else ""
        scales[key] = (
            0.1
            if owner.startswith("ln") and key.endswith("weight")
            else (shape[-1] ** -0.5 if len(shape) >= 2 else 0.02)
        )
    size = max(shape.numel() for shape in shapes.values()) + 7919
    draw = torch.randn(size, generator=torch.Generator().manual_seed(seed))
    pools = {}  # one fp16 draw per scale, as long as its largest tensor
    for scale in set(scales.values()):
        needed = max(shapes[key].numel() for key in shapes if scales[key] == scale) + 7919
        pools[scale] = (draw[:needed] * scale).half()
    state = {}
    for number, (key, shape) in enumerate(shapes.items()):
        start = (number * 104729) % 7919  # different tensors take different windows
        values = pools[scales[key]][start : start + shape.numel()].reshape(shape)
        state[key] = values + 1 if scales[key] == 0.1 else values
    state["logit_scale"] = torch.tensor(4.6052).half()
    return state


def epe(state: dict[str, torch.Tensor], length: int) -> dict[str, torch.Tensor]:
    """The paper's expanded positional embedding: text positions linearly interpolated to ``length``."""
    pos = state["positional_embedding"].float().T.unsqueeze(0)  # [1, width, 77]
    stretched = F.interpolate(pos, size=length, mode="linear", align_corners=False)[0].T
    return {**state, "positional_embedding": stretched.half()}


def normalised(features: torch.Tensor) -> torch.Tensor:
    return features / features.norm(dim=-1, keepdim=True)


def assert_same_embeddings(model, reference, tokens, images=None):
    with torch.no_grad():
        text = normalised(model.encode_text(tokens))
        expected = normalised(reference.encode_text(tokens))
        assert (text - expected).abs().max() < TOLERANCE
        if images is not None:
            image = normalised(model.encode_image(images))
            expected = normalised(reference.encode_image(images))
            assert (image - expected).abs().max() < TOLERANCE


def load_openai_clip():
    """OpenAI's ``clip/model.py`` and a ``SimpleTokenizer``, loaded without ``clip/clip.py``
    (skips the test when the package is not installed)."""
    spec = importlib.util.find_spec("clip")  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("openai-clip is not installed (pip install -e '.[test]')")
    folder = Path(list(spec.submodule_search_locations)[0])
    model = _load_by_path("openai_clip_model", folder / "model.py")
    tokenizer = _load_by_path("openai_clip_tokenizer", folder / "simple_tokenizer.py").SimpleTokenizer()
    return model, tokenizer


def skip_random_initialisation(monkeypatch) -> None:
    """Build models without drawing their random initial weights, most of a build's time in
    these tests. Every model is then loaded from a file, OpenAI's strictly; a weight the loading
    missed would hold uninitialised memory and fail the comparisons instead of passing unseen."""
    for name in ("uniform_", "normal_", "kaiming_uniform_", "trunc_normal_"):
        monkeypatch.setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
