"""Training: seed, build everything from the config, fit, then test the best checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from cvgtext.commands.cli import in_multirun
from cvgtext.reports.explanations import report_explanations
from cvgtext.reports.results import run_summary, write_reports
from cvgtext.reports.tables import metrics_table
from cvgtext.training.callbacks import LastCheckpoint, SkippedImages
from cvgtext.training.resume import continue_run, find_resume
from cvgtext.utils.atomic import atomic_write
from cvgtext.utils.errors import ConfigError, TrainingError
from cvgtext.utils.instantiate import instantiate_group
from cvgtext.utils.library_messages import start_lightning, weights_loaded_by_cvgtext
from cvgtext.utils.loggers import finish_wandb

log = logging.getLogger(__name__)


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


def best_checkpoint(trainer: L.Trainer) -> str:
    """The path of the best checkpoint: the ModelCheckpoint that monitors a metric (not last.ckpt's)."""
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and not isinstance(callback, LastCheckpoint) and callback.monitor:
            return callback.best_model_path
    return ""


def skipped_images(trainer: L.Trainer, datamodule: Any) -> int:
    """Training images left out as undecodable: found before training (``data.verify_images``)
    plus met while loading batches."""
    met = {
        message
        for callback in trainer.callbacks
        if isinstance(callback, SkippedImages)
        for message in callback.messages
    }
    return len(getattr(datamodule, "left_out", ())) + len(met)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the model of ``cfg`` on its city, test the best checkpoint, return the logged metrics."""
    start_lightning()
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
    with weights_loaded_by_cvgtext(resume is not None):  # a resumed run's weights come from its checkpoint
        model = instantiate(cfg.model)
    datamodule = instantiate(cfg.data, preprocess=model.preprocess, tokenizer=model.tokenizer)
    callbacks = instantiate_group(cfg.get("callbacks"))
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
        best = best_checkpoint(trainer)
        if not best:
            log.warning("No best checkpoint was saved: evaluating the weights at the end of training")
        # The best checkpoint's validation figures: what model selection saw.
        trainer.validate(model, datamodule=datamodule, ckpt_path=best or None, weights_only=True, verbose=False)
        if trainer.is_global_zero:
            print(metrics_table(model.last_evaluation["val"].metrics, "Validation, best checkpoint (percent / km)"))
            skipped = skipped_images(trainer, datamodule)
            if skipped:
                print(
                    f"{skipped} training images could not be decoded and were left out "
                    f"(data.on_bad_image=skip); {cfg.task_name}.log names them"
                )
        if cfg.get("test"):
            trainer.test(model, datamodule=datamodule, ckpt_path=best or None, weights_only=True, verbose=False)
            metrics.update({key: float(value) for key, value in trainer.callback_metrics.items()})
            if trainer.is_global_zero:
                summary = {**run_summary(cfg, resolved["backbone"], "test"), "checkpoint": best or None}
                evaluation, dataset = model.last_evaluation["test"], datamodule.dataset("test")
                # Sharded parameters (FSDP) cannot run one rank's backward pass alone.
                sharded = isinstance(trainer.strategy, FSDPStrategy)
                explanations = {} if sharded else report_explanations(cfg, model, evaluation, dataset)
                confidence = evaluation.intervals(cfg.eval.bootstrap, cfg.get("seed") or 0, cfg.eval.level)
                write_reports(
                    output_dir, evaluation, dataset, summary, loggers, explanations=explanations, confidence=confidence
                )
    finally:
        finish_wandb(loggers)
    return metrics
