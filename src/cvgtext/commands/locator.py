"""A model and its city's gallery index, loaded once: descriptions in, ranked places out.

The query tool (``locate``) asks a :class:`Locator` once for a batch of descriptions; the web page
(``app``) asks it for each description typed. Each description is embedded with the text tower
and searched in the gallery index of the city (built once per weights and gallery, see
``search/gallery.py``); its top-k tiles come with their coordinates (from the file names) and
their distance from the best one. A place described several times is ranked by the sum of its
descriptions' scores over the whole gallery. With a calibration (``commands/calibrate.py``),
each answer also says how likely its top-1 tile is the place, and which area holds the place
with ``calibration.area`` probability.
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

from cvgtext.commands.calibrate import calibration_enabled, gallery_calibration
from cvgtext.commands.queries import check_options
from cvgtext.model.build import build_module
from cvgtext.model.family import scores_pairs
from cvgtext.reports.locations import MAX_AREA_LISTED, Area, AreaPlace, Candidate, Location
from cvgtext.rerank import Query, Reranker, rerank
from cvgtext.rerank.build import build_reranker
from cvgtext.retrieval.calibration import (
    AREA_PROBABILITY,
    WITHIN_M,
    area_members,
    combined_scores,
    confidence,
    log_probabilities,
)
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
    cfg: DictConfig, module: Any, backbone: dict[str, Any], split: str, datamodule: Any = None
) -> tuple[GalleryIndex, list[Tile]]:
    """The gallery index of ``split`` for the configured city and weights (reused or built and
    stored), and its tiles."""
    if datamodule is None:
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
    query_emb: torch.Tensor | None,
    gallery: GalleryIndex,
    search: SearchIndex | None,
    top_k: int,
    paths: dict[str, Path] | None = None,
    found: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> list[Location]:
    """Each query's top-k tiles, with their distance from its best one in metres: searched for
    ``query_emb`` in ``search``, or ``found`` already (``(scores, indices)``, each ``[queries, k]``)."""
    scores, indices = found if found is not None else search.search(query_emb, top_k)
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


Place = str | Sequence[str]  # one description, or several descriptions of the same place


class Locator:
    """A model and its city's gallery index, loaded once: descriptions in, ranked places out.

    ``locate.py`` asks it once for a batch of places; the web page (``app.py``) asks it for each
    description typed (and each further description of the same place), and for the relevance
    of the tiles it shows.
    """

    def __init__(self, cfg: DictConfig):
        self.split = cfg.get("split", "all")
        self.top_k = check_options(self.split, cfg.get("top_k", 5), cfg.get("index", "exact"))
        self.device = cfg.get("device", "cpu")
        self.batch_size = cfg.data.eval_batch_size
        self.start_block = (cfg.get("explain") or {}).get("start_block", 0)
        settings = cfg.get("calibration") or {}
        self.area_probability = float(settings.get("area", AREA_PROBABILITY))
        self.within_m = float(settings.get("within_m", WITHIN_M))
        if cfg.get("seed") is not None:
            L.seed_everything(cfg.seed, workers=True)
        self.module, backbone = build_module(cfg)
        if scores_pairs(self.module.model):
            raise ConfigError(
                f"backbone={backbone.get('name')} scores (description, tile) pairs, one forward pass each, and has "
                "no tile embeddings to search a city with; the query tool and the page need a dual encoder (CLIP, "
                "SigLIP, BLIP); evaluate it with eval.py"
            )
        datamodule = instantiate(cfg.data, preprocess=self.module.preprocess, tokenizer=self.module.tokenizer)
        self.gallery, tiles = build_gallery_index(cfg, self.module, backbone, self.split, datamodule)
        self.paths = {tile.name: tile.path for tile in tiles}
        self.rows = {name: row for row, name in enumerate(self.gallery.names)}
        started = time.perf_counter()
        self.search = SearchIndex(cfg.get("index", "exact"), self.gallery.embeddings)
        self.index_ms = 1000 * (time.perf_counter() - started)
        self.calibration = None
        if calibration_enabled(cfg):
            self.calibration, _ = gallery_calibration(
                cfg,
                self.module,
                datamodule,
                self.gallery,
                lambda: build_gallery_index(cfg, self.module, backbone, "val", datamodule)[0],
            )
        self.reranker = build_reranker(cfg, self.module)

    def embed(self, descriptions: Sequence[str]) -> torch.Tensor:
        """``[descriptions, embed_dim]`` L2-normalised text embeddings."""
        started = time.perf_counter()
        embeddings = embed_captions(
            self.module.model, self.module.tokenizer, descriptions, self.batch_size, self.device
        )
        log.info("%d descriptions embedded in %.1f ms", len(descriptions), 1000 * (time.perf_counter() - started))
        return embeddings

    def locate(self, places: Sequence[Place], top_k: int | None = None) -> list[Location]:
        """Each place's top-k tiles (``top_k`` or the configured number); a place is one
        description or a list of descriptions of it."""
        described = [[place] if isinstance(place, str) else list(place) for place in places]
        embeddings = self.embed([text for descriptions in described for text in descriptions])
        return self.locate_embedded(described, embeddings.split([len(d) for d in described]), top_k)

    def locate_embedded(
        self, described: Sequence[Sequence[str]], embeddings: Sequence[torch.Tensor], top_k: int | None = None
    ) -> list[Location]:
        """:meth:`locate` for descriptions already embedded (``[descriptions, embed_dim]`` per place)."""
        started = time.perf_counter()
        locations = self.rank(described, embeddings, top_k)
        searched = time.perf_counter()
        log.info(
            "%d places against %d tiles (index=%s%s): index %.1f ms, search and confidence %.1f ms",
            len(described),
            len(self.gallery.names),
            self.search.name,
            ", approximate" if self.search.approximate else "",
            self.index_ms,
            1000 * (searched - started),
        )
        if self.reranker is not None:
            rerank_locations(self.reranker, locations)
            log.info("Re-ranked by %s in %.1f s", self.reranker.name, time.perf_counter() - searched)
        return locations

    def rank(
        self, described: Sequence[Sequence[str]], embeddings: Sequence[torch.Tensor], top_k: int | None = None
    ) -> list[Location]:
        """The places' locations from their descriptions' ``embeddings`` (``[descriptions, embed_dim]``
        each): one description through the search index, several by their summed scores."""
        top_k = top_k or self.top_k
        single = [i for i, descriptions in enumerate(described) if len(descriptions) == 1]
        locations: list[Location | None] = [None] * len(described)
        if single:
            query_emb = torch.cat([embeddings[i] for i in single])
            found = rank_locations([described[i][0] for i in single], query_emb, self.gallery, self.search, top_k)
            for i, location in zip(single, found):
                locations[i] = location
        for i, descriptions in enumerate(described):
            if len(descriptions) > 1:
                scores = (embeddings[i] @ self.gallery.embeddings.T).mean(0)  # [tiles] mean cosine
                top = scores.topk(min(top_k, len(scores)))
                [locations[i]] = rank_locations(
                    descriptions[:1], None, self.gallery, None, top_k, found=(top.values[None], top.indices[None])
                )
                locations[i].descriptions = list(descriptions)
        for location, query_emb in zip(locations, embeddings):
            for candidate in location.candidates:
                candidate.path = self.paths.get(candidate.file)
            if self.calibration is not None and location.candidates:
                self.add_confidence(location, query_emb)
        return locations

    def add_confidence(self, location: Location, query_emb: torch.Tensor) -> None:
        """The calibrated confidence and area of a location from its descriptions' embeddings."""
        scores = combined_scores(query_emb @ self.gallery.embeddings.T)  # [tiles]
        log_p = log_probabilities(scores[None], self.calibration.temperature)  # [1, tiles]
        places = torch.stack([self.gallery.lat, self.gallery.lon], 1)
        found = confidence(log_p, places, probability=self.area_probability, within_m=self.within_m)
        location.confidence, location.within = float(found.top1[0]), float(found.within[0])
        location.within_m = self.within_m
        members = area_members(log_p[0], self.area_probability)[:MAX_AREA_LISTED].tolist()
        location.area = Area(
            probability=self.area_probability,
            places=int(found.area_size[0]),
            radius_m=float(found.area_radius_m[0]),
            members=[
                AreaPlace(
                    self.gallery.names[i],
                    float(self.gallery.lat[i]),
                    float(self.gallery.lon[i]),
                    float(log_p[0, i].exp()),
                )
                for i in members
            ],
        )
        for candidate in location.candidates:
            row = self.rows.get(candidate.file)
            candidate.probability = None if row is None else float(log_p[0, row].exp())

    def explanation_refusal(self) -> str | None:
        """Why this model's relevance cannot be drawn; None when it can."""
        from cvgtext.model.relevance import refusal

        return refusal(self.module)

    def explain(self, location: Location, candidates: int = 1) -> list[tuple[Explanation, Image.Image]]:
        """The description explained with each of its first ``candidates`` tiles (one batch).

        A place described several times is explained with its first description."""
        from cvgtext.reports.explanations import explain_caption

        paths = [c.path for c in location.candidates[:candidates] if c.path is not None]
        return explain_caption(
            self.module, location.query, paths, self.module.preprocess, self.module.tokenizer, self.start_block
        )


def rerank_locations(reranker: Reranker, locations: Sequence[Location]) -> None:
    """Re-order each location's candidates by the re-ranker's judgement; note its reasons."""
    asked = [
        Query(
            " ".join(location.descriptions),
            [c.path for c in location.candidates],
            [c.score for c in location.candidates],
        )
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
