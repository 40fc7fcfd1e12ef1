"""The project's callbacks: skipped training images, the run's config and W&B id in checkpoints."""

from __future__ import annotations

import logging
from types import SimpleNamespace

from omegaconf import OmegaConf

from cvgtext.training.callbacks import RunInCheckpoint, SkippedImages


def test_each_skipped_image_is_warned_about_once(caplog):
    callback = SkippedImages()
    with caplog.at_level(logging.WARNING, logger="cvgtext.training.callbacks"):
        callback.on_train_batch_start(None, None, {"skipped": ["image a.jpg cannot be decoded"]}, 0)
        callback.on_train_batch_start(
            None, None, {"skipped": ["image a.jpg cannot be decoded", "image b.jpg cannot be decoded"]}, 1
        )
        callback.on_train_batch_start(None, None, {"skipped": []}, 2)
    warned = [
        record.getMessage().split(";")[0] for record in caplog.records if record.name == "cvgtext.training.callbacks"
    ]
    assert warned == ["image a.jpg cannot be decoded", "image b.jpg cannot be decoded"]
    assert callback.messages == {"image a.jpg cannot be decoded", "image b.jpg cannot be decoded"}


def test_skipped_images_outlive_a_resume_and_a_reload_of_the_best_checkpoint():
    before = SkippedImages()
    before.on_train_batch_start(None, None, {"skipped": ["image a.jpg cannot be decoded"]}, 0)
    state = before.state_dict()
    resumed = SkippedImages()
    resumed.load_state_dict(state)
    assert resumed.messages == {"image a.jpg cannot be decoded"}
    # Loading an earlier (best) checkpoint after fitting keeps what was skipped since.
    before.on_train_batch_start(None, None, {"skipped": ["image b.jpg cannot be decoded"]}, 1)
    before.load_state_dict(state)
    assert len(before.messages) == 2


def test_checkpoints_carry_the_run_config_file_and_the_wandb_id(tmp_path):
    config_file = tmp_path / "config.yaml"
    config_file.write_text(OmegaConf.to_yaml({"city": {"name": "Testville"}, "optim": {"lr": 1e-5}}))
    callback = RunInCheckpoint(config_file)
    trainer = SimpleNamespace(loggers=[])
    checkpoint: dict = {}
    callback.setup(trainer, None, "fit")
    callback.on_save_checkpoint(trainer, None, checkpoint)
    assert checkpoint == {"config": {"city": {"name": "Testville"}, "optim": {"lr": 1e-5}}, "loggers": {}}
