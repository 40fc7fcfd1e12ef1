"""End to end: the real ``train.py`` and ``eval.py`` on tiny data, in subprocesses, as a user runs them."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from helpers.city import CITY
from helpers.runs import eval_overrides, logged_metrics, run_cli, tiny_overrides


@pytest.mark.slow
def test_train_cli_fits_validates_tests_and_checkpoints(release_dir, tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli("train.py", *tiny_overrides(release_dir, run_dir))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert "backbone" in (run_dir / "config.yaml").read_text()
    metrics = logged_metrics(run_dir)
    for key in ("train/loss", "val/R@1", "val/R@5", "val/L@50", "val/full/R@1", "val/R@1_best", "test/R@1"):
        assert key in metrics, f"{key} not logged: {sorted(metrics)}"
    checkpoint = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)
    assert checkpoint["config"]["city"]["name"] == CITY
    assert checkpoint["hyper_parameters"]["backbone"]["model_name"] == "cvg-tiny"
    trained = json.loads((run_dir / "metrics.json").read_text())
    assert trained["all"]["R@1"] == metrics["test/R@1"]

    # The same checkpoint through eval.py gives the numbers logged at the end of training.
    eval_dir = tmp_path / "eval"
    result = run_cli("eval.py", *eval_overrides(release_dir, eval_dir, f"ckpt_path={run_dir}/checkpoints/best.ckpt"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    evaluated = json.loads((eval_dir / "metrics.json").read_text())
    for group in ("all", "panorama", "single"):
        for key, value in trained[group].items():
            assert evaluated[group][key] == pytest.approx(value, abs=1e-9), (group, key)
    assert evaluated["run"]["checkpoint"].endswith("best.ckpt") and evaluated["protocol"] == "nearest100"
    assert "R@1" in result.stdout and "panorama" in result.stdout
    with open(eval_dir / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == evaluated["all"]["count"]
    assert {"query", "caption", "top1", "top1_score", "top1_distance_m", "top5", "correct"} <= set(rows[0])
    assert sum(int(row["correct"]) for row in rows) == round(evaluated["all"]["R@1"] * len(rows) / 100)
    from PIL import Image

    with Image.open(eval_dir / "examples.png") as picture:
        assert picture.width > 600


@pytest.mark.slow
def test_eval_zero_shot_on_the_whole_gallery(release_dir, tmp_path):
    result = run_cli("eval.py", *eval_overrides(release_dir, tmp_path / "eval", "protocol=full", "split=val"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["protocol"] == "full" and metrics["run"]["split"] == "val"
    assert metrics["all"] == metrics["full_city"]["all"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "write, problem",
    [
        (None, "does not exist"),
        (b"not a checkpoint", "is not a PyTorch checkpoint"),
        (b"\xff\xd8\xff\xe0 a JPEG", "is not a PyTorch checkpoint"),
    ],
)
def test_eval_refuses_bad_checkpoints_with_one_message(release_dir, tmp_path, write, problem):
    path = tmp_path / "model.ckpt"
    if write is not None:
        path.write_bytes(write)
    result = run_cli("eval.py", *eval_overrides(release_dir, tmp_path / "eval", f"ckpt_path={path}"))
    assert result.returncode == 1
    assert problem in result.stderr and str(path) in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.slow
def test_eval_refuses_a_checkpoint_of_another_backbone(release_dir, tmp_path):
    path = tmp_path / "vit.ckpt"
    torch.save(
        {"state_dict": {}, "hyper_parameters": {"backbone": {"name": "vit_b16", "model_name": "ViT-B-16"}}}, path
    )
    result = run_cli("eval.py", *eval_overrides(release_dir, tmp_path / "eval", f"ckpt_path={path}"))
    assert result.returncode == 1
    assert "backbone.model_name=ViT-B-16" in result.stderr and "add backbone=vit_b16" in result.stderr


@pytest.mark.slow
def test_bad_data_stops_with_one_message_and_no_traceback(release_dir, tmp_path):
    (release_dir / "annotation" / CITY / "train.json").write_text('{"no_coordinates.jpg": "a caption"}')
    result = run_cli("train.py", *tiny_overrides(release_dir, tmp_path / "run"))
    assert result.returncode == 1
    assert "error: annotation file" in result.stderr and "no_coordinates.jpg" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.slow
def test_the_paper_recipe_runs_end_to_end_with_the_tiny_backbone(release_dir, tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli("train.py", *tiny_overrides(release_dir, run_dir, "experiment=crosstext2loc", "backbone=tiny"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    config = (run_dir / "config.yaml").read_text()
    for setting in ("context_length: 300", "negatives: local", "precision: 16-mixed", "_target_: torch.optim.Adam"):
        assert setting in config, setting
    checkpoint = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)
    assert checkpoint["state_dict"]["model.positional_embedding"].shape[0] == 300
