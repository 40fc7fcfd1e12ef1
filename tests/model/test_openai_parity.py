"""The real backbones against OpenAI's own CLIP code, at real shapes, with random weights.

OpenAI's implementation comes from the ``openai-clip`` package (a test dependency). Its
``clip/clip.py`` cannot be imported here (it needs ``pkg_resources``), so ``clip/model.py`` and
``clip/simple_tokenizer.py`` are loaded by file path and ``clip.tokenize(truncate=True)`` is
restated below. Weight files are written as OpenAI's are (fp16 state dicts) and loaded through
``backbone.pretrained=FILE`` and through ``eval.py ckpt_path=FILE``.

ViT-B/16 runs at full depth; ViT-L/14@336 at full width, heads, patch grid and context with two
layers per tower, since depth repeats what one layer checks and costs most of the time.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image
from torchvision import transforms

from cvgtext.commands.evaluate import evaluate
from cvgtext.model.build import backbone_for_checkpoint, build_module
from cvgtext.model.encoder import build_encoder
from cvgtext.model.positional import resize_state_dict_context_length
from cvgtext.utils.checkpoints import model_state_dict, read_checkpoint
from helpers.city import CITY, write_release
from helpers.models import two_layer_config
from helpers.runs import compose_config

TOLERANCE = 1e-5  # max abs difference of L2-normalised embeddings
SHORT = "A red roof beside a narrow street with two trees."
LONG = " ".join(
    f"Building {i} has a {colour} facade, {i % 4 + 2} floors and a shop with a striped awning."
    for i, colour in enumerate(["grey", "white", "brick red", "pale blue", "green", "yellow", "beige", "dark"])
)  # about 150 tokens: truncated at 77, whole at 300


@pytest.fixture(autouse=True)
def skip_random_initialisation(monkeypatch):
    """Build models without drawing their random initial weights, most of a build's time here.

    Every model of these tests is loaded from a file, OpenAI's strictly; a weight the loading
    missed would hold uninitialised memory and fail the comparisons instead of passing unseen.
    """
    for name in ("uniform_", "normal_", "kaiming_uniform_", "trunc_normal_"):
        monkeypatch.setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)


def _load_by_path(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def openai():
    """OpenAI's ``clip/model.py`` and a ``SimpleTokenizer``, loaded without ``clip/clip.py``."""
    spec = importlib.util.find_spec("clip")  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("openai-clip is not installed (pip install -e '.[test]')")
    folder = Path(list(spec.submodule_search_locations)[0])
    model = _load_by_path("openai_clip_model", folder / "model.py")
    tokenizer = _load_by_path("openai_clip_tokenizer", folder / "simple_tokenizer.py").SimpleTokenizer()
    return model, tokenizer


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


def assert_same_model(model, other):
    """Two project models that embed alike: the same weights, activation and input sizes."""
    ours, theirs = model.state_dict(), other.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[key], theirs[key]) for key in ours)
    assert model.context_length == other.context_length
    assert tuple(model.visual.image_size) == tuple(other.visual.image_size)
    activation = [type(module).__name__ for module in model.modules() if "GELU" in type(module).__name__]
    assert activation == [type(module).__name__ for module in other.modules() if "GELU" in type(module).__name__]


def through_pretrained(tmp_path, overrides):
    """The encoder ``backbone.pretrained=FILE`` builds, as train.py and eval.py compose it."""
    cfg = compose_config("eval", overrides, tmp_path)
    return build_encoder(**OmegaConf.to_container(cfg.backbone, resolve=True))


def through_ckpt_path(tmp_path, overrides):
    """The module ``eval.py ckpt_path=FILE`` evaluates."""
    module, _ = build_module(compose_config("eval", overrides, tmp_path))
    return module


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("configs")
    return {name: two_layer_config(folder, name) for name in ("ViT-B-16", "ViT-L-14-336")}


@pytest.mark.slow
def test_vit_b16_openai_weights_embed_as_openai_code(openai, tmp_path):
    module, tokenizer = openai
    state = random_state("ViT-B-16", seed=0)
    path = tmp_path / "ViT-B-16-openai.pt"
    torch.save(state, path)
    reference = openai_model(module, state)

    encoder = through_pretrained(tmp_path, ["backbone=vit_b16", f"backbone.pretrained={path}"])
    assert encoder.resolved["quick_gelu"] and encoder.context_length == 77
    tokens = encoder.tokenizer([SHORT, LONG])
    assert torch.equal(tokens, openai_tokenize(tokenizer, [SHORT, LONG], 77))
    image = Image.new("RGB", (512, 512), (90, 140, 60))
    images = encoder.preprocess(image).unsqueeze(0)
    assert images.shape == (1, 3, 224, 224)
    assert_same_embeddings(encoder.model.eval(), reference, tokens[1:], images)  # the long caption, truncated

    evaluated = through_ckpt_path(tmp_path, ["backbone=vit_b16", f"ckpt_path={path}"])
    assert_same_model(evaluated.model, encoder.model)


