"""``backbone=crosstext2loc``: the official checkpoint of the run's city and gallery type, found by
its hub name, refused in one line where there is none, and loaded in the official file's format
(OpenAI's CLIP state dict, 300 text positions) to embed as OpenAI's own code does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cvgtext.model.build import build_module
from cvgtext.model.official import CITIES, IMAGE_TYPES, official_checkpoint, parse_name
from cvgtext.utils.errors import ConfigError
from helpers.city import write_release
from helpers.models import two_layer_config
from helpers.official import FOLDER, official_name
from helpers.openai_clip import (
    LONG,
    assert_same_embeddings,
    epe,
    load_openai_clip,
    openai_model,
    openai_tokenize,
    random_state,
    skip_random_initialisation,
)
from helpers.runs import compose_config, run_cli


@pytest.fixture
def six(tmp_path) -> Path:
    """The six official files (empty) under their hub names, beside files that are not theirs."""
    folder = tmp_path / "data" / FOLDER
    folder.mkdir(parents=True)
    for number, (city, img) in enumerate((c, i) for c in CITIES for i in IMAGE_TYPES):
        (folder / official_name(city, img, epoch=number, r1=30 + number)).touch()
    (folder / (official_name("Tokyo", "sat", epoch=39) + ".incomplete")).touch()  # a transfer under way
    (folder / "README.md").touch()
    (folder / official_name("Tokyo", "osm", epoch=40)).mkdir()  # a folder, not a file
    return folder


def test_the_file_of_each_city_and_gallery_type_is_found_by_its_hub_name(six):
    seen = set()
    for city in CITIES:
        for img in IMAGE_TYPES:
            found = official_checkpoint(six, city, img)
            assert (found.city, found.img) == (city, img) and found.path.parent == six
            assert found.path.name.startswith(f"long_model_{city}-mixed_1e-05_128_{img}_epoch")
            seen.add(found.path)
    assert len(seen) == 6
    parsed = parse_name("long_model_NewYork-mixed_1e-05_128_osm_epoch12_59.08.pth")
    assert (parsed.city, parsed.img, parsed.epoch, parsed.test_r1) == ("NewYork", "osm", 12, 59.08)
    assert parse_name("model_NewYork-mixed_1e-05_128_osm_epoch12_59.08.pth") is None  # without EPE: not theirs


def test_what_has_no_official_checkpoint_is_refused_in_one_line(six):
    with pytest.raises(ConfigError) as street_views:
        official_checkpoint(six, "Brisbane", "stv")
    message = str(street_views.value)
    assert "img=stv" in message and "img=sat or img=osm" in message and "experiment=crosstext2loc" in message
    with pytest.raises(
        ConfigError, match=r"of Brisbane, NewYork, Tokyo, not Springfield; .*backbone\.trained_on\.city"
    ):
        official_checkpoint(six, "Springfield", "sat")
    for error in (street_views,):
        assert "\n" not in str(error.value)


def test_a_missing_file_is_refused_with_the_command_that_downloads_it(six, tmp_path):
    next(path for path in six.glob("long_model_Tokyo-mixed_1e-05_128_osm_*.pth") if path.is_file()).unlink()
    with pytest.raises(ConfigError) as missing:
        official_checkpoint(six, "Tokyo", "osm")
    message = str(missing.value)
    assert f"in {six};" in message and "long_model_Tokyo-mixed_1e-05_128_osm_epoch*_*.pth" in message
    assert "python download.py what=[checkpoints] city=Tokyo img=osm" in message and "\n" not in message
    with pytest.raises(ConfigError, match="download it with"):
        official_checkpoint(tmp_path / "nowhere", "Brisbane", "sat")


def test_two_files_of_one_city_and_gallery_type_are_refused(six):
    (six / official_name("Brisbane", "sat", epoch=30, r1=44.0)).touch()
    with pytest.raises(ConfigError, match=r"holds 2 checkpoints of Brisbane sat .*; keep one"):
        official_checkpoint(six, "Brisbane", "sat")


def test_the_backbone_is_the_papers_model_for_the_runs_city_and_gallery_type(tmp_path):
    cfg = compose_config("eval", ["backbone=crosstext2loc", "city=Tokyo", "img=osm"], tmp_path)
    backbone = cfg.backbone
    assert (backbone.model_name, backbone.context_length, backbone.quick_gelu) == ("ViT-L-14-336", 300, True)
    assert backbone.pretrained == "crosstext2loc" and dict(backbone.trained_on) == {"city": "Tokyo", "img": "osm"}
    assert backbone.checkpoints == f"{cfg.paths.data_dir}/{FOLDER}"
    across = compose_config(
        "eval", ["backbone=crosstext2loc", "city=Tokyo", "backbone.trained_on.city=NewYork"], tmp_path
    )
    assert dict(across.backbone.trained_on) == {"city": "NewYork", "img": "sat"}
    # the training recipe still starts from OpenAI's weights, at 300 positions
    recipe = compose_config("train", ["experiment=crosstext2loc"], tmp_path).backbone
    assert (recipe.pretrained, recipe.context_length) == ("openai", 300)


@pytest.mark.heavy  # the CLI in a subprocess; the message itself is checked above
def test_eval_refuses_street_views_in_one_line_before_building_anything(tmp_path):
    write_release(tmp_path / "data", city="Brisbane")  # the city is there: only the checkpoint is refused
    run = run_cli(
        "eval.py", "backbone=crosstext2loc", "city=Brisbane", "img=stv", f"paths.data_dir={tmp_path}/data",
        f"hydra.run.dir={tmp_path}/run", "trainer=cpu",
    )  # fmt: skip
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1].startswith("error: backbone=crosstext2loc (backbone.trained_on: city=")
    assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr


@pytest.fixture(scope="module")
def official_release(tmp_path_factory):
    """A release of Brisbane, and official-format checkpoints of it at ViT-L/14@336's real widths
    (two layers per tower): OpenAI's model with the paper's 300 positions, its ``state_dict()``
    saved bare (as the official script's ``model.module.state_dict()``) for sat and with the
    ``module.`` prefix of a wrapped model for osm."""
    root = tmp_path_factory.mktemp("official")
    name = two_layer_config(root, "ViT-L-14-336")
    openai, tokenizer = load_openai_clip()
    reference = openai_model(openai, epe(random_state(name, seed=5), 300))
    folder = write_release(root / "data", city="Brisbane") / FOLDER
    folder.mkdir(parents=True)
    state = reference.state_dict()
    torch.save(state, folder / official_name("Brisbane", "sat"))
    torch.save({f"module.{key}": value for key, value in state.items()}, folder / official_name("Brisbane", "osm"))
    return root, name, reference, tokenizer


@pytest.mark.slow
@pytest.mark.parametrize("img", ["sat", "osm"])
def test_the_official_file_embeds_long_captions_as_openais_code(official_release, img, tmp_path, monkeypatch):
    skip_random_initialisation(monkeypatch)
    root, name, reference, tokenizer = official_release
    overrides = ["backbone=crosstext2loc", f"backbone.model_name={name}", "city=Brisbane", f"img={img}"]
    module, backbone = build_module(compose_config("eval", [*overrides, f"paths.data_dir={root}/data"], tmp_path))
    assert Path(backbone["pretrained"]).name == official_name("Brisbane", img)
    assert backbone["trained_on"] == {"city": "Brisbane", "img": img}
    tokens = module.tokenizer([LONG])
    assert torch.equal(tokens, openai_tokenize(tokenizer, [LONG], 300))
    assert 77 < int(tokens.argmax()) < 300  # read past CLIP's own 77 positions
    images = torch.randn(2, 3, 336, 336, generator=torch.Generator().manual_seed(0))
    assert_same_embeddings(module.model.eval(), reference, tokens, images)


@pytest.mark.slow
def test_eval_reports_which_official_checkpoint_it_evaluated(official_release, tmp_path):
    from cvgtext.commands.evaluate import evaluate

    root, name, _, _ = official_release
    cfg = compose_config(
        "eval",
        [
            "backbone=crosstext2loc",
            f"backbone.model_name={name}",
            "backbone.image_size=56",  # small tiles, to stay quick: the grid is interpolated
            "city=Brisbane",
            f"paths.data_dir={root}/data",
            "trainer=cpu",
            "data.num_workers=0",
            "data.eval_batch_size=8",
            "eval.bootstrap=50",
        ],
        tmp_path,
    )
    metrics = evaluate(cfg)
    assert "test/R@1" in metrics and "test/MRR" in metrics
    run = json.loads((tmp_path / "run" / "metrics.json").read_text())["run"]
    assert run["trained_on"] == {"city": "Brisbane", "img": "sat"} and run["context_length"] == 300
    assert Path(run["pretrained"]).name == official_name("Brisbane", "sat")
