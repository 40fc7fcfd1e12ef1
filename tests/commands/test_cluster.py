"""Beyond one machine: submitit sweeps (SLURM, or local processes) and several nodes via torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cvgtext.commands.cli import CheckLauncher, launcher_problem, lightning_devices
from helpers.city import CITY, repaint_tiles
from helpers.runs import CONF_DIR, ROOT, run_cli
from helpers.web import free_port


def sweep_overrides(data_dir: Path, log_dir: Path, *extra: str) -> list[str]:
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
        "data.num_workers=0",
        *extra,
    ]


def test_launcher_tasks_must_match_the_devices():
    assert launcher_problem(local=False, tasks=4, nodes=2, devices=4, num_nodes=2) is None
    assert "tasks_per_node=2 must equal trainer.devices=4" in launcher_problem(False, 2, 1, 4, 1)
    assert "trainer.devices=auto" in launcher_problem(False, 1, 1, "auto", 1)
    assert "hydra.launcher.nodes=1 must equal trainer.num_nodes=2" in launcher_problem(False, 4, 1, 4, 2)
    assert launcher_problem(local=True, tasks=1, nodes=1, devices=1, num_nodes=1) is None
    assert "submitit_local runs one process per job" in launcher_problem(True, 2, 1, 2, 1)


@pytest.mark.parametrize("accelerator", ["auto", "cpu"])
@pytest.mark.parametrize("devices", ["auto", 1, 2, "2"])
def test_devices_are_counted_as_the_trainer_counts_them(accelerator, devices):
    import lightning as L

    trainer = L.Trainer(
        accelerator=accelerator, devices=devices, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    assert lightning_devices(accelerator, devices) == trainer.num_devices


def launcher_check(*overrides: str) -> None:
    """CheckLauncher on train.py's sweep config with ``overrides``, as Hydra calls it before a sweep."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        config = compose("train", overrides=list(overrides), return_hydra_config=True)
    CheckLauncher().on_multirun_start(config)


def test_submitit_local_takes_devices_auto_where_lightning_uses_one_device(capsys):
    if torch.cuda.device_count() > 1:
        pytest.skip("on this machine Lightning would use every GPU for trainer.devices=auto")
    launcher_check("hydra/launcher=submitit_local", "trainer.devices=auto")  # the plugin's own name
    launcher_check("hydra/launcher=submitit_local", "trainer=cpu")
    with pytest.raises(SystemExit):
        launcher_check("hydra/launcher=submitit_local", "trainer.accelerator=cpu", "trainer.devices=2")
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: hydra/launcher=submitit_local runs one process per job") and "got 2" in message


@pytest.mark.slow
def test_a_mismatched_submitit_sweep_stops_before_submitting(release_dir, tmp_path):
    log_dir = tmp_path / "outputs"
    result = run_cli(
        "train.py",
        "-m",
        "cluster=slurm",
        "sweep_id=mismatch",
        "hydra.launcher.tasks_per_node=2",
        "seed=1,2",
        *sweep_overrides(release_dir, log_dir),
    )
    assert result.returncode == 1
    assert "error: hydra.launcher.tasks_per_node=2 must equal trainer.devices=4" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not list(log_dir.rglob(".submitit"))  # nothing was submitted


