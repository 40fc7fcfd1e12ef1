"""The CVG-Text evaluation protocol written plainly, one query and one tile at a time.

It follows the protocol's text step by step, with nothing shared with the engine but the
file-name parsing, so tests and ``benchmarks/bench_retrieval.py`` can hold the vectorised
engine to it. ``synthetic_names`` makes city-like file names for both.
"""

from __future__ import annotations

import math
import random
import string
from dataclasses import dataclass

from cvgtext.data.names import is_panorama, parse_coordinates

EARTH_RADIUS_KM = 6371.0


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in km between two points given in degrees."""
    lat1, lon1, lat2, lon2 = map(math.radians, (lat1, lon1, lat2, lon2))
    a = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(min(max(a, 0.0), 1.0)))


@dataclass
class QueryOutcome:
    """What one query retrieved under the protocol."""

    ranked_names: list[str]  # distinct names, best first
    true_rank: int | None  # 1-based; None when the true name is not among the candidates
    top1_error_km: float


def rank_query(
    scores: list[float],
    query_name: str,
    gallery_names: list[str],
    places: list[tuple[float, float]],
    nearest: int | None,
) -> QueryOutcome:
    """Rank the gallery (names and ``(lat, lon)`` places) for one query from its row of ``scores``."""
    lat, lon = parse_coordinates(query_name)
    distance_km = [haversine_km(lat, lon, tile_lat, tile_lon) for tile_lat, tile_lon in places]
    candidates = list(range(len(gallery_names)))
    if nearest is not None:
        candidates = sorted(candidates, key=lambda j: distance_km[j])[:nearest]
    by_score = sorted(candidates, key=lambda j: scores[j], reverse=True)
    ranked: list[int] = []
    seen: set[str] = set()
    for j in by_score:
        if gallery_names[j] not in seen:
            seen.add(gallery_names[j])
            ranked.append(j)
    ranked_names = [gallery_names[j] for j in ranked]
    true_rank = ranked_names.index(query_name) + 1 if query_name in ranked_names else None
    top1_error_km = 0.0 if ranked_names[0] == query_name else distance_km[ranked[0]]
    return QueryOutcome(ranked_names, true_rank, top1_error_km)


def reference_metrics(
    sim: list[list[float]], query_names: list[str], gallery_names: list[str], nearest: int | None = 100
) -> dict[str, dict[str, float]]:
    """The metrics dictionary of the protocol, computed one query at a time."""
    places = [parse_coordinates(name) for name in gallery_names]
    outcomes = [rank_query(row, name, gallery_names, places, nearest) for row, name in zip(sim, query_names)]
    groups = {
        "all": list(range(len(query_names))),
        "panorama": [i for i, name in enumerate(query_names) if is_panorama(name)],
        "single": [i for i, name in enumerate(query_names) if not is_panorama(name)],
    }
    metrics = {}
    for group, members in groups.items():
        if not members:
            continue
        count = len(members)
        values: dict[str, float] = {}
        for k in (1, 5, 10):
            hits = sum(1 for i in members if query_names[i] in outcomes[i].ranked_names[:k])
            values[f"R@{k}"] = 100.0 * hits / count
        for metres in (50, 100, 150):
            within = sum(1 for i in members if outcomes[i].top1_error_km <= metres / 1000)
            values[f"L@{metres}"] = 100.0 * within / count
        values["mean_error_km"] = math.fsum(outcomes[i].top1_error_km for i in members) / count
        # the reciprocal of the true name's place among the ranked distinct names, 0 when absent
        reciprocal = [1 / outcomes[i].true_rank if outcomes[i].true_rank else 0.0 for i in members]
        values["MRR"] = 100.0 * math.fsum(reciprocal) / count
        values["count"] = count
        metrics[group] = values
    return metrics


def synthetic_names(
    rng: random.Random,
    count: int,
    center: tuple[float, float] = (-27.4698, 153.0251),
    span_deg: float = 0.045,
    panorama_share: float = 0.8,
) -> list[str]:
    """File names of ``count`` places in a city about 5 km across (``span_deg`` of latitude).

    Panorama names look like ``-27.47012345,153.02123456_2022-08_<22-letter panoid>_d62_z3.jpg``,
    single-view names like ``-27.47012345,153.02123456_XyZabcDe.jpg``.
    """
    names = []
    for _ in range(count):
        lat = center[0] + rng.uniform(-span_deg / 2, span_deg / 2)
        lon = center[1] + rng.uniform(-span_deg / 2, span_deg / 2)
        if rng.random() < panorama_share:
            panoid = "".join(rng.choices(string.ascii_letters, k=22))
            names.append(f"{lat:.8f},{lon:.8f}_2022-08_{panoid}_d62_z3.jpg")
        else:
            names.append(f"{lat:.8f},{lon:.8f}_{''.join(rng.choices(string.ascii_letters, k=8))}.jpg")
    return names
