"""A model and its city's gallery index, loaded once: descriptions in, ranked places out.

The query tool (``locate``) asks a :class:`Locator` once for a batch of descriptions; the web page
(``app``) asks it for each description typed. Each description is embedded with the text tower
and searched in the gallery index of the city (built once per weights and gallery, see
``search/gallery.py``); its top-k tiles come with their coordinates (from the file names) and
their distance from the best one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from cvgtext.commands.queries import check_options
from cvgtext.model.build import build_module
from cvgtext.model.family import scores_pairs
from cvgtext.reports.locations import Candidate, Location
from cvgtext.rerank import Query, Reranker, rerank
from cvgtext.rerank.build import build_reranker
from cvgtext.retrieval.geo import haversine_km
from cvgtext.search.backends import SearchIndex
from cvgtext.search.gallery import (
    GalleryIndex,
    Tile,
    config_index_key,
    embed_captions,
    embed_tiles,
    gallery_tiles,
    load_or_build_index,
)
from cvgtext.utils.errors import ConfigError

if TYPE_CHECKING:
    from PIL import Image

    from cvgtext.model.relevance import Explanation

log = logging.getLogger(__name__)


def build_gallery_index(
    cfg: DictConfig, module: Any, backbone: dict[str, Any], split: str
) -> tuple[GalleryIndex, list[Tile]]:
    """The gallery index of ``split`` for the configured city and weights (reused or built and
    stored), and its tiles."""
    datamodule = instantiate(cfg.data, preprocess=module.preprocess, tokenizer=module.tokenizer)
    tiles = gallery_tiles(datamodule, split)
    key = config_index_key(cfg, backbone, module.preprocess, split, tiles)

    def embed(tiles):
        return embed_tiles(
            module.model,
            module.preprocess,
            tiles,
            cfg.data.eval_batch_size,
            cfg.data.num_workers,
            cfg.get("device", "cpu"),
        )

    return load_or_build_index(cfg.paths.get("cache_dir"), key, tiles, embed), tiles


def metres_from_first(lat: torch.Tensor, lon: torch.Tensor) -> list[float]:
    """Each place's distance in metres from the first (the best candidate)."""
    return (haversine_km(lat[:1], lon[:1], lat, lon) * 1000).tolist()


def rank_locations(
    queries: Sequence[str],
    query_emb: torch.Tensor,
    gallery: GalleryIndex,
    search: SearchIndex,
    top_k: int,
    paths: dict[str, Path] | None = None,
) -> list[Location]:
    """Each query's top-k tiles, with their distance from its best one in metres."""
    scores, indices = search.search(query_emb, top_k)
    locations = []
    for query, row_scores, row in zip(queries, scores.tolist(), indices.tolist()):
        found = [(score, i) for score, i in zip(row_scores, row) if i >= 0]
        if not found:
            locations.append(Location(query, []))
            continue
        at = torch.tensor([i for _, i in found])
        distance_m = metres_from_first(gallery.lat[at], gallery.lon[at])
        candidates = [
            Candidate(
                rank=rank,
                file=gallery.names[i],
                lat=float(gallery.lat[i]),
                lon=float(gallery.lon[i]),
                score=float(score),
                distance_m=distance,
                path=(paths or {}).get(gallery.names[i]),
            )
            for rank, ((score, i), distance) in enumerate(zip(found, distance_m), start=1)
        ]
        locations.append(Location(query, candidates))
    return locations


class Locator:
    """A model and its city's gallery index, loaded once: descriptions in, ranked places out.

    ``locate.py`` asks it once for a batch of descriptions; the web page (``app.py``) asks it
    for each description typed, and for the relevance of the tiles it shows.
    """

    def __init__(self, cfg: DictConfig):
        self.split = cfg.get("split", "all")
        self.top_k = check_options(self.split, cfg.get("top_k", 5), cfg.get("index", "exact"))
        self.device = cfg.get("device", "cpu")
        self.batch_size = cfg.data.eval_batch_size
        self.start_block = (cfg.get("explain") or {}).get("start_block", 0)
        if cfg.get("seed") is not None:
            L.seed_everything(cfg.seed, workers=True)
        self.module, backbone = build_module(cfg)
        if scores_pairs(self.module.model):
            raise ConfigError(
                f"backbone={backbone.get('name')} scores (description, tile) pairs, one forward pass each, and has "
                "no tile embeddings to search a city with; the query tool and the page need a dual encoder (CLIP, "
                "SigLIP, BLIP); evaluate it with eval.py"
            )
        self.gallery, tiles = build_gallery_index(cfg, self.module, backbone, self.split)
        self.paths = {tile.name: tile.path for tile in tiles}
        started = time.perf_counter()
        self.search = SearchIndex(cfg.get("index", "exact"), self.gallery.embeddings)
        self.index_ms = 1000 * (time.perf_counter() - started)
        self.reranker = build_reranker(cfg, self.module)

    def locate(self, queries: Sequence[str], top_k: int | None = None) -> list[Location]:
        """Each description's top-k tiles (``top_k`` or the configured number)."""
        started = time.perf_counter()
        query_emb = embed_captions(self.module.model, self.module.tokenizer, queries, self.batch_size, self.device)
        encoded = time.perf_counter()
        locations = rank_locations(queries, query_emb, self.gallery, self.search, top_k or self.top_k, self.paths)
        searched = time.perf_counter()
        log.info(
            "%d queries against %d tiles (index=%s%s): index %.1f ms, text encoding %.1f ms, search %.1f ms",
            len(queries),
            len(self.gallery.names),
            self.search.name,
            ", approximate" if self.search.approximate else "",
            self.index_ms,
            1000 * (encoded - started),
            1000 * (searched - encoded),
        )
        if self.reranker is not None:
            rerank_locations(self.reranker, locations)
            log.info("Re-ranked by %s in %.1f s", self.reranker.name, time.perf_counter() - searched)
        return locations

    def explanation_refusal(self) -> str | None:
        """Why this model's relevance cannot be drawn; None when it can."""
        from cvgtext.model.relevance import refusal

        return refusal(self.module)

    def explain(self, location: Location, candidates: int = 1) -> list[tuple[Explanation, Image.Image]]:
        """The description explained with each of its first ``candidates`` tiles (one batch)."""
        from cvgtext.reports.explanations import explain_caption

        paths = [c.path for c in location.candidates[:candidates] if c.path is not None]
        return explain_caption(
            self.module, location.query, paths, self.module.preprocess, self.module.tokenizer, self.start_block
        )


def rerank_locations(reranker: Reranker, locations: Sequence[Location]) -> None:
    """Re-order each location's candidates by the re-ranker's judgement; note its reasons."""
    asked = [
        Query(location.query, [c.path for c in location.candidates], [c.score for c in location.candidates])
        for location in locations
    ]
    for location, result in zip(locations, rerank(reranker, asked, reranker.weight)):
        candidates = location.candidates
        for position, candidate in enumerate(candidates):
            candidate.dual_rank = position + 1
            if position < len(result.judged):
                candidate.value, candidate.reason = result.judged[position].value, result.judged[position].reason
        location.candidates = [candidates[old] for old in result.order]
        location.reranking = result.status
        if location.candidates:
            distance_m = metres_from_first(
                torch.tensor([c.lat for c in location.candidates], dtype=torch.float64),
                torch.tensor([c.lon for c in location.candidates], dtype=torch.float64),
            )
            for rank, (candidate, distance) in enumerate(zip(location.candidates, distance_m), start=1):
                candidate.rank, candidate.distance_m = rank, distance
