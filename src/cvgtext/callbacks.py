"""Callbacks of the project's own; the rest come from Lightning through the ``callbacks`` group."""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger


class LastCheckpoint(ModelCheckpoint):
    """Write ``last.ckpt`` after every validation, and every ``every_n_train_steps`` steps if not 0.

    Lightning's ``save_last`` writes ``last.ckpt`` only when a best checkpoint is saved, and it
    will not combine epoch and step intervals in one callback; resuming needs the newest state
    either way. Steps that end an epoch are left out: Lightning resumes a checkpoint saved after
    an epoch's last batch, but before its validation, as a finished epoch, and that validation
    would never run. The checkpoint written after validation covers that moment instead.
    """

    def __init__(self, dirpath: str, every_n_train_steps: int = 0, **kwargs: Any):
        if every_n_train_steps < 0:
            raise ValueError(f"every_n_train_steps must be 0 or more, got {every_n_train_steps}")
        super().__init__(
            dirpath=dirpath, filename="last", monitor=None, save_top_k=1, every_n_epochs=1,
            enable_version_counter=False, **kwargs,
        )
        self.step_interval = every_n_train_steps

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any) -> None:
        if (
            self.step_interval < 1
            or trainer.global_step % self.step_interval
            or trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
            or self._should_skip_saving_checkpoint(trainer)
        ):
            return
        self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))


class RunInCheckpoint(L.Callback):
    """Store what a checkpoint came from: the resolved configuration and the W&B run id.

    A checkpoint then says how it was made (backbone, context length, city, recipe), and a run
    resumed from it logs to the same W&B run.
    """

    def __init__(self, config: dict[str, Any]):
        self.config = config

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint["config"] = self.config
        wandb = [logger.version for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        checkpoint["loggers"] = {"wandb": wandb[0]} if wandb and wandb[0] else {}


class RandomStateInCheckpoint(L.Callback):
    """Save the random generators' states in checkpoints and restore them on resume.

    A resumed run then draws the same random numbers an uninterrupted run would have drawn
    from the saved step on (dropout, augmentation in the main process). States are the first
    process's; under DDP every rank restores them, as every rank was seeded alike. Stored as
    tensors and plain containers so that checkpoints load with ``weights_only=True``.
    """

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
        checkpoint["random_state"] = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian),
            "python": random.getstate(),
        }

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        state = checkpoint.get("random_state")
        if not state:
            return
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        kind, keys, position, has_gauss, cached_gaussian = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
        version, internal, gauss_next = state["python"]
        random.setstate((version, tuple(internal), gauss_next))
