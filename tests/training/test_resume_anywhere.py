"""A run stopped at any moment and resumed from what is on disk ends as the uninterrupted run.

The property is checked over data shapes and options that change where the training loader
is when a checkpoint is written: a dropped last batch, one batch per epoch, checkpoints every
step with gradient accumulation and a batch limit, loader workers that load ahead, geographic
batches. Each run is stopped in its second epoch at every moment that leaves a different
state on disk, then resumed with ``resume=auto``; weights, optimizer state, the test metrics
and the validation history must be bitwise those of a run that was never stopped. Stopping
raises from a callback, which Lightning lets through without writing anything: what is on
disk is what a kill at that moment leaves (the SIGKILL cases are in ``test_resume.py``).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning as L
import pytest
import torch

from cvgtext.commands.train import train
from helpers.city import CITY, write_release
from helpers.runs import compose_config


class Killed(Exception):
    """Raised by :class:`StopAt` in place of a kill."""


MOMENTS = {
    # moment: the hook that stops the run, in the second epoch (or in the final test)
    "mid_epoch": "on_train_batch_end",
    "after_step_checkpoint": "on_train_batch_start",
    "before_validation": "on_validation_start",
    "during_validation": "on_validation_batch_end",
    "after_epoch_checkpoint": "on_train_epoch_start",
    "during_test": "on_test_batch_end",
}


class StopAt(L.Callback):
    """Raise :class:`Killed` at ``moment`` of the second epoch (or of the final test).

    Lightning calls checkpoint callbacks after all others in each hook, so a stop at the end of
    a batch comes before that batch's checkpoint, and one at the start of the next batch after it.
    """

    def __init__(self, moment: str):
        self.moment = moment

    def _stop(self, trainer: L.Trainer, hook: str, batch_idx: int = 0) -> None:
        if MOMENTS[self.moment] != hook:
            return
        if hook == "on_test_batch_end":
            raise Killed(self.moment)
        if trainer.sanity_checking or trainer.current_epoch != 1:
            return
        if hook == "on_train_batch_start" and batch_idx != 1 and trainer.num_training_batches > 1:
            return
        raise Killed(self.moment)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._stop(trainer, "on_train_batch_end", batch_idx)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        # With one batch an epoch, the start of the next epoch's batch comes after the step checkpoint.
        if trainer.num_training_batches > 1 or trainer.current_epoch == 1:
            self._stop(trainer, "on_train_batch_start", batch_idx)

    def on_validation_start(self, trainer, pl_module):
        self._stop(trainer, "on_validation_start")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._stop(trainer, "on_validation_batch_end", batch_idx)

    def on_train_epoch_start(self, trainer, pl_module):
        self._stop(trainer, "on_train_epoch_start")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._stop(trainer, "on_test_batch_end", batch_idx)


SETTINGS = {
    # The city has 26 training pairs. Batches of 8: an epoch takes 3 and drops 2 pairs; a
    # checkpoint every optimizer step of 2 accumulated batches; workers loading ahead.
    "steps_accumulated_workers": [
        "data.batch_size=8",
        "callbacks.last_checkpoint.every_n_train_steps=1",
        "trainer.accumulate_grad_batches=2",
        "data.num_workers=2",
    ],
    "one_batch_an_epoch": ["data.batch_size=16"],
    "limited_batches": [
        "data.batch_size=4",
        "callbacks.last_checkpoint.every_n_train_steps=2",
        "++trainer.limit_train_batches=3",
    ],
    "epoch_checkpoints_workers": ["data.batch_size=8", "data.num_workers=2"],
    "geo_batches": ["data.batch_size=8", "data.sampler=geo", "callbacks.last_checkpoint.every_n_train_steps=1"],
    # the city's shards (packed by city_dir), streamed by two workers shuffling within windows
    "shards_steps_workers": [
        "data.batch_size=8",
        "data.format=shards",
        "data.shuffle_window=5",
        "data.num_workers=2",
        "callbacks.last_checkpoint.every_n_train_steps=1",
    ],
}
# make test runs the first setting; make test-slow all of them.
CASES = [
    pytest.param(setting, marks=[pytest.mark.slow] + ([pytest.mark.heavy] if i else []))
    for i, setting in enumerate(SETTINGS)
]


def overrides(data_dir: Path, run_dir: Path, setting: str, *extra: str) -> list[str]:
    return [
        "city=Brisbane",
        f"city.name={CITY}",
        f"paths.data_dir={data_dir}",
        f"paths.output_dir={run_dir}",
        "backbone.model_name=cvg-test",
        "trainer=cpu",
        "trainer.max_epochs=2",
        "++trainer.num_sanity_val_steps=0",
        "++trainer.log_every_n_steps=1",
        "++trainer.enable_progress_bar=false",
        "++trainer.enable_model_summary=false",
        "logger=csv",
        "data.val_fraction=0.3",
        "data.num_workers=0",
        "data.eval_batch_size=4",
        "~callbacks.rich_progress_bar",
        "~callbacks.model_summary",
        "resume=auto",
        "seed=11",
        *SETTINGS[setting],
        *extra,
    ]


def run(data_dir: Path, run_dir: Path, setting: str, *extra: str) -> None:
    train(compose_config("train", overrides(data_dir, run_dir, setting, *extra), run_dir.parent))


def validation_history(run_dir: Path) -> dict[tuple[str, int], str]:
    """The last value logged for each (validation metric, step): rows repeated after a resume count once."""
    history = {}
    for metrics_file in sorted(run_dir.glob("csv/*/metrics.csv")):
        with open(metrics_file) as handle:
            for row in csv.DictReader(handle):
                for key, value in row.items():
                    if key.startswith("val/") and value:
                        history[key, int(row["step"])] = value
    return history


def outcome(run_dir: Path) -> dict:
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    return {
        "global_step": last["global_step"],
        "weights": last["state_dict"],
        "optimizer": last["optimizer_states"],
        "test": json.loads((run_dir / "metrics.json").read_text())["all"],
        "validation": validation_history(run_dir),
    }


def assert_same(resumed: dict, reference: dict, label: str) -> None:
    assert resumed["global_step"] == reference["global_step"], label
    for key, value in reference["weights"].items():
        assert torch.equal(resumed["weights"][key], value), f"{label}: weights {key}"
    for got, want in zip(resumed["optimizer"], reference["optimizer"]):
        for index, state in want["state"].items():
            for name, value in state.items():
                assert torch.equal(got["state"][index][name], value), f"{label}: optimizer {index} {name}"
    assert resumed["test"] == reference["test"], label
    assert resumed["validation"] == reference["validation"], label


@pytest.fixture(scope="module")
def city_dir(tmp_path_factory, test_backbone) -> Path:
    from cvgtext.commands.pack import pack

    folder = tmp_path_factory.mktemp("anywhere")
    data_dir = write_release(folder / "data", panoramas=40, photos=12)
    # into data.shards's default folder, in packs of 7
    pack(
        compose_config(
            "pack",
            [
                "city=Brisbane",
                f"city.name={CITY}",
                f"paths.data_dir={data_dir}",
                "data.val_fraction=0.3",
                "samples_per_shard=7",
            ],
            folder,
        )
    )
    return data_dir


@pytest.mark.parametrize("setting", CASES)
def test_a_run_stopped_at_any_moment_resumes_to_the_same_end(city_dir, tmp_path, setting):
    run(city_dir, tmp_path / "reference", setting)
    reference = outcome(tmp_path / "reference")
    for moment in MOMENTS:
        run_dir = tmp_path / moment
        kill = [f"+callbacks.stop._target_={__name__}.StopAt", f"+callbacks.stop.moment={moment}"]
        with pytest.raises(Killed):
            run(city_dir, run_dir, setting, *kill)
        assert (run_dir / "checkpoints" / "last.ckpt").is_file(), f"{moment}: nothing to resume from"
        run(city_dir, run_dir, setting)
        assert_same(outcome(run_dir), reference, f"{setting}, stopped {moment}")


def test_a_fit_that_takes_no_step_never_reports_success(city_dir, tmp_path):
    from cvgtext.utils.errors import TrainingError

    run_dir = tmp_path / "nothing"
    with pytest.raises(TrainingError, match=r"without one optimizer step \(trainer.global_step=0\)"):
        run(city_dir, run_dir, "one_batch_an_epoch", "++trainer.limit_train_batches=0")
    assert not (run_dir / "metrics.json").exists()
