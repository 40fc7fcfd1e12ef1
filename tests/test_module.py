"""The module's record of training images left out by ``data.on_bad_image=skip``."""

from __future__ import annotations

import logging

from cvgtext.module import CrossViewRetrieval


def tiny_module() -> CrossViewRetrieval:
    return CrossViewRetrieval(backbone={"model_name": "cvg-tiny"}, optimizer={"_target_": "torch.optim.AdamW"})


def test_each_skipped_image_is_warned_about_once(caplog):
    module = tiny_module()
    with caplog.at_level(logging.WARNING, logger="cvgtext.module"):
        module.on_train_batch_start({"skipped": ["image a.jpg cannot be decoded"]}, 0)
        module.on_train_batch_start({"skipped": ["image a.jpg cannot be decoded", "image b.jpg cannot be decoded"]}, 1)
        module.on_train_batch_start({"skipped": []}, 2)
    warned = [record.getMessage().split(";")[0] for record in caplog.records if record.name == "cvgtext.module"]
    assert warned == [
        "image a.jpg cannot be decoded", "image b.jpg cannot be decoded",
    ]
    assert module.skipped_images == {"image a.jpg cannot be decoded", "image b.jpg cannot be decoded"}


def test_skipped_images_outlive_a_resume_and_a_reload_of_the_best_checkpoint():
    before = tiny_module()
    before.on_train_batch_start({"skipped": ["image a.jpg cannot be decoded"]}, 0)
    checkpoint: dict = {}
    before.on_save_checkpoint(checkpoint)
    resumed = tiny_module()
    resumed.on_load_checkpoint(checkpoint)
    assert resumed.skipped_images == {"image a.jpg cannot be decoded"}
    # Loading an earlier (best) checkpoint after fitting keeps what was skipped since.
    before.on_train_batch_start({"skipped": ["image b.jpg cannot be decoded"]}, 1)
    before.on_load_checkpoint(checkpoint)
    assert len(before.skipped_images) == 2
