"""Training: seed, build everything from the config, fit, then test the best checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from cvgtext.atomic import atomic_write
from cvgtext.callbacks import RandomStateInCheckpoint, RunInCheckpoint
from cvgtext.cli import in_multirun
from cvgtext.errors import ConfigError, TrainingError
from cvgtext.explanations import report_explanations
from cvgtext.reports import metrics_table, write_reports
from cvgtext.resume import continue_run, find_resume

log = logging.getLogger(__name__)


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a config group that maps names to ``_target_`` configs."""
    if not group:
        return []
    return [instantiate(entry) for entry in group.values() if isinstance(entry, DictConfig) and "_target_" in entry]


def finish_wandb(loggers: list[Any]) -> None:
    """Close the W&B run even when training failed, so sweeps start each job with a fresh run."""
    if any(type(logger).__name__ == "WandbLogger" for logger in loggers):
        import wandb

        wandb.finish()


def run_summary(cfg: DictConfig, backbone: dict[str, Any], split: str) -> dict[str, Any]:
    """What an evaluation was of, for metrics.json."""
    return {
        "city": cfg.city.name,
        "img": cfg.img.name,
        "text": cfg.text.name,
        "split": split,
        "protocol": cfg.protocol.name,
        "backbone": backbone.get("model_name"),
        "pretrained": backbone.get("pretrained"),
        "context_length": backbone.get("context_length"),
        "checkpoint": cfg.get("ckpt_path"),
    }


def check_launch(trainer: L.Trainer) -> None:
    """Refuse what Lightning cannot launch: its own DDP processes inside a Hydra sweep.

    Lightning starts the other ranks by re-running the command line with the run directory of a
    single run; inside a ``-m`` sweep each of them would start the whole sweep again.
    """
    if in_multirun() and isinstance(trainer.strategy.launcher, _SubprocessScriptLauncher):
        raise ConfigError(
            "strategy=ddp cannot start its processes inside a sweep (-m): run the jobs one by one, "
            "or start every rank with torchrun or SLURM and a fixed hydra.sweep.dir"
        )


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the model of ``cfg`` on its city, test the best checkpoint, return the logged metrics."""
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    resume = find_resume(cfg)
    if resume is not None:
        log.info("Resuming from %s", resume.path)
        continue_run(cfg, resume)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    # Every rank shares the run directory; the first writes what describes the run.
    if rank_zero_only.rank == 0:
        with atomic_write(output_dir / "config.yaml") as stream:
            stream.write(OmegaConf.to_yaml(resolved))

    log.info("Building the %s backbone", cfg.backbone.model_name)
    model = instantiate(cfg.model)
    datamodule = instantiate(cfg.data, preprocess=model.preprocess, tokenizer=model.tokenizer)
    callbacks = instantiate_group(cfg.get("callbacks")) + [RunInCheckpoint(resolved), RandomStateInCheckpoint()]
    loggers = instantiate_group(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    check_launch(trainer)
    for logger in loggers:
        logger.log_hyperparams(resolved)

    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=resume.path if resume else None, weights_only=True)
        if trainer.global_step == 0 and not trainer.interrupted:
            raise TrainingError(
                "training ended without one optimizer step (trainer.global_step=0): check trainer.max_epochs, "
                "trainer.max_steps and trainer.limit_train_batches; nothing was validated, tested or reported"
            )
        metrics = {key: float(value) for key, value in trainer.callback_metrics.items()}
        checkpoint = trainer.checkpoint_callback
        best = checkpoint.best_model_path if isinstance(checkpoint, ModelCheckpoint) else ""
        if not best:
            log.warning("No best checkpoint was saved: evaluating the weights at the end of training")
        # The best checkpoint's validation figures: what model selection saw.
        trainer.validate(model, datamodule=datamodule, ckpt_path=best or None, weights_only=True, verbose=False)
        if trainer.is_global_zero:
            print(metrics_table(model.last_evaluation["val"].metrics, "Validation, best checkpoint (percent / km)"))
            if model.skipped_images:
                print(
                    f"{len(model.skipped_images)} training images could not be decoded and were left out "
                    f"(data.on_bad_image=skip); {cfg.task_name}.log names them"
                )
        if cfg.get("test"):
            trainer.test(model, datamodule=datamodule, ckpt_path=best or None, weights_only=True, verbose=False)
            metrics.update({key: float(value) for key, value in trainer.callback_metrics.items()})
            if trainer.is_global_zero:
                summary = {**run_summary(cfg, resolved["backbone"], "test"), "checkpoint": best or None}
                evaluation, dataset = model.last_evaluation["test"], datamodule.dataset("test")
                write_reports(output_dir, evaluation, dataset, summary, loggers,
                              explanations=report_explanations(cfg, model, evaluation, dataset))
    finally:
        finish_wandb(loggers)
    return metrics
