"""Callbacks of the project's own; the rest come from Lightning through the ``callbacks`` group."""

from __future__ import annotations

from typing import Any

import lightning as L


class ConfigInCheckpoint(L.Callback):
    """Store the run's resolved configuration in every checkpoint, under ``"config"``.

    A checkpoint then says how it was made: backbone, context length, city and recipe.
    """

    def __init__(self, config: dict[str, Any]):
        self.config = config

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint["config"] = self.config
