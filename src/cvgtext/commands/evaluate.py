"""Evaluation: a checkpoint, or a backbone's pretrained weights, on one split of one city.

With ``calibration.enabled`` the validation split is evaluated too (or its stored calibration
read), to fit the temperature that gives every evaluated query its confidence and area.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from cvgtext.commands.calibrate import calibration_enabled, split_calibration, split_confidence, split_pairs
from cvgtext.model.build import build_module
from cvgtext.model.family import scores_pairs
from cvgtext.reports.calibration import CalibrationReport, calibration_metrics
from cvgtext.reports.explanations import report_explanations, write_explanations
from cvgtext.reports.results import run_summary, write_reports
from cvgtext.rerank.build import build_reranker
from cvgtext.rerank.compare import rerank_split
from cvgtext.retrieval.split import Evaluation, flatten_metrics
from cvgtext.search.gallery import config_index_key, find_index, gallery_tiles, store_index
from cvgtext.utils.errors import ConfigError
from cvgtext.utils.instantiate import instantiate_group
from cvgtext.utils.library_messages import start_lightning
from cvgtext.utils.loggers import finish_wandb

log = logging.getLogger(__name__)

SPLITS = ("val", "test")


def data_of(cfg: DictConfig, module: Any, **arguments: Any) -> Any:
    """The configured datamodule, reading with the module's preprocessing and tokenizer."""
    return instantiate(cfg.data, preprocess=module.preprocess, tokenizer=module.tokenizer, **arguments)


class SplitRuns:
    """Each split evaluated at most once, its gallery's embeddings taken from the gallery index
    under ``paths.cache_dir`` where one is current (then only the captions are embedded), and
    stored there after it was embedded."""

    def __init__(self, cfg: DictConfig, module: Any, backbone: dict[str, Any], trainer: L.Trainer, splits: list[str]):
        self.cfg, self.module, self.trainer = cfg, module, trainer
        pair_scorer = scores_pairs(module.model)
        # A pair scorer reads each tile itself when it scores its pairs: the loaders read the captions.
        datamodule = data_of(cfg, module, **({"known_gallery": dict.fromkeys(splits)} if pair_scorer else {}))
        # One process: several would each read (or generate) the city before Lightning syncs them.
        # (Shards: the index's fingerprint would read every tile file; a stream embeds the gallery.)
        indexable = trainer.world_size == 1 and datamodule.format == "folders" and not pair_scorer
        self.cache_dir = cfg.paths.get("cache_dir") if indexable else None
        self.indexes: dict[str, tuple[dict[str, Any], list[Any], Any]] = {}
        if self.cache_dir is not None:
            # The splits are read and checked once, here, and the loaders use them.
            datamodule.source.prepare()
            datamodule.pairs = datamodule.source.splits()
            for split in splits:
                tiles = gallery_tiles(datamodule, split)
                key = config_index_key(cfg, backbone, module.preprocess, split, tiles, datamodule.decode)
                self.indexes[split] = (key, tiles, find_index(self.cache_dir, key, tiles))
            known = {split: stored for split, (_, _, stored) in self.indexes.items() if stored is not None}
            if known:
                # The galleries' embeddings are known: only the captions are read and embedded.
                pairs, datamodule = datamodule.pairs, data_of(cfg, module, known_gallery=known)
                datamodule.pairs = pairs
        self.datamodule = datamodule
        self.done: dict[str, Evaluation] = {}

    def reused(self, split: str) -> bool:
        return split in self.indexes and self.indexes[split][2] is not None

    def run(self, split: str) -> Evaluation:
        if split not in self.done:
            if split == "test":
                self.trainer.test(self.module, datamodule=self.datamodule)
            else:
                self.trainer.validate(self.module, datamodule=self.datamodule)
            evaluation = self.module.last_evaluation[split]
            if split in self.indexes and not self.reused(split) and self.trainer.is_global_zero:
                key, tiles, _ = self.indexes[split]
                dataset = self.datamodule.dataset(split)
                if [dataset.pairs[i].name for i in evaluation.gallery_index] == [tile.name for tile in tiles]:
                    store_index(self.cache_dir, key, tiles, evaluation.gallery)
            self.done[split] = evaluation
        return self.done[split]


