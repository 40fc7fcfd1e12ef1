"""Data parallelism through the real CLI: two CPU processes (gloo) sharing one run directory."""

from __future__ import annotations

import json

import pytest

from helpers.runs import ddp_overrides, eval_overrides, run_cli


@pytest.mark.heavy  # about 40 s: make test-slow
def test_ddp_on_two_cpu_processes_writes_one_run_whose_metrics_match_one_device(release_dir, tmp_path):
    log_dir = tmp_path / "outputs"
    # One pair per evaluation batch on each rank and in eval.py: embeddings computed in batches of
    # another size may differ in the last bit and flip near-ties of a barely trained model.
    one_by_one = ("data.eval_batch_size=2", "trainer.limit_val_batches=1.0", "trainer.limit_test_batches=1.0")
    result = run_cli("train.py", *ddp_overrides(release_dir, log_dir, *one_by_one))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # Both ranks wrote into the one dated run folder, and nothing else appeared.
    assert [path.name for path in log_dir.iterdir()] == ["train"]
    assert [path.name for path in (log_dir / "train").iterdir()] == ["runs"]
    (run_dir,) = (log_dir / "train" / "runs").iterdir()
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    assert len(list(run_dir.glob("csv/*/metrics.csv"))) == 1
    trained = json.loads((run_dir / "metrics.json").read_text())

    # The test split has an odd number of pairs, so the 2-rank sampler repeats one: it must be
    # counted once, and the same checkpoint evaluated on one device gives the same figures.
    eval_dir = tmp_path / "eval"
    result = run_cli(
        "eval.py",
        *eval_overrides(release_dir, eval_dir, f"ckpt_path={run_dir}/checkpoints/best.ckpt", "data.eval_batch_size=1"),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    evaluated = json.loads((eval_dir / "metrics.json").read_text())
    assert trained["all"]["count"] % 2 == 1
    for group in ("all", "panorama", "single"):
        assert evaluated[group] == pytest.approx(trained[group], abs=1e-9), group
        assert evaluated["full_city"][group] == pytest.approx(trained["full_city"][group], abs=1e-9), group


@pytest.mark.heavy  # starts 2 processes: make test-slow
def test_a_global_batch_that_does_not_divide_by_the_devices_stops_with_one_message(release_dir, tmp_path):
    result = run_cli("train.py", *ddp_overrides(release_dir, tmp_path / "outputs", "data.batch_size=7"))
    assert result.returncode == 1
    assert "data.batch_size=7 is the global batch size and must divide by the number of devices (2)" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.slow
def test_ddp_processes_cannot_be_started_inside_a_sweep(release_dir, tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = run_cli(
        "train.py", "-m", f"hydra.sweep.dir={sweep_dir}", *ddp_overrides(release_dir, tmp_path / "outputs")
    )
    assert result.returncode == 1
    assert "strategy=ddp cannot start its processes inside a sweep" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
