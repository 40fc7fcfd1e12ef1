"""A checkpoint written by an earlier version of cvgtext keeps working: it evaluates to the same
metrics, resumes training to the same end, and answers the query page with the same tiles.

``fixtures/old_checkpoint/last.pt`` is a ``last.ckpt`` that ``train.py`` wrote at commit 6aa3847,
before the modules moved into their rooms (renamed so that it is not taken for a run's output):
its stored config names the classes by their old paths (``cvgtext.module.CrossViewRetrieval``,
...). It comes from a two-epoch run of the ``cvg-fixture`` model (one layer per tower, width 8 /
16) stopped after the first epoch, on a synthetic city of 120 places with 64 px tiles.
``expected.json`` and ``eval_predictions.csv`` hold what that version's ``eval.py``, resumed
``train.py`` and query page gave with it.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from helpers.runs import compose_config

FIXTURE = Path(__file__).parent / "fixtures" / "old_checkpoint"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())
METRIC_GROUPS = ("all", "panorama", "single", "protocol", "full_city")
COMMON = [
    "city.synthetic.places=120",
    "city.synthetic.tile_size=64",
    "backbone.model_name=cvg-fixture",
    "data.num_workers=0",
    "data.batch_size=16",
    "data.eval_batch_size=32",
    "trainer=cpu",
    "run_id=fixed",
]
TRAIN = [
    "model.lock_text=true",
    "logger=csv",
    "trainer.max_epochs=2",
    "+trainer.limit_train_batches=4",
    "~callbacks.rich_progress_bar",
    "~callbacks.model_summary",
]


@pytest.fixture
def city(tmp_path, test_backbone):
    """Where the old version's city is generated again (the generator is deterministic)."""
    return [f"paths.data_dir={tmp_path}/data", f"paths.cache_dir={tmp_path}/cache"]


def metric_groups(path: Path) -> dict:
    """The metrics of ``path`` that the old version reported (later versions add the MRR)."""
    metrics = json.loads(path.read_text())
    groups = {key: metrics[key] for key in METRIC_GROUPS if key in metrics}
    for views in (groups, groups.get("full_city", {})):
        for view in ("all", "panorama", "single"):
            if view in views:
                assert "MRR" in views[view]
                del views[view]["MRR"]
    return groups


def test_the_stored_config_names_the_classes_by_their_old_paths():
    checkpoint = torch.load(FIXTURE / "last.pt", weights_only=True)
    assert checkpoint["config"]["model"]["_target_"] == "cvgtext.module.CrossViewRetrieval"
    assert (checkpoint["epoch"], checkpoint["global_step"]) == (0, 4)


@pytest.mark.slow
def test_an_old_checkpoint_evaluates_to_the_same_metrics_and_predictions(tmp_path, city):
    from cvgtext.commands.evaluate import evaluate

    cfg = compose_config("eval", [*COMMON, *city, f"ckpt_path={FIXTURE / 'last.pt'}"], tmp_path)
    evaluate(cfg)
    assert metric_groups(tmp_path / "run" / "metrics.json") == EXPECTED["eval"]
    with (
        open(FIXTURE / "eval_predictions.csv", newline="") as before,
        open(tmp_path / "run" / "predictions.csv", newline="") as after,
    ):
        old, new = list(csv.DictReader(before)), list(csv.DictReader(after))
    assert len(new) == len(old)
    for was, now in zip(old, new):
        assert {key: now[key] for key in was} == was


@pytest.mark.slow
def test_an_old_checkpoint_resumes_training_to_the_same_end(tmp_path, city):
    from cvgtext.commands.train import train

    checkpoint = tmp_path / "old.ckpt"
    shutil.copy(FIXTURE / "last.pt", checkpoint)
    train(compose_config("train", [*COMMON, *city, *TRAIN, f"ckpt_path={checkpoint}"], tmp_path))
    assert metric_groups(tmp_path / "run" / "metrics.json") == EXPECTED["resumed"]
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (EXPECTED["resumed_epoch"], EXPECTED["resumed_step"])


@pytest.mark.slow
def test_an_old_checkpoint_answers_the_page_with_the_same_tiles(tmp_path, city):
    from cvgtext.commands.app import answer
    from cvgtext.commands.locator import Locator

    cfg = compose_config(
        "app", [*COMMON, *city, f"ckpt_path={FIXTURE / 'last.pt'}", "explain.overlays=false"], tmp_path
    )
    result = answer(Locator(cfg), EXPECTED["page"]["query"])
    found = [(c.file, c.score) for c in result.location.candidates]
    assert [file for file, _ in found] == [file for file, _ in EXPECTED["page"]["candidates"]]
    assert [score for _, score in found] == pytest.approx([s for _, s in EXPECTED["page"]["candidates"]], abs=1e-6)
