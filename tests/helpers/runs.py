"""Running the project as a user does: composed configs, the real CLI in a subprocess, the query tool in-process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from helpers.city import CITY

ROOT = Path(__file__).resolve().parents[2]


CONF_DIR = ROOT / "conf"


def compose_config(config_name: str, overrides: list[str], tmp_path: Path):
    """Compose a config of ``conf/`` as the CLI would, with outputs under ``tmp_path``."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose(
            config_name,
            overrides=[f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path}/run", *overrides],
        )


def run_cli(
    script: str, *overrides: str, cwd: Path = ROOT, env: dict | None = None, preexec_fn: Callable | None = None
) -> subprocess.CompletedProcess:
    """Run ``script`` (``train.py``, ``eval.py``, ``locate.py``) with Hydra ``overrides``, offline."""
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", **(env or {})}
    environment.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, str(ROOT / script), *overrides],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=preexec_fn,
    )


def tiny_overrides(data_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    """A short ``train.py`` run on the tiny city in ``data_dir``, written to ``run_dir``."""
    return [
        "city=Brisbane",
        f"city.name={CITY}",
        f"paths.data_dir={data_dir}",
        f"paths.log_dir={run_dir.parent}",
        f"hydra.run.dir={run_dir}",
        "trainer=cpu",
        "debug=fast",
        "logger=csv",
        "data.val_fraction=0.3",
        "data.batch_size=8",
        *extra,
    ]


def eval_overrides(data_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    """An ``eval.py`` run on the tiny city in ``data_dir``, written to ``run_dir``."""
    return [
        "city=Brisbane",
        f"city.name={CITY}",
        f"paths.data_dir={data_dir}",
        f"paths.log_dir={run_dir.parent}",
        f"hydra.run.dir={run_dir}",
        "trainer=cpu",
        "data.val_fraction=0.3",
        "data.num_workers=0",
        *extra,
    ]


DDP = ("strategy=ddp", "trainer.devices=2", "trainer.accelerator=cpu")


def ddp_overrides(data_dir: Path, log_dir: Path, *extra: str) -> list[str]:
    """A short ``train.py`` run on two CPU processes (gloo)."""
    # No hydra.run.dir: the dated default must be the one folder both ranks write to.
    return [
        "city=Brisbane",
        f"city.name={CITY}",
        f"paths.data_dir={data_dir}",
        f"paths.log_dir={log_dir}",
        "trainer=cpu",
        "debug=fast",
        "logger=csv",
        "data.val_fraction=0.3",
        "data.batch_size=8",
        *DDP,
        *extra,
    ]


def logged_metrics(run_dir: Path) -> dict[str, float]:
    """The last value of every metric of a run's CSV log."""
    import csv

    (metrics_file,) = run_dir.glob("csv/*/metrics.csv")
    values: dict[str, float] = {}
    with open(metrics_file) as handle:
        for row in csv.DictReader(handle):
            values.update({key: float(value) for key, value in row.items() if value not in ("", None)})
    return values


def locate_overrides(data_dir: Path, *extra: str) -> list[str]:
    """``locate.py`` (or ``eval.py``) on the tiny city in ``data_dir``, on the CPU."""
    return [
        "city=Brisbane",
        f"city.name={CITY}",
        f"paths.data_dir={data_dir}",
        "trainer=cpu",
        "data.val_fraction=0.3",
        "data.num_workers=0",
        *extra,
    ]


def run_locate(tmp_path: Path, data_dir: Path, *extra: str, stdin: str | None = None):
    """``locate(cfg)`` in this process, its cache and outputs under ``tmp_path``."""
    import io

    from cvgtext.commands.locate import locate

    cfg = compose_config("locate", [f"paths.cache_dir={tmp_path}/cache", *locate_overrides(data_dir, *extra)], tmp_path)
    return locate(cfg, stdin=io.StringIO(stdin) if stdin is not None else None)
