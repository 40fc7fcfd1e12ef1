"""The configured re-ranker (``reranker`` group), built for a loaded model."""

from __future__ import annotations

import logging
from typing import Any

from hydra.utils import get_class, instantiate

from cvgtext.rerank import Reranker

log = logging.getLogger(__name__)


def overlay_evidence(module: Any, start_block: int = 0):
    """``(description, tiles) -> overlays``: each tile shaded by its relevance to the description."""
    from cvgtext.reports.explanations import explain_caption
    from cvgtext.reports.overlays import heat_overlay

    def evidence(description, tiles):
        found = explain_caption(module, description, tiles, module.preprocess, module.tokenizer, start_block)
        return [heat_overlay(tile, explanation.image) for explanation, tile in found]

    return evidence


def build_reranker(cfg: Any, module: Any) -> Reranker | None:
    """The re-ranker of ``cfg.reranker``; None for ``reranker=none`` (or no group)."""
    settings = cfg.get("reranker")
    if not settings or settings.get("name", "none") == "none":
        return None
    if getattr(get_class(settings._target_), "uses_model", False):  # scored by the run's own model
        return instantiate(settings, module=module, _convert_="all")
    evidence = None
    if settings.get("overlay"):
        from cvgtext.model.relevance import refusal

        reason = refusal(module)
        if reason is None:
            evidence = overlay_evidence(module, (cfg.get("explain") or {}).get("start_block", 0))
        else:
            log.warning("The re-ranker gets the tiles without relevance overlays: %s", reason)
    return instantiate(
        settings, cache_dir=cfg.paths.get("cache_dir"), view=cfg.img.name, evidence=evidence, _convert_="all"
    )
