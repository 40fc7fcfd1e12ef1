"""Continuing an interrupted training run from its checkpoint.

``ckpt_path=PATH`` resumes from a checkpoint file, ``ckpt_path=last`` from this run folder's
``checkpoints/last.ckpt``, and ``resume=auto`` from that file when it exists (and starts afresh
when it does not), so that a pre-empted job can be submitted again unchanged. A checkpoint that
lies in the ``checkpoints/`` folder of a run continues that run: its folder receives the new
checkpoints, logs and reports, the best score so far is kept, and the W&B run goes on under the
same id.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from cvgtext.model.encoder import resolve_quick_gelu
from cvgtext.utils.checkpoints import check_backbone, read_checkpoint
from cvgtext.utils.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

RESUME_MODES = ("auto",)
# What a Lightning checkpoint must hold to continue training, not only to load weights.
TRAINING_STATE = ("state_dict", "optimizer_states", "loops")
# Backbone settings that decide the shapes of the weights, besides the model itself (checked by
# check_backbone): a resumed run must keep them.
ARCHITECTURE_KEYS = ("context_length", "image_size", "image_aspect")


@dataclass(frozen=True)
class Resume:
    """The checkpoint a run continues from, and what it says about the run."""

    path: Path
    run_dir: Path | None  # the run folder holding the checkpoint, when it lies in one
    wandb_id: str | None  # the W&B run the checkpoint was logged to


def last_checkpoint(output_dir: str | Path) -> Path:
    """Where a run folder keeps its newest checkpoint."""
    return Path(output_dir) / "checkpoints" / "last.ckpt"


def find_resume(cfg: DictConfig) -> Resume | None:
    """The checkpoint named by ``cfg.ckpt_path`` / ``cfg.resume``, checked; ``None`` to start afresh."""
    ckpt_path, mode = cfg.get("ckpt_path"), cfg.get("resume")
    if mode is not None and mode not in RESUME_MODES:
        raise ConfigError(f"resume={mode!r} is not one of: {', '.join(RESUME_MODES)} (or null)")
    if ckpt_path and mode:
        raise ConfigError("ckpt_path and resume=auto both name a checkpoint to resume from: set only one")
    last = last_checkpoint(cfg.paths.output_dir)
    if ckpt_path == "last":
        if not last.is_file():
            raise CheckpointError(
                f"ckpt_path=last: this run folder has no {last}; set run_id=<the run's folder name> to "
                "continue that run, or ckpt_path=<path to a .ckpt file>"
            )
        path = last
    elif ckpt_path:
        path = Path(ckpt_path)
    elif mode == "auto" and last.is_file():
        path = last
    else:
        if mode == "auto":
            log.info("resume=auto: %s does not exist yet, starting a new run", last)
        return None
    checkpoint = read_checkpoint(path, mmap=True)
    check_resumable(checkpoint, cfg, path)
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else None
    if run_dir is not None and not (run_dir / "config.yaml").is_file():
        run_dir = None
    wandb_id = checkpoint.get("loggers", {}).get("wandb")
    return Resume(path=path.resolve(), run_dir=run_dir.resolve() if run_dir else None, wandb_id=wandb_id)


def check_resumable(checkpoint: dict[str, Any], cfg: DictConfig, path: Path) -> None:
    """Refuse a checkpoint that holds no training state or was made with another architecture."""
    missing = [key for key in TRAINING_STATE if key not in checkpoint]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} cannot resume training: it has no {', '.join(missing)} (it is not a "
            f"training checkpoint of this project); to start from its weights, set backbone.pretrained={path}"
        )
    saved = checkpoint.get("hyper_parameters", {}).get("backbone") or {}
    check_backbone(saved, cfg.backbone.model_name, path)
    changed = [
        f"backbone.{key}={saved[key]} (this run: {cfg.backbone.get(key)})"
        for key in ARCHITECTURE_KEYS
        if key in saved and saved[key] != cfg.backbone.get(key)
    ]
    if saved:
        # The checkpoint records the activation resolved when training started; one that does
        # not was built with what its model name alone gives.
        backbone = cfg.backbone
        quick = resolve_quick_gelu(backbone.model_name, backbone.get("pretrained"), backbone.get("quick_gelu"))
        saved_quick = saved.get("quick_gelu", resolve_quick_gelu(backbone.model_name, None, None))
        if bool(saved_quick) != quick:
            changed.append(f"backbone.quick_gelu={str(bool(saved_quick)).lower()} (this run: {str(quick).lower()})")
    changed += recipe_changes(checkpoint.get("hyper_parameters", {}), cfg)
    if changed:
        longer = ""
        saved_epochs = (checkpoint.get("config") or {}).get("trainer", {}).get("max_epochs")
        if saved_epochs is not None and saved_epochs != cfg.trainer.get("max_epochs"):
            longer = (
                f"; trainer.max_epochs={saved_epochs} set the length of its learning-rate schedule: to train "
                f"on under a new schedule, start a new run from its weights with backbone.pretrained={path}"
            )
        raise CheckpointError(
            f"checkpoint {path} was trained with {', '.join(changed)}: resume with the settings it was trained "
            f"with{longer}"
        )


RECIPE = {"optimizer": "optim.optimizer", "scheduler": "optim.scheduler"}


def recipe_changes(hyper_parameters: dict[str, Any], cfg: DictConfig) -> list[str]:
    """The optimizer and scheduler settings of this run that differ from the checkpoint's. A
    resumed run restores their state, which would silently win over the new values (a longer
    ``trainer.max_epochs`` would train its extra epochs at the end of the old cosine schedule,
    at a learning rate of about 0)."""
    changes = []
    for key, name in RECIPE.items():
        saved, now = hyper_parameters.get(key), (cfg.get("model") or {}).get(key)
        if not isinstance(saved, dict) or now is None:
            continue
        now = OmegaConf.to_container(now, resolve=True) if OmegaConf.is_config(now) else dict(now)
        changes += [
            f"{name}.{field}={saved.get(field)} (this run: {now.get(field)})"
            for field in sorted(set(saved) | set(now))
            if saved.get(field) != now.get(field)
        ]
    return changes


def continue_run(cfg: DictConfig, resume: Resume) -> None:
    """Point the run's outputs and W&B run at those of the run being resumed."""
    with open_dict(cfg):
        if resume.run_dir is not None and resume.run_dir != Path(cfg.paths.output_dir).resolve():
            log.info("Continuing the run in %s", resume.run_dir)
            cfg.paths.output_dir = str(resume.run_dir)
            log_to(resume.run_dir / f"{cfg.task_name}.log")
        wandb = (cfg.get("logger") or {}).get("wandb")
        if resume.wandb_id and wandb is not None:
            wandb.id = resume.wandb_id
            wandb.resume = "allow"


def log_to(path: Path) -> None:
    """Also append this process's log to ``path``, formatted as the log Hydra writes."""
    root = logging.getLogger()
    handler = logging.FileHandler(path, mode="a")
    files = [existing for existing in root.handlers if isinstance(existing, logging.FileHandler)]
    if files and files[0].formatter is not None:
        handler.setFormatter(files[0].formatter)
    root.addHandler(handler)