@pytest.mark.heavy
def test_a_sweep_through_submitit_local_runs_each_job_in_its_own_folder(release_dir, tmp_path):
    log_dir = tmp_path / "outputs"
    result = run_cli(
        "train.py", "-m", "cluster=local", "sweep_id=two", "seed=1,2", *sweep_overrides(release_dir, log_dir)
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    sweep = log_dir / "train" / "multiruns" / "two"
    for job, seed in (("0", 1), ("1", 2)):
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert metrics["all"]["count"] > 0
        assert (sweep / job / "checkpoints" / "last.ckpt").is_file()
        assert f"seed: {seed}" in (sweep / job / "config.yaml").read_text()
    assert list((sweep / ".submitit").iterdir())  # the jobs went through submitit


def run_ranks(commands: list[list[str]], environments: list[dict]) -> list[str]:
    """Start the processes of several "nodes" at once; wait for all; their outputs."""
    processes = [
        subprocess.Popen(
            command, cwd=ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for command, environment in zip(commands, environments)
    ]
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    assert [process.returncode for process in processes] == [0] * len(processes), "\n".join(
        output[-3000:] for output in outputs
    )
    return outputs


def assert_same_run(run_dir: Path, reference_dir: Path) -> None:
    assert [path.name for path in run_dir.parent.iterdir()] == [run_dir.name]  # one run folder
    expected = json.loads((reference_dir / "metrics.json").read_text())
    got = json.loads((run_dir / "metrics.json").read_text())
    for group in ("all", "panorama", "single"):
        assert got[group] == pytest.approx(expected[group], abs=1e-9), group
    weights, reference = (
        torch.load(folder / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
        for folder in (run_dir, reference_dir)
    )
    assert weights.keys() == reference.keys()
    for key in weights:
        difference = (weights[key].float() - reference[key].float()).abs().max().item()
        assert difference < 1e-4, (key, difference)


@pytest.mark.heavy
def test_two_nodes_through_torchrun_or_slurm_match_two_processes_on_one_node(release_dir, tmp_path):
    # Gradients reduced across nodes may differ from one node's in the last bit, which Adam can
    # grow for parameters of near-zero gradient (5e-6 here, against a learning rate of 2.5e-4),
    # so no two tiles may tie (the fixture's panorama and photo tiles are identical).
    repaint_tiles(release_dir)
    # One pair per evaluation batch: embeddings of other batch sizes may differ in the last bit.
    common = (
        "strategy=ddp",
        "trainer.accelerator=cpu",
        "data.eval_batch_size=2",
        "trainer.limit_val_batches=1.0",
        "trainer.limit_test_batches=1.0",
    )
    one_node = tmp_path / "one_node"
    result = run_cli("train.py", *sweep_overrides(release_dir, one_node, *common, "trainer.devices=2", "run_id=ddp"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    two_nodes = ("trainer.devices=1", "trainer.num_nodes=2", "run_id=ddp")

    # torchrun's rendezvous on 127.0.0.1, one process per "node"
    torchrun, port = tmp_path / "torchrun", free_port()
    run_ranks(
        [
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                "--nproc_per_node=1",
                f"--node_rank={rank}",
                "--master_addr=127.0.0.1",
                f"--master_port={port}",
                str(ROOT / "train.py"),
                *sweep_overrides(release_dir, torchrun, *common, *two_nodes),
            ]
            for rank in (0, 1)
        ],
        [environment, environment],
    )
    assert_same_run(torchrun / "train" / "runs" / "ddp", one_node / "train" / "runs" / "ddp")

    # what srun sets for 2 nodes x 1 task, read by cluster=slurm's environment (no requeue by Lightning)
    slurm, port = tmp_path / "slurm", free_port()
    slurm_plugin = (
        "+plugins.slurm_environment._target_=lightning.pytorch.plugins.environments.SLURMEnvironment",
        "+plugins.slurm_environment.auto_requeue=false",
    )
    run_ranks(
        [
            [
                sys.executable,
                str(ROOT / "train.py"),
                *sweep_overrides(release_dir, slurm, *common, *two_nodes, *slurm_plugin),
            ]
        ]
        * 2,
        [
            {
                **environment,
                "SLURM_NTASKS": "2",
                "SLURM_NTASKS_PER_NODE": "1",
                "SLURM_NNODES": "2",
                "SLURM_PROCID": str(rank),
                "SLURM_LOCALID": "0",
                "SLURM_NODEID": str(rank),
                "SLURM_NODELIST": "127.0.0.1",
                "SLURM_JOB_ID": "4242",
                "SLURM_JOB_NAME": "train",
                "MASTER_PORT": str(port),
            }
            for rank in (0, 1)
        ],
    )
    assert_same_run(slurm / "train" / "runs" / "ddp", one_node / "train" / "runs" / "ddp")
