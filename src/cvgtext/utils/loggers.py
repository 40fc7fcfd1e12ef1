"""Experiment loggers built from the ``logger`` config group."""

from __future__ import annotations

import netrc
import os
from typing import Any

from lightning.pytorch.loggers import WandbLogger


def wandb_logged_in() -> bool:
    """Whether W&B credentials are present (an API key in the environment or in ~/.netrc)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        entry = netrc.netrc().authenticators("api.wandb.ai")
        return entry is not None and bool(entry[2])  # an entry without a key is not a login
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_logger(offline: bool | None = None, **kwargs: Any) -> WandbLogger:
    """A WandbLogger that runs offline unless it is asked to go online or the user is logged in.

    ``WANDB_MODE`` in the environment, when set, has the last word, as everywhere with W&B.
    """
    if offline is None:
        offline = not wandb_logged_in()
    return WandbLogger(offline=offline, **kwargs)


def finish_wandb(loggers: list[Any]) -> None:
    """Close the W&B run even when training failed, so sweeps start each job with a fresh run."""
    if any(type(logger).__name__ == "WandbLogger" for logger in loggers):
        import wandb

        wandb.finish()
