"""Sweeps: ``train.py -m`` through the real CLI, one folder per job, a failing job failing alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.city import CITY
from helpers.runs import logged_metrics, run_cli


def sweep_overrides(data_dir: Path, sweep_dir: Path, *extra: str) -> list[str]:
    return [
        "-m",
        "city=Brisbane",
        f"city.name={CITY}",
        f"paths.data_dir={data_dir}",
        f"paths.log_dir={sweep_dir.parent}",
        f"hydra.sweep.dir={sweep_dir}",
        "trainer=cpu",
        "debug=fast",
        "logger=csv",
        "callbacks=none",
        "data.val_fraction=0.3",
        "data.batch_size=8",
        *extra,
    ]


@pytest.mark.slow
def test_multirun_gives_each_job_its_own_folder_and_reports(release_dir, tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = run_cli("train.py", *sweep_overrides(release_dir, sweep_dir, "seed=1,2"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs = sorted(path.name for path in sweep_dir.iterdir() if path.is_dir())
    assert jobs == ["0", "1"]
    seeds, losses = [], []
    for job in jobs:
        # Each job's report holds the figures that job logged (as float32), not another job's.
        metrics = json.loads((sweep_dir / job / "metrics.json").read_text())
        logged = logged_metrics(sweep_dir / job)
        for key in ("R@1", "R@5", "L@50"):
            assert metrics["all"][key] == pytest.approx(logged[f"test/{key}"], abs=1e-4), (job, key)
        losses.append(logged["train/loss"])
        seeds.append(
            next(
                line for line in (sweep_dir / job / "config.yaml").read_text().splitlines() if line.startswith("seed:")
            )
        )
    assert seeds == ["seed: 1", "seed: 2"]
    assert losses[0] != losses[1], "both seeds trained the same model"


@pytest.mark.slow
def test_a_job_with_a_user_error_fails_alone_and_the_sweep_reports_it(release_dir, tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = run_cli("train.py", *sweep_overrides(release_dir, sweep_dir, "backbone.model_name=no-such-model,cvg-tiny"))
    output = result.stdout + result.stderr
    # The sweep went on to the second job, then ended with the failure, in one line.
    assert (sweep_dir / "1" / "metrics.json").is_file(), output[-3000:]
    assert not (sweep_dir / "0" / "metrics.json").exists()
    assert result.returncode == 1
    assert "backbone.model_name='no-such-model' is not an open_clip model" in result.stderr
    assert "backbone.model_name=no-such-model" in result.stderr  # which job failed
    assert "Traceback" not in output
    assert "is not an open_clip model" in (sweep_dir / "0" / "train.log").read_text()