def calibrate_split(cfg: DictConfig, runs: SplitRuns, split: str, evaluation: Evaluation) -> CalibrationReport:
    """The evaluated split's calibrated confidence, from a calibration fitted on the validation split."""
    settings = cfg.calibration
    key = runs.indexes["val"][0] if "val" in runs.indexes else None
    pairs = split_pairs(runs.datamodule, "val")
    calibration, reused = split_calibration(cfg, key, pairs, lambda: runs.run("val"))
    if split == "val":
        log.info("The calibration is reported on the split it was fitted on (split=val): its figures are in-sample")
    answers = split_confidence(evaluation, calibration, settings.area, settings.within_m)
    return CalibrationReport(
        calibration=calibration,
        reused=reused,
        split=split,
        probability=float(settings.area),
        within_m=float(settings.within_m),
        answers=answers,
        correct=evaluation.ranking.hits(1),
        correct_within=evaluation.ranking.top1_error_km <= settings.within_m / 1000,
        bins=int(settings.bins),
    )


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Evaluate ``cfg.ckpt_path`` (or zero-shot weights) on ``cfg.split``; write the reports."""
    split = cfg.get("split", "test")
    if split not in SPLITS:
        raise ConfigError(f"split={split!r} is not one of {', '.join(SPLITS)}")
    start_lightning()
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    module, backbone = build_module(cfg)
    reranker = build_reranker(cfg, module)  # its settings checked before the split is embedded
    loggers = instantiate_group(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=[])
    calibrate = calibration_enabled(cfg)
    if calibrate and scores_pairs(module.model):
        log.info(
            "No calibrated confidence: backbone=%s scores pairs and has no gallery to spread it over",
            backbone.get("name"),
        )
        calibrate = False
    try:
        runs = SplitRuns(cfg, module, backbone, trainer, sorted({split, "val"} if calibrate else {split}))
        if calibrate and split != "val":
            runs.run("val")  # before the evaluated split, so that its metrics are the last logged
        evaluation = runs.run(split)
        metrics = {key: float(value) for key, value in trainer.callback_metrics.items() if key.startswith(f"{split}/")}
        if trainer.is_global_zero:
            dataset = runs.datamodule.dataset(split)
            calibration = calibrate_split(cfg, runs, split, evaluation) if calibrate else None
            if calibration is not None:
                figures = calibration_metrics(calibration)
                metrics.update(figures)
                for logger in loggers:
                    logger.log_metrics(figures)
            reranking = None
            if reranker is not None:
                reranking = rerank_split(
                    evaluation, dataset, reranker, reranker.weight, reranker.max_queries, cfg.get("seed") or 0
                )
                reranked = flatten_metrics(reranking.metrics["with"], f"{split}/reranked")
                metrics.update(reranked)
                for logger in loggers:
                    logger.log_metrics(reranked)
                    logger.save()
            explain = cfg.get("explain") or {}
            start_block = explain.get("start_block", 0)
            write_reports(
                Path(cfg.paths.output_dir),
                evaluation,
                dataset,
                {
                    **run_summary(cfg, backbone, split),
                    "search": "exact",
                    "gallery_index": "reused" if runs.reused(split) else "embedded",
                },
                loggers,
                explanations=report_explanations(cfg, module, evaluation, dataset),
                reranking=reranking,
                confidence=evaluation.intervals(cfg.eval.bootstrap, cfg.get("seed") or 0, cfg.eval.level),
                calibration=calibration,
            )
            if explain.get("enabled"):
                write_explanations(
                    cfg.paths.output_dir,
                    module,
                    evaluation,
                    dataset,
                    max_queries=explain.get("max_queries", 16),
                    start_block=start_block,
                )
    finally:
        finish_wandb(loggers)
    return metrics
