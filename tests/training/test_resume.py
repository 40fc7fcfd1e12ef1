"""Resuming: the data order, random state and run folder come back; a killed run ends as an uninterrupted one."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cvgtext.data.sampler import GeoBatchSampler, SeededBatchSampler
from cvgtext.training.callbacks import RandomStateInCheckpoint
from cvgtext.training.resume import continue_run, find_resume
from cvgtext.utils.errors import CheckpointError, ConfigError
from helpers.city import write_release
from helpers.models import WritesMarker
from helpers.runs import ROOT, compose_config, run_cli, tiny_overrides


def city(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.uniform(-27.5, -27.4, n), rng.uniform(153.0, 153.1, n)], axis=1)


@pytest.mark.parametrize("kind", [SeededBatchSampler, GeoBatchSampler])
def test_an_epoch_is_the_same_for_a_seed_and_differs_between_epochs(kind):
    first, again = kind(None, city(40), 4, seed=7), kind(None, city(40), 4, seed=7)
    assert list(first) == list(again)
    first.set_epoch(1)
    assert list(first) != list(again)
    assert sorted(i for batch in first for i in batch) == sorted(i for batch in again for i in batch)


@pytest.mark.parametrize("kind", [SeededBatchSampler, GeoBatchSampler])
def test_a_loaded_state_continues_the_epoch_where_the_loop_stopped(kind):
    reference = kind(None, city(40), 4, seed=3)
    reference.set_epoch(2)
    epoch = list(reference)
    interrupted = kind(None, city(40), 4, seed=3)
    interrupted.set_epoch(2)
    for _ in zip(range(3), iter(interrupted)):
        interrupted.taken += 1  # as the data module counts the batches the loop takes
    state = interrupted.state_dict()
    assert state == {"seed": 3, "epoch": 2, "batches": 3, "world_size": 1}

    # Two interruptions in the same epoch: the count goes on from where it resumed.
    resumed = kind(None, city(40), 4, seed=3)
    resumed.load_state_dict(state)
    iterator = iter(resumed)
    assert next(iterator) == epoch[3]
    resumed.taken += 1
    again = kind(None, city(40), 4, seed=3)
    again.load_state_dict(resumed.state_dict())
    assert list(again) == epoch[4:]
    assert list(again) == epoch, "after the resumed epoch, iteration starts the epoch over"


def test_a_state_of_another_seed_starts_the_epoch_over(caplog):
    sampler = SeededBatchSampler(None, city(40), 4, seed=1)
    sampler.load_state_dict({"seed": 2, "epoch": 1, "batches": 5, "world_size": 1})
    assert sampler.epoch == 1 and len(list(sampler)) == len(sampler)
    assert "starts over" in caplog.text


def test_random_state_survives_a_weights_only_checkpoint(tmp_path):
    callback = RandomStateInCheckpoint()
    checkpoint: dict = {}
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    callback.on_save_checkpoint(None, None, checkpoint)
    expected = torch.rand(3), np.random.rand(3), random.random()
    torch.save(checkpoint, tmp_path / "state.ckpt")
    callback.on_load_checkpoint(None, None, torch.load(tmp_path / "state.ckpt", weights_only=True))
    drawn = torch.rand(3), np.random.rand(3), random.random()
    assert torch.equal(drawn[0], expected[0]) and np.array_equal(drawn[1], expected[1]) and drawn[2] == expected[2]


def training_checkpoint(path: Path, **backbone) -> Path:
    backbone = {"name": "tiny", "model_name": "cvg-tiny", "context_length": 77, "image_size": None, **backbone}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "state_dict": {},
            "optimizer_states": [],
            "loops": {},
            "hyper_parameters": {"backbone": backbone},
            "loggers": {"wandb": "abc123"},
        },
        path,
    )
    return path


def test_ckpt_path_last_and_resume_auto_look_in_this_run_folder(tmp_path):
    cfg = compose_config("train", ["ckpt_path=last"], tmp_path)
    with pytest.raises(CheckpointError, match=r"ckpt_path=last: this run folder has no .*run/checkpoints/last.ckpt"):
        find_resume(cfg)
    assert find_resume(compose_config("train", ["resume=auto"], tmp_path)) is None
    last = training_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    for override in ("ckpt_path=last", "resume=auto"):
        resume = find_resume(compose_config("train", [override], tmp_path))
        assert resume.path == last.resolve() and resume.wandb_id == "abc123"


def test_a_checkpoint_of_another_run_continues_that_run_and_its_wandb_run(tmp_path):
    other = tmp_path / "outputs" / "train" / "runs" / "earlier"
    (other / "config.yaml").parent.mkdir(parents=True)
    (other / "config.yaml").write_text("seed: 42\n")
    path = training_checkpoint(other / "checkpoints" / "last.ckpt")
    cfg = compose_config("train", [f"ckpt_path={path}"], tmp_path)
    resume = find_resume(cfg)
    continue_run(cfg, resume)
    assert Path(cfg.paths.output_dir) == other.resolve()
    assert cfg.callbacks.model_checkpoint.dirpath == f"{other.resolve()}/checkpoints"
    assert cfg.logger.wandb.id == "abc123" and cfg.logger.wandb.resume == "allow"


@pytest.mark.parametrize(
    "overrides, content, message",
    [
        (["resume=always"], None, "resume='always' is not one of: auto"),
        (["resume=auto", "ckpt_path=x.ckpt"], None, "set only one"),
        ([], {"state_dict": {}}, "cannot resume training: it has no optimizer_states, loops"),
        ([], {"backbone": {"name": "vit_b16", "model_name": "ViT-B-16"}}, "add backbone=vit_b16"),
        ([], {"backbone": {"context_length": 300}}, "backbone.context_length=300 (this run: 77)"),
        ([], {"backbone": {"image_aspect": 2}}, "backbone.image_aspect=2 (this run: 1)"),
        ([], {"backbone": {"quick_gelu": True}}, "backbone.quick_gelu=true (this run: false)"),
    ],
)
def test_what_cannot_be_resumed_is_refused_with_one_message(tmp_path, overrides, content, message):
    path = tmp_path / "model.ckpt"
    if content is not None and "backbone" in content:
        training_checkpoint(path, **content["backbone"])
    elif content is not None:
        torch.save(content, path)
    cfg = compose_config("train", overrides or [f"ckpt_path={path}"], tmp_path)
    with pytest.raises((CheckpointError, ConfigError), match=message.replace("(", r"\(").replace(")", r"\)")):
        find_resume(cfg)


def test_a_changed_schedule_or_optimizer_is_refused_with_the_way_to_train_longer(tmp_path):
    from omegaconf import OmegaConf

    def checkpoint_of(*overrides):
        cfg = compose_config("train", list(overrides), tmp_path)
        path = training_checkpoint(tmp_path / "last.ckpt")
        saved = torch.load(path, weights_only=True)
        saved["hyper_parameters"].update(
            {key: OmegaConf.to_container(cfg.model[key], resolve=True) for key in ("optimizer", "scheduler")}
        )
        saved["config"] = {"trainer": {"max_epochs": cfg.trainer.max_epochs}}
        torch.save(saved, path)
        return path

    path = checkpoint_of("trainer.max_epochs=2")
    assert find_resume(compose_config("train", [f"ckpt_path={path}", "trainer.max_epochs=2"], tmp_path)) is not None
    with pytest.raises(CheckpointError) as refused:
        find_resume(compose_config("train", [f"ckpt_path={path}", "trainer.max_epochs=3"], tmp_path))
    assert str(refused.value) == (
        f"checkpoint {path} was trained with optim.scheduler.T_max=2 (this run: 3): resume with the settings it "
        "was trained with; trainer.max_epochs=2 set the length of its learning-rate schedule: to train on under a "
        f"new schedule, start a new run from its weights with backbone.pretrained={path}"
    )
    with pytest.raises(CheckpointError, match=r"with optim.optimizer.lr=0.00025 \(this run: 0.001\): resume with"):
        find_resume(
            compose_config("train", [f"ckpt_path={path}", "trainer.max_epochs=2", "optim.optimizer.lr=1e-3"], tmp_path)
        )


def test_a_checkpoint_that_does_not_record_its_activation_was_built_with_gelu(tmp_path):
    path = training_checkpoint(tmp_path / "old.ckpt", name="vit_b16", model_name="ViT-B-16")
    cfg = compose_config("train", ["backbone=vit_b16", f"ckpt_path={path}"], tmp_path)
    with pytest.raises(CheckpointError, match=r"backbone.quick_gelu=false \(this run: true\)"):
        find_resume(cfg)


@pytest.mark.slow
@pytest.mark.parametrize("script", ["train.py", "eval.py"])
def test_a_checkpoint_carrying_code_is_refused_and_its_code_never_runs(release_dir, tmp_path, script):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "downloaded.ckpt"
    torch.save({"state_dict": {}, "optimizer_states": [], "loops": {}, "payload": WritesMarker(marker)}, path)
    result = run_cli(script, *tiny_overrides(release_dir, tmp_path / "run", f"ckpt_path={path}"))
    assert result.returncode == 1
    assert f"checkpoint {path} was refused" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not marker.exists()


def last_step(run_dir: Path) -> int:
    """The global step of a run folder's last.ckpt, or -1 while there is none."""
    try:
        return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True, mmap=True)["global_step"]
    except (FileNotFoundError, RuntimeError, EOFError):
        return -1


