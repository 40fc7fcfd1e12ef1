"""Where am I? Descriptions in, ranked places of the city out.

Each description is embedded with the text tower and searched in the gallery index of the
city (built once per weights and gallery, see ``gallery.py``); its top-k tiles, with their
coordinates from the file names, are printed and written to ``locations.json``,
``locations.geojson`` and ``locations.png`` in the run folder.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import IO, Any, Sequence

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from cvgtext.gallery import (
    GalleryIndex,
    Tile,
    config_index_key,
    embed_captions,
    embed_tiles,
    gallery_tiles,
    load_or_build_index,
)
from cvgtext.geo import haversine_km
from cvgtext.location_reports import MAX_DRAWN_QUERIES, Candidate, Location, write_locations
from cvgtext.queries import check_options, read_queries
from cvgtext.search import SearchIndex

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
            module.model, module.preprocess, tiles, cfg.data.eval_batch_size, cfg.data.num_workers,
            cfg.get("device", "cpu"),
        )

    return load_or_build_index(cfg.paths.get("cache_dir"), key, tiles, embed), tiles


def rank_locations(
    queries: Sequence[str], query_emb: torch.Tensor, gallery: GalleryIndex, search: SearchIndex, top_k: int,
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
        lat, lon = gallery.lat[at], gallery.lon[at]
        distance_m = (haversine_km(lat[:1], lon[:1], lat, lon) * 1000).tolist()
        candidates = [
            Candidate(
                rank=rank, file=gallery.names[i], lat=float(gallery.lat[i]), lon=float(gallery.lon[i]),
                score=float(score), distance_m=distance, path=(paths or {}).get(gallery.names[i]),
            )
            for rank, ((score, i), distance) in enumerate(zip(found, distance_m), start=1)
        ]
        locations.append(Location(query, candidates))
    return locations


def explain_locations(module: Any, locations: Sequence[Location], start_block: int = 0) -> None:
    """Attach to the drawn queries the relevance of each description with its top-1 tile."""
    from cvgtext.data.dataset import load_image
    from cvgtext.model.explain import explain_pair, refusal

    reason = refusal(module)
    if reason is not None:
        log.info("locations.png without relevance overlays: %s", reason)
        return
    for location in locations[:MAX_DRAWN_QUERIES]:
        if location.candidates and location.candidates[0].path is not None:
            image = module.preprocess(load_image(location.candidates[0].path))
            tokens = module.tokenizer([location.query])[0]
            location.explanation = explain_pair(module, image, tokens, start_block=start_block)


def locations_table(location: Location, number: int) -> str:
    """The ranked candidates of one query as a fixed-width table."""
    width = max([len("file")] + [len(c.file) for c in location.candidates])
    header = f"{'rank':>4}  {'file':<{width}}  {'lat':>11}  {'lon':>11}  {'score':>8}  {'distance_m':>10}"
    lines = [f"query {number}: {location.query}", header, "-" * len(header)]
    for c in location.candidates:
        lines.append(
            f"{c.rank:>4}  {c.file:<{width}}  {c.lat:>11.6f}  {c.lon:>11.6f}  {c.score:>8.4f}  {c.distance_m:>10.0f}"
        )
    return "\n".join(lines)


def locate(cfg: DictConfig, stdin: IO[str] | None = None) -> list[Location]:
    """Locate ``cfg.query`` / ``cfg.queries`` in the city's gallery; print and write the results."""
    from cvgtext.eval import build_module

    queries = read_queries(cfg.get("query"), cfg.get("queries"), stdin)
    split = cfg.get("split", "all")
    top_k = check_options(split, cfg.get("top_k", 5), cfg.get("index", "exact"))
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    module, backbone = build_module(cfg)
    gallery, tiles = build_gallery_index(cfg, module, backbone, split)
    started = time.perf_counter()
    search = SearchIndex(cfg.get("index", "exact"), gallery.embeddings)
    built = time.perf_counter()
    query_emb = embed_captions(
        module.model, module.tokenizer, queries, cfg.data.eval_batch_size, cfg.get("device", "cpu")
    )
    encoded = time.perf_counter()
    locations = rank_locations(queries, query_emb, gallery, search, top_k, {tile.name: tile.path for tile in tiles})
    searched = time.perf_counter()
    log.info(
        "%d queries against %d tiles (index=%s%s): index %.1f ms, text encoding %.1f ms, search %.1f ms",
        len(queries), len(gallery.names), search.name, ", approximate" if search.approximate else "",
        1000 * (built - started), 1000 * (encoded - built), 1000 * (searched - encoded),
    )
    for number, location in enumerate(locations, start=1):
        print(locations_table(location, number))
        print()
    draw = cfg.get("draw", True)
    explain = cfg.get("explain") or {}
    if draw and explain.get("overlays"):
        explain_locations(module, locations, explain.get("start_block", 0))
    write_locations(Path(cfg.paths.output_dir), locations, draw=draw)
    return locations