@pytest.fixture(scope="module")
def vit_l(configs, tmp_path_factory):
    """Random ViT-L/14@336 weights (two layers per tower) saved as OpenAI's and as the paper's EPE."""
    folder = tmp_path_factory.mktemp("vit-l")
    state = random_state(configs["ViT-L-14-336"], seed=1)
    files = {"clip": folder / "clip.pt", "module": folder / "finetuned.pt", "epe": folder / "crosstext2loc.pt"}
    torch.save(state, files["clip"])
    torch.save({f"module.{key}": value for key, value in state.items()}, files["module"])
    torch.save(epe(state, 300), files["epe"])
    backbone = ["backbone=vit_l14_336", f"backbone.model_name={configs['ViT-L-14-336']}"]
    return state, files, backbone


@pytest.mark.slow
def test_vit_l14_336_module_prefixed_weights_embed_as_openai_code(openai, vit_l, tmp_path):
    """The official fine-tuning saves a bare state dict; a DDP wrapper's has ``module.`` keys."""
    module, tokenizer = openai
    state, files, backbone = vit_l
    reference = openai_model(module, state)

    encoder = through_pretrained(tmp_path, [*backbone, f"backbone.pretrained={files['module']}"])
    tokens = encoder.tokenizer([LONG])
    assert torch.equal(tokens, openai_tokenize(tokenizer, [LONG], 77))
    images = torch.randn(1, 3, 336, 336, generator=torch.Generator().manual_seed(0))
    assert_same_embeddings(encoder.model.eval(), reference, tokens, images)

    evaluated = through_ckpt_path(tmp_path, [*backbone, f"ckpt_path={files['module']}"])
    assert_same_model(evaluated.model, encoder.model)

    # GELU instead of QuickGELU, what open_clip's ViT-L-14-336 has: the parity check must see it.
    for block in encoder.model.transformer.resblocks:
        block.mlp.gelu = torch.nn.GELU()
    with torch.no_grad():
        drift = normalised(encoder.model.encode_text(tokens)) - normalised(reference.encode_text(tokens))
    assert drift.abs().max() > 100 * TOLERANCE


@pytest.mark.slow
def test_vit_l14_336_300_positions_embed_long_captions_as_openai_code(openai, vit_l, tmp_path):
    """The paper's EPE weights (300 text positions), and EPE applied on load to 77-position weights."""
    module, tokenizer = openai
    state, files, backbone = vit_l
    expanded = epe(state, 300)
    reference = openai_model(module, expanded)
    backbone = [*backbone, "backbone.context_length=300"]

    encoder = through_pretrained(tmp_path, [*backbone, f"backbone.pretrained={files['epe']}"])
    tokens = encoder.tokenizer([LONG])
    assert torch.equal(tokens, openai_tokenize(tokenizer, [LONG], 300))
    assert 77 < int(tokens.argmax()) < 300  # the end-of-text token lies past CLIP's 77 positions
    assert_same_embeddings(encoder.model.eval(), reference, tokens)

    evaluated = through_ckpt_path(tmp_path, [*backbone, f"ckpt_path={files['epe']}"])
    assert_same_model(evaluated.model, encoder.model)
    stretched = resize_state_dict_context_length(model_state_dict(read_checkpoint(files["clip"])), 300)
    assert torch.equal(stretched["positional_embedding"], expanded["positional_embedding"])