def resume_overrides(data_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    """A tiny run of three epochs of batches of 2, checkpointed every 2 steps, logged to W&B (offline) and CSV."""
    overrides = [item for item in tiny_overrides(data_dir, run_dir) if item != "debug=fast"]
    return overrides + [
        "trainer.max_epochs=3",
        "data.batch_size=2",
        "data.num_workers=0",
        "callbacks.last_checkpoint.every_n_train_steps=2",
        "logger=wandb",
        "resume=auto",
        "~callbacks.rich_progress_bar",
        "~callbacks.model_summary",
        *extra,
    ]


def wandb_run_ids(run_dir: Path) -> set[str]:
    return {folder.name.rsplit("-", 1)[-1] for folder in (run_dir / "wandb").glob("offline-run-*")}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, Path, dict]:
    """The tiny city, and the folder and last checkpoint of a run that was not interrupted."""
    root = tmp_path_factory.mktemp("resume")
    data_dir = write_release(root / "data")
    run_dir = root / "uninterrupted"
    result = run_cli("train.py", *resume_overrides(data_dir, run_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    return data_dir, run_dir, torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


def kill_when(data_dir: Path, run_dir: Path, ready, *extra: str) -> dict:
    """Start the run, SIGKILL it (all its processes) as soon as ``ready(run_dir)``; return the
    loader position it left."""
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *resume_overrides(data_dir, run_dir, *extra)],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while not ready(run_dir) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    interrupted = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    return interrupted["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]


def assert_same_end(reference: dict, uninterrupted: Path, killed: Path) -> None:
    """The resumed run ended bitwise as the uninterrupted one: weights, Adam, best score, metrics."""
    resumed = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == reference["global_step"]
    for key, value in reference["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], value), key
    for key, value in reference["optimizer_states"][0]["state"].items():
        assert torch.equal(resumed["optimizer_states"][0]["state"][key]["exp_avg"], value["exp_avg"])
    best = [state for name, state in reference["callbacks"].items() if "val/R@1" in name][0]
    resumed_best = [state for name, state in resumed["callbacks"].items() if "val/R@1" in name][0]
    assert resumed_best["best_model_score"] == best["best_model_score"]
    assert resumed["best_metrics"] == reference["best_metrics"]
    test_metrics = [json.loads((run / "metrics.json").read_text())["all"] for run in (uninterrupted, killed)]
    assert test_metrics[0] == test_metrics[1]


@pytest.mark.slow
@pytest.mark.heavy
def test_a_run_killed_mid_epoch_and_resumed_ends_as_the_uninterrupted_run(uninterrupted, tmp_path):
    """SIGKILL in the second of three epochs, then the same command again: same weights, metrics, best, W&B run.

    Tolerance: none. On the CPU the resumed run's weights are bitwise those of the uninterrupted one.
    """
    data_dir, reference_dir, reference = uninterrupted
    steps_per_epoch = reference["global_step"] // 3
    killed = tmp_path / "killed"
    position = kill_when(data_dir, killed, lambda run_dir: last_step(run_dir) > steps_per_epoch)
    assert position["epoch"] == 1 and 0 < position["batches"] < steps_per_epoch, position

    result = run_cli("train.py", *resume_overrides(data_dir, killed))
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_end(reference, reference_dir, killed)
    resumed = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)
    assert len(wandb_run_ids(killed)) == 1 and resumed["loggers"]["wandb"] in wandb_run_ids(killed)
    assert len(list((killed / "wandb").glob("offline-run-*"))) == 2


@pytest.mark.slow
@pytest.mark.heavy
def test_a_run_killed_after_an_epoch_ends_resumes_with_the_next_epoch(uninterrupted, tmp_path):
    """The checkpoint written after the first validation: the next epoch starts, nothing is repeated."""
    data_dir, reference_dir, reference = uninterrupted
    steps_per_epoch = reference["global_step"] // 3
    killed = tmp_path / "killed"

    def first_epoch_done(run_dir: Path) -> bool:
        return (run_dir / "checkpoints" / "best.ckpt").exists() and last_step(run_dir) == steps_per_epoch

    position = kill_when(data_dir, killed, first_epoch_done)
    assert position == {"seed": 42, "epoch": 0, "batches": steps_per_epoch, "world_size": 1}
    result = run_cli("train.py", *resume_overrides(data_dir, killed))
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_end(reference, reference_dir, killed)


@pytest.mark.slow
def test_the_same_seed_gives_the_same_metrics(release_dir, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    for run_dir in (first, second):
        result = run_cli("train.py", *tiny_overrides(release_dir, run_dir))
        assert result.returncode == 0, result.stderr[-3000:]
    assert (first / "metrics.json").read_text().replace(str(first), "") == (
        (second / "metrics.json").read_text().replace(str(second), "")
    )
    assert (first / "predictions.csv").read_text() == (second / "predictions.csv").read_text()


def test_a_state_saved_after_the_last_batch_continues_with_the_next_epoch():
    sampler = SeededBatchSampler(None, city(40), 4, seed=3)
    sampler.load_state_dict({"seed": 3, "epoch": 2, "batches": len(sampler), "world_size": 1})
    reference = SeededBatchSampler(None, city(40), 4, seed=3)
    reference.set_epoch(3)
    assert sampler.epoch == 3 and list(sampler) == list(reference)


def test_last_checkpoint_every_n_steps_leaves_out_the_last_batch_of_an_epoch(monkeypatch):
    """Lightning would resume such a checkpoint as a finished epoch and skip its validation."""
    from types import SimpleNamespace

    from cvgtext.training.callbacks import LastCheckpoint

    saved = []
    monkeypatch.setattr(LastCheckpoint, "_should_skip_saving_checkpoint", lambda self, trainer: False)
    monkeypatch.setattr(LastCheckpoint, "_monitor_candidates", lambda self, trainer: {})
    monkeypatch.setattr(
        LastCheckpoint, "_save_topk_checkpoint", lambda self, trainer, _: saved.append(trainer.global_step)
    )
    callback = LastCheckpoint("checkpoints", every_n_train_steps=2)
    for step, last in [(1, False), (2, False), (3, False), (4, True), (5, False), (6, False)]:
        progress = SimpleNamespace(is_last_batch=last)
        trainer = SimpleNamespace(
            global_step=step, fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress))
        )
        callback.on_train_batch_end(trainer, None, None, None, 0)
    assert saved == [2, 6]


def test_the_trainers_epoch_decides_what_a_restored_loader_draws():
    """Lightning creates the loader's iterator before it sets the epoch; the trainer's count is right then."""
    epoch = 1
    sampler = SeededBatchSampler(None, city(40), 4, seed=3, epoch_now=lambda: epoch)
    reference = SeededBatchSampler(None, city(40), 4, seed=3)
    reference.set_epoch(1)
    # Saved once epoch 0 was done (all its batches, or the 3 a batch limit lets it take).
    for taken in (len(sampler), 3):
        sampler.load_state_dict({"seed": 3, "epoch": 0, "batches": taken, "world_size": 1})
        assert list(sampler) == list(reference)
    # Saved in epoch 1 after 4 batches: the rest of epoch 1, then whole epochs again.
    sampler.load_state_dict({"seed": 3, "epoch": 1, "batches": 4, "world_size": 1})
    assert list(sampler) == list(reference)[4:]
    assert sampler.state_dict()["epoch"] == 1
    epoch = 2
    reference.set_epoch(2)
    assert list(sampler) == list(reference) and sampler.state_dict()["epoch"] == 2


@pytest.mark.slow
@pytest.mark.heavy
@pytest.mark.parametrize(
    "extra",
    [
        pytest.param(["data.num_workers=2", "data.batch_size=4"], id="workers-after-the-epoch-end-checkpoint"),
        pytest.param(["strategy=ddp", "trainer.devices=2", "data.batch_size=4"], id="ddp-2-processes"),
    ],
)
def test_a_run_killed_right_after_its_first_epoch_checkpoint_resumes_to_the_same_end(release_dir, tmp_path, extra):
    """SIGKILL as soon as the checkpoint of the first epoch's end appears, with loader workers
    (which load ahead before Lightning sets the epoch) and with two DDP processes."""
    reference_dir = tmp_path / "uninterrupted"
    result = run_cli("train.py", *resume_overrides(release_dir, reference_dir, *extra))
    assert result.returncode == 0, result.stderr[-3000:]
    reference = torch.load(reference_dir / "checkpoints" / "last.ckpt", weights_only=True)
    steps_per_epoch = reference["global_step"] // 3

    killed = tmp_path / "killed"
    position = kill_when(release_dir, killed, lambda run_dir: last_step(run_dir) == steps_per_epoch, *extra)
    assert position["epoch"] == 0 and position["batches"] == steps_per_epoch, position
    result = run_cli("train.py", *resume_overrides(release_dir, killed, *extra))
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_end(reference, reference_dir, killed)
