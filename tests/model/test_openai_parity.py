"""The real backbones against OpenAI's own CLIP code, at real shapes, with random weights.

OpenAI's implementation and weights in its format come from ``helpers/openai_clip.py``. Weight
files are loaded through ``backbone.pretrained=FILE`` and through ``eval.py ckpt_path=FILE``.

ViT-B/16 runs at full depth; ViT-L/14@336 at full width, heads, patch grid and context with two
layers per tower, since depth repeats what one layer checks and costs most of the time.
"""

from __future__ import annotations

import json

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
from helpers.openai_clip import (
    LONG,
    SHORT,
    TOLERANCE,
    assert_same_embeddings,
    epe,
    load_openai_clip,
    normalised,
    openai_model,
    openai_tokenize,
    random_state,
    skip_random_initialisation,
)
from helpers.runs import compose_config


@pytest.fixture(autouse=True)
def skip_initialisation(monkeypatch):
    skip_random_initialisation(monkeypatch)


@pytest.fixture(scope="module")
def openai():
    """OpenAI's ``clip/model.py`` and a ``SimpleTokenizer``."""
    return load_openai_clip()


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
