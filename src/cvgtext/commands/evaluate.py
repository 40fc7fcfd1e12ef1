"""Evaluation: a checkpoint, or a backbone's pretrained weights, on one split of one city."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from cvgtext.model.build import build_module
from cvgtext.model.family import scores_pairs
from cvgtext.reports.explanations import report_explanations, write_explanations
from cvgtext.reports.results import run_summary, write_reports
from cvgtext.rerank.build import build_reranker
from cvgtext.rerank.compare import rerank_split
from cvgtext.retrieval.split import flatten_metrics
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
    datamodule = data_of(cfg, module)
    loggers = instantiate_group(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=[])
    try:
        # One process: several would each read (or generate) the city before Lightning syncs them.
        # (Shards: the index's fingerprint would read every tile file; a stream embeds the gallery.)
        indexable = trainer.world_size == 1 and datamodule.format == "folders" and not scores_pairs(module.model)
        cache_dir = cfg.paths.get("cache_dir") if indexable else None
        stored = None
        if scores_pairs(module.model):
            # The model reads each tile itself when it scores its pairs: the loader reads the captions.
            datamodule = data_of(cfg, module, known_gallery={split: None})
        if cache_dir is not None:
            # The splits are read and checked once, here, and the loaders use them.
            datamodule.source.prepare()
            datamodule.pairs = datamodule.source.splits()
            tiles = gallery_tiles(datamodule, split)
            index_key = config_index_key(cfg, backbone, module.preprocess, split, tiles, datamodule.decode)
            stored = find_index(cache_dir, index_key, tiles)
            if stored is not None:
                # The gallery's embeddings are known: only the captions are read and embedded.
                pairs, datamodule = datamodule.pairs, data_of(cfg, module, known_gallery={split: stored})
                datamodule.pairs = pairs
        if split == "test":
            trainer.test(module, datamodule=datamodule)
        else:
            trainer.validate(module, datamodule=datamodule)
        metrics = {key: float(value) for key, value in trainer.callback_metrics.items()}
        evaluation = module.last_evaluation[split]
        if cache_dir is not None and stored is None and trainer.is_global_zero:
            dataset = datamodule.dataset(split)
            if [dataset.pairs[i].name for i in evaluation.gallery_index] == [tile.name for tile in tiles]:
                store_index(cache_dir, index_key, tiles, evaluation.gallery)
        if trainer.is_global_zero:
            dataset = datamodule.dataset(split)
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
                    "gallery_index": "reused" if stored is not None else "embedded",
                },
                loggers,
                explanations=report_explanations(cfg, module, evaluation, dataset),
                reranking=reranking,
                confidence=evaluation.intervals(cfg.eval.bootstrap, cfg.get("seed") or 0, cfg.eval.level),
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
