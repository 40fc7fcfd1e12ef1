"""The calibrations the commands use, fitted on the validation split and stored beside the gallery index.

- The query tool and the page (:func:`gallery_calibration`): the validation captions rank the
  gallery the tool searches (the whole city by default), so the temperature is fitted for that
  gallery's size and its confusable tiles. Validation tiles the gallery lacks (``split=train``
  or ``test``) are added to it for the fit, from their own gallery index.
- ``eval.py`` (:func:`split_calibration`): the validation captions rank the validation tiles
  under the evaluated protocol, as the evaluated split's captions rank its own tiles.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from omegaconf import DictConfig

from cvgtext.retrieval.calibration import (
    Calibration,
    Confidence,
    candidate_scores,
    confidence,
    fit_on_embeddings,
    log_probabilities,
    true_columns,
)
from cvgtext.retrieval.split import Evaluation
from cvgtext.search.calibration_store import calibration_key, load_or_fit, validation_digest
from cvgtext.search.gallery import GalleryIndex, embed_captions

log = logging.getLogger(__name__)


def split_pairs(datamodule: Any, split: str) -> list[Any]:
    """The pairs of one split as the datamodule reads them (without loading any image)."""
    if not datamodule.pairs:
        datamodule.source.prepare()
    pairs = datamodule.pairs or datamodule.source.read_splits()
    return list(pairs[split])


def calibration_enabled(cfg: DictConfig) -> bool:
    return bool((cfg.get("calibration") or {}).get("enabled", False))


def gallery_calibration(
    cfg: DictConfig,
    module: Any,
    datamodule: Any,
    gallery: GalleryIndex,
    validation_gallery: Any = None,
) -> tuple[Calibration, bool]:
    """``(calibration, reused)`` of the searched ``gallery`` (its whole-gallery ranking).

    ``validation_gallery()`` gives the validation split's own gallery index, asked for only when
    the searched gallery lacks some of the validation tiles.
    """
    pairs = split_pairs(datamodule, "val")
    row_of = {name: row for row, name in enumerate(gallery.names)}
    missing = sorted({pair.name for pair in pairs} - set(row_of))
    extra_key = {}
    extra = None
    if missing:
        extra = validation_gallery()
        extra_key = {"added_validation_tiles": extra.key.get("tiles")}
    key = calibration_key(gallery.key, "full", validation_digest(pairs), **extra_key)

    def fit() -> Calibration:
        embeddings = gallery.embeddings
        rows = dict(row_of)
        if extra is not None:
            extra_rows = [i for i, name in enumerate(extra.names) if name not in row_of]
            for offset, i in enumerate(extra_rows):
                rows[extra.names[i]] = len(gallery.names) + offset
            embeddings = torch.cat([embeddings, extra.embeddings[extra_rows]])
            log.info("the validation split's %d tiles not in the gallery are added to it for the fit", len(extra_rows))
        captions = [pair.caption for pair in pairs]
        query_emb = embed_captions(
            module.model, module.tokenizer, captions, cfg.data.eval_batch_size, cfg.get("device", "cpu")
        )
        true_rows = torch.tensor([rows[pair.name] for pair in pairs], dtype=torch.long)
        return fit_on_embeddings(query_emb, embeddings, true_rows)

    return load_or_fit(cfg.paths.get("cache_dir"), key, fit)


def split_calibration(
    cfg: DictConfig, validation_key: dict[str, Any] | None, pairs: list[Any], validate: Any
) -> tuple[Calibration, bool]:
    """``(calibration, reused)`` for ``eval.py``: fitted on ``validate()``'s :class:`Evaluation`
    of the validation split (its captions against its tiles, under the evaluated protocol).
    ``validation_key``: the validation gallery index's key; None stores nothing (no gallery
    index either: several processes, or shards)."""

    def fit() -> Calibration:
        evaluation: Evaluation = validate()
        return fit_evaluation(evaluation)

    if validation_key is None:
        return load_or_fit(None, {}, fit)
    key = calibration_key(validation_key, cfg.protocol.name, validation_digest(pairs))
    return load_or_fit(cfg.paths.get("cache_dir"), key, fit)


def fit_evaluation(evaluation: Evaluation) -> Calibration:
    """The temperature of an evaluated validation split: its captions against its own tiles."""
    if evaluation.queries is None:
        raise ValueError("the evaluation kept no caption embeddings to fit a calibration on")
    return fit_on_embeddings(
        evaluation.queries,
        evaluation.gallery,
        evaluation.true_rows,
        evaluation.query_places,
        evaluation.gallery_places,
        evaluation.nearest,
    )


def split_confidence(
    evaluation: Evaluation, calibration: Calibration, probability: float, within_m: float
) -> Confidence:
    """Each evaluated caption's calibrated confidence and area, against its candidates under the
    evaluation's protocol, with whether its area holds its true tile."""
    parts = []
    candidates = evaluation.gallery.shape[0] if evaluation.nearest is None else evaluation.nearest
    # confidence() holds a few float64 and int64 arrays of a chunk's size: 2^22 entries, 32 MiB each.
    chunk_size = max(1, 2**22 // max(1, candidates))
    for start, stop, scores, columns in candidate_scores(
        evaluation.queries,
        evaluation.gallery,
        evaluation.query_places,
        evaluation.gallery_places,
        evaluation.nearest,
        chunk_size,
    ):
        places = evaluation.gallery_places if columns is None else evaluation.gallery_places[columns]
        true = true_columns(evaluation.true_rows[start:stop], columns)
        parts.append(
            confidence(log_probabilities(scores, calibration.temperature), places, true, probability, within_m)
        )
    return Confidence(*(torch.cat([getattr(part, name) for part in parts]) for name in Confidence.__dataclass_fields__))
