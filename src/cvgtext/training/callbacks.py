"""Callbacks of the project's own; each is composed, like Lightning's, from ``conf/callbacks/``."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from omegaconf import OmegaConf

log = logging.getLogger(__name__)


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
            dirpath=dirpath,
            filename="last",
            monitor=None,
            save_top_k=1,
            every_n_epochs=1,
            enable_version_counter=False,
            **kwargs,
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
    """Store what a checkpoint came from: the run's resolved configuration and the W&B run id.

    A checkpoint then says how it was made (backbone, context length, city, recipe), and a run
    resumed from it logs to the same W&B run. The configuration is read from ``config_file``, the
    ``config.yaml`` the run writes into its folder before training.
    """

    def __init__(self, config_file: str | Path):
        self.config_file = Path(config_file)
        self._config: dict[str, Any] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and self.config_file.exists():
            self._config = OmegaConf.to_container(OmegaConf.load(self.config_file), resolve=True)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if self._config is not None:
            checkpoint["config"] = self._config
        wandb = [logger.version for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        checkpoint["loggers"] = {"wandb": wandb[0]} if wandb and wandb[0] else {}


class SkippedImages(L.Callback):
    """The training images the loader left out because they cannot be decoded
    (``data.on_bad_image=skip``): each warned about once, counted over every rank, kept across
    resumes (in the checkpoint) and logged as ``train/skipped_images`` at each epoch's end.
    """

    def __init__(self) -> None:
        self.messages: set[str] = set()

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        for message in batch.get("skipped", ()) if isinstance(batch, dict) else ():
            if message not in self.messages:
                self.messages.add(message)
                log.warning("%s; its pair is left out of training (data.on_bad_image=skip)", message)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Each rank loads its own share of the batches: count the images all ranks left out.
        if trainer.world_size > 1 and torch.distributed.is_initialized():
            gathered: list[list[str] | None] = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, sorted(self.messages))
            self.messages.update(*gathered)
        if self.messages:
            # The same count on every rank: synchronising it changes nothing and is what Lightning asks.
            pl_module.log("train/skipped_images", float(len(self.messages)), sync_dist=True)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.messages and trainer.is_global_zero:
            log.warning(
                "%d training images could not be decoded and were left out (data.on_bad_image=skip)",
                len(self.messages),
            )

    def state_dict(self) -> dict[str, Any]:
        return {"messages": sorted(self.messages)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # A union: validating the best checkpoint after fitting must not forget later skips.
        self.messages.update(state_dict.get("messages", ()))


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