@pytest.mark.slow
def test_street_views_embed_at_2_to_1_as_the_official_code(openai, configs, tmp_path):
    """ViT-B/16 shapes: a 2048x1024 panorama becomes [3, 224, 448]; a 2:1 state dict loads back."""
    module, _ = openai
    state = random_state(configs["ViT-B-16"], seed=3)
    path = tmp_path / "clip.pt"
    torch.save(state, path)
    reference = openai_model(module, state)
    # The official code's grid resize: bicubic, no antialiasing, class token apart.
    pos = reference.visual.positional_embedding.data
    grid = pos[1:].reshape(1, 14, 14, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(14, 28), mode="bicubic", align_corners=False, antialias=False)
    reference.visual.positional_embedding.data = torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(14 * 28, -1)])
    backbone = ["img=stv", "backbone=vit_b16", f"backbone.model_name={configs['ViT-B-16']}"]

    encoder = through_pretrained(tmp_path, [*backbone, f"backbone.pretrained={path}"])
    panorama = Image.new("RGB", (2048, 1024), (200, 180, 150))
    panorama.paste((30, 60, 200), (0, 0, 1024, 300))  # sky on the left half only: no crop may lose it
    images = encoder.preprocess(panorama).unsqueeze(0)
    assert images.shape == (1, 3, 224, 448)
    resized = transforms.Compose(
        [
            transforms.Resize((224, 448), interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.ToTensor(),
            transforms.Normalize(encoder.model.visual.image_mean, encoder.model.visual.image_std),
        ]
    )(panorama)
    assert torch.equal(images[0], resized)
    tokens = encoder.tokenizer([SHORT])
    assert_same_embeddings(encoder.model.eval(), reference, tokens, images)

    trained = tmp_path / "street-views.pt"  # a state dict of a model trained at 2:1
    torch.save(encoder.model.state_dict(), trained)
    evaluated = through_ckpt_path(tmp_path, [*backbone, f"ckpt_path={trained}"])
    assert_same_model(evaluated.model, encoder.model)


@pytest.mark.slow
def test_eval_runs_the_paper_backbone_on_a_street_view_gallery(vit_l, tmp_path):
    """``eval.py img=stv backbone=vit_l14_336 backbone.pretrained=FILE``, small images to stay quick."""
    data_dir = write_release(tmp_path / "data")  # street views of 64x32
    _, files, backbone = vit_l
    cfg = compose_config(
        "eval",
        [
            "img=stv",
            *backbone,
            f"backbone.pretrained={files['clip']}",
            "backbone.image_size=56",
            "city=Brisbane",
            f"city.name={CITY}",
            f"paths.data_dir={data_dir}",
            "trainer=cpu",
            "data.num_workers=0",
            "data.eval_batch_size=4",
        ],
        tmp_path,
    )
    metrics = evaluate(cfg)
    assert "test/R@1" in metrics
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["run"]["img"] == "stv"


def test_a_checkpoint_evaluates_with_the_activation_and_aspect_it_was_trained_with():
    trained = {"name": "vit_b16", "model_name": "ViT-B-16", "image_aspect": 2, "quick_gelu": True, "image_size": None}
    checkpoint = {"hyper_parameters": {"backbone": trained}}
    asked = {**trained, "pretrained": "openai", "image_aspect": 1, "quick_gelu": False}
    backbone = backbone_for_checkpoint(asked, checkpoint, "model.ckpt")
    assert backbone["image_aspect"] == 2 and backbone["quick_gelu"] is True and backbone["pretrained"] is None
    older = {"hyper_parameters": {"backbone": {key: trained[key] for key in ("name", "model_name")}}}
    assert backbone_for_checkpoint({**asked, "quick_gelu": True}, older, "old.ckpt")["quick_gelu"] is None


def long_clip_state(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Weights in Long-CLIP's layout: 248 positions stretched from CLIP's as Long-CLIP starts
    (``positional_embedding``), and a trained-looking ``positional_embedding_res`` beside them."""
    from cvgtext.model.positional import resize_text_positional_embedding

    stretched = resize_text_positional_embedding(state["positional_embedding"].float(), 248, "keep_first", keep=20)
    noise = torch.randn(stretched.shape, generator=torch.Generator().manual_seed(seed)) * 0.01
    return {**state, "positional_embedding": stretched.half(), "positional_embedding_res": (stretched + noise).half()}


@pytest.mark.slow
def test_long_clip_weights_embed_248_tokens_as_long_clip_adds_its_two_position_tables(openai, configs, tmp_path):
    """Long-CLIP's text tower adds ``positional_embedding * mask1 + positional_embedding_res * mask2``
    (mask1: the first 20 positions); restated here on OpenAI's model, at ViT-B/16's real widths."""
    module, tokenizer = openai
    state = long_clip_state(random_state(configs["ViT-B-16"], seed=3), seed=4)
    path = tmp_path / "longclip-B.pt"
    torch.save(state, path)
    first = (torch.arange(248) < 20).float()[:, None]
    added = state["positional_embedding"].float() * first + state["positional_embedding_res"].float() * (1 - first)
    reference_state = {key: value for key, value in state.items() if key != "positional_embedding_res"}
    reference = openai_model(module, {**reference_state, "positional_embedding": added.half()})

    backbone = ["backbone=longclip_b16", f"backbone.model_name={configs['ViT-B-16']}"]
    encoder = through_pretrained(tmp_path, [*backbone, f"backbone.pretrained={path}"])
    assert encoder.context_length == 248 and encoder.resolved["quick_gelu"]
    tokens = encoder.tokenizer([SHORT, LONG])
    assert torch.equal(tokens, openai_tokenize(tokenizer, [SHORT, LONG], 248))
    assert 77 < int(tokens[1].argmax()) < 248  # the long caption is read whole
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    assert_same_embeddings(encoder.model.eval(), reference, tokens, images)
    evaluated = through_ckpt_path(tmp_path, [*backbone, f"ckpt_path={path}"])
    assert_same_model(evaluated.model, encoder.model)

    # From CLIP's own 77 positions, Long-CLIP's starting point: its 4x stretch after the first 20.
    clip_file = tmp_path / "clip.pt"
    plain = random_state(configs["ViT-B-16"], seed=3)
    torch.save(plain, clip_file)
    started = through_pretrained(tmp_path, [*backbone, f"backbone.pretrained={clip_file}"])
    assert torch.equal(started.model.positional_embedding.detach().half(), state["positional_embedding"])
