"""What the query tool leaves in its run folder: locations.json, locations.geojson, locations.png.

All three are written atomically. The picture shows, per query, its caption, its top-k tiles
and a small map of the candidates on a plain lat/lon canvas with a scale bar (no web tiles:
nothing outside this machine is reached).
"""

from __future__ import annotations

import json
import logging
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvgtext.reports.maps import draw_map
from cvgtext.retrieval.geo import EARTH_RADIUS_KM
from cvgtext.utils.atomic import atomic_write, save_figure

log = logging.getLogger(__name__)

MAX_DRAWN_QUERIES = 8  # rows of locations.png; the JSON files hold every query
MAX_AREA_LISTED = 1000  # places of an area written out (its size and radius count them all)
CIRCLE_VERTICES = 64  # of the area's circle in locations.geojson
# Confidence in words: the first whose threshold the calibrated probability reaches.
CONFIDENCE_WORDS = (
    (0.6, "likely"),
    (0.3, "possible: check the other candidates"),
    (0.0, "not sure: these are guesses"),
)


@dataclass
class Candidate:
    """One ranked tile of a description."""

    rank: int
    file: str
    lat: float
    lon: float
    score: float
    distance_m: float  # from the query's best candidate
    path: Path | None = None
    # with a re-ranker: the rank the dual encoder gave, and the re-ranker's value and reason
    dual_rank: int | None = None
    value: float | None = None
    reason: str | None = None
    probability: float | None = None  # calibrated probability that this tile is the true one


@dataclass
class AreaPlace:
    """One tile of an answer's area."""

    file: str
    lat: float
    lon: float
    probability: float


@dataclass
class Area:
    """Where the true place lies with ``probability`` by the calibration: the smallest set of
    tiles holding it (``places`` of them, the first :data:`MAX_AREA_LISTED` in ``members``, most
    probable first), and the smallest circle around the best tile holding it (``radius_m``)."""

    probability: float
    places: int
    radius_m: float
    members: list[AreaPlace] = field(default_factory=list)


@dataclass
class Location:
    """One place, described once or several times, and the tiles it ranked first."""

    query: str  # the first description
    candidates: list[Candidate]
    # relevance of the description with its top-1 tile (a model.explain.Explanation), drawn on locations.png
    explanation: Any = None
    reranking: str | None = None  # with a re-ranker: "re-ranked", or why the order was kept
    descriptions: list[str] = field(default_factory=list)  # every description of the place, in order
    confidence: float | None = None  # calibrated probability that the top-1 tile is the true one
    within: float | None = None  # ... that the true place is within `within_m` of the top-1
    within_m: float | None = None
    area: Area | None = None

    def __post_init__(self):
        if not self.descriptions:
            self.descriptions = [self.query]


def confidence_words(probability: float | None) -> str:
    """The confidence as a person reads it (:data:`CONFIDENCE_WORDS`)."""
    if probability is None:
        return "no confidence: the model was not calibrated"
    return next(words for threshold, words in CONFIDENCE_WORDS if probability >= threshold)


def confidence_line(location: Location) -> str:
    """``likely. 72 % that tile 1 is the place (81 % within 50 m); 80 % area: 3 tiles, 140 m around tile 1``."""
    if location.confidence is None:
        return confidence_words(None)
    line = f"{confidence_words(location.confidence)}. {100 * location.confidence:.0f} % that tile 1 is the place"
    if location.within is not None:
        line += f" ({100 * location.within:.0f} % within {location.within_m:g} m)"
    if location.area is not None:
        area = location.area
        plural = "" if area.places == 1 else "s"
        line += (
            f"; {100 * area.probability:.0f} % area: {area.places:,} tile{plural}, {area.radius_m:,.0f} m around tile 1"
        )
    return line


def candidate_content(c: Candidate) -> dict:
    content = {
        "rank": c.rank,
        "file": c.file,
        "lat": c.lat,
        "lon": c.lon,
        "score": c.score,
        "distance_m": round(c.distance_m, 1),
    }
    if c.probability is not None:
        content["probability"] = c.probability
    if c.dual_rank is not None:
        content.update(dual_encoder_rank=c.dual_rank, value=c.value, reason=c.reason)
    return content


def confidence_content(location: Location) -> dict:
    """The calibrated confidence and area of one location (empty when not calibrated)."""
    if location.confidence is None:
        return {}
    content: dict[str, Any] = {
        "confidence": location.confidence,
        "confidence_words": confidence_words(location.confidence),
        "within_m": location.within_m,
        "confidence_within": location.within,
    }
    if location.area is not None:
        area = location.area
        content["area"] = {
            "probability": area.probability,
            "places": area.places,
            "radius_m": round(area.radius_m, 1),
            "members": [vars(member) for member in area.members],
        }
    return content


def locations_content(locations: Sequence[Location]) -> list[dict]:
    """``[{"query", "candidates": [{"rank", "file", "lat", "lon", "score", "distance_m"}]}]``;
    a place described several times also has ``descriptions``; calibrated, each location has
    ``confidence``, ``confidence_words``, ``within_m``, ``confidence_within`` and ``area``
    (``probability``, ``places``, ``radius_m``, ``members``: ``file``, ``lat``, ``lon``,
    ``probability``) and each candidate its ``probability``; re-ranked, each query also has
    ``reranking`` and each candidate ``dual_encoder_rank``, ``value`` and ``reason``."""
    return [
        {
            "query": location.query,
            **({"descriptions": location.descriptions} if len(location.descriptions) > 1 else {}),
            **({"reranking": location.reranking} if location.reranking is not None else {}),
            **confidence_content(location),
            "candidates": [candidate_content(c) for c in location.candidates],
        }
        for location in locations
    ]


def circle_ring(lat: float, lon: float, radius_m: float, vertices: int = CIRCLE_VERTICES) -> list[list[float]]:
    """A closed ring of ``[lon, lat]`` points ``radius_m`` from a centre (spherical Earth)."""
    angular = radius_m / (EARTH_RADIUS_KM * 1000)
    phi, lam = math.radians(lat), math.radians(lon)
    ring = []
    for step in range(vertices + 1):
        bearing = 2 * math.pi * (step % vertices) / vertices
        lat2 = math.asin(math.sin(phi) * math.cos(angular) + math.cos(phi) * math.sin(angular) * math.cos(bearing))
        lon2 = lam + math.atan2(
            math.sin(bearing) * math.sin(angular) * math.cos(phi), math.cos(angular) - math.sin(phi) * math.sin(lat2)
        )
        ring.append([(math.degrees(lon2) + 180) % 360 - 180, math.degrees(lat2)])
    return ring


def area_features(location: Location, number: int) -> list[dict]:
    """The area of a calibrated location as GeoJSON: its circle around the best tile and its set of tiles."""
    if location.area is None or not location.candidates:
        return []
    area, best = location.area, location.candidates[0]
    properties = {"query": location.query, "query_index": number, "probability": area.probability}
    return [
        {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [circle_ring(best.lat, best.lon, max(area.radius_m, 1.0))]},
            "properties": {**properties, "kind": "area_radius", "radius_m": round(area.radius_m, 1)},
        },
        {
            "type": "Feature",
            "geometry": {"type": "MultiPoint", "coordinates": [[m.lon, m.lat] for m in area.members]},
            "properties": {**properties, "kind": "area_places", "places": area.places},
        },
    ]


def geojson_content(locations: Sequence[Location]) -> dict:
    """The candidates as GeoJSON points (``[lon, lat]``), with their query, rank, score and
    probability; a calibrated location's area as a circle (``kind: area_radius``) and a
    multipoint of its tiles (``kind: area_places``)."""
    features = []
    for number, location in enumerate(locations):
        for c in location.candidates:
            properties = {"query": location.query, "query_index": number, "rank": c.rank, "file": c.file}
            properties["score"] = c.score
            if c.probability is not None:
                properties["probability"] = c.probability
            features.append(
                {
                    "type": "Feature",
                    "geometry": {"type": "Point", "coordinates": [c.lon, c.lat]},
                    "properties": properties,
                }
            )
        features += area_features(location, number)
    return {"type": "FeatureCollection", "features": features}


def write_locations(output_dir: Path, locations: Sequence[Location], draw: bool = True) -> dict[str, Path]:
    paths = {
        "json": output_dir / "locations.json",
        "geojson": output_dir / "locations.geojson",
        "png": output_dir / "locations.png",
    }
    for key, content in (("json", locations_content(locations)), ("geojson", geojson_content(locations))):
        with atomic_write(paths[key]) as stream:
            json.dump(content, stream, indent=2)
            stream.write("\n")
    if draw:
        draw_locations(paths["png"], locations)
    log.info("Locations written to %s", output_dir)
    return paths


def draw_locations(path: Path, locations: Sequence[Location], tile_inches: float = 1.6) -> None:
    """``locations.png``: a row per query (the first :data:`MAX_DRAWN_QUERIES`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cvgtext.data.dataset import load_image
    from cvgtext.reports.overlays import heat_overlay, plot_shaded_words, word_relevance

    shown = list(locations[:MAX_DRAWN_QUERIES])
    if len(locations) > len(shown):
        log.info("locations.png shows the first %d of %d queries", len(shown), len(locations))
    columns = max([len(location.candidates) for location in shown] + [1]) + 1
    figure = plt.figure(figsize=(columns * tile_inches, len(shown) * (tile_inches + 1.1) + 0.2), dpi=80)
    grid = figure.add_gridspec(len(shown), columns, hspace=1.0, wspace=0.15, left=0.02, right=0.98, top=0.86)
    for row, location in enumerate(shown):
        line = int(columns * tile_inches * 12)  # characters of an 8-point line across the figure
        caption = textwrap.shorten(location.query, width=2 * line, placeholder=" ...")
        first = figure.add_subplot(grid[row, 0])
        explanation = location.explanation
        words = word_relevance(explanation) if explanation is not None else []
        if words:  # the caption's words shaded by relevance, over the row as a title would be
            line_height = 1.45 * 8 * figure.dpi / 72 / first.bbox.height
            plot_shaded_words(
                first, words, y=1.06 + 2 * line_height, right=columns * 1.15 - 0.2, fontsize=8, max_lines=2
            )
        else:
            first.set_title("\n".join(textwrap.wrap(caption, line)), loc="left", fontsize=8, pad=8)
        for column, candidate in enumerate(location.candidates):
            axes = first if column == 0 else figure.add_subplot(grid[row, column])
            if candidate.path is not None:
                tile = load_image(candidate.path)
                if column == 0 and explanation is not None:
                    tile = heat_overlay(tile, explanation.image)
                axes.imshow(tile)
            axes.set_xticks([])
            axes.set_yticks([])
            axes.set_xlabel(f"{candidate.rank}: {candidate.score:.3f}\n{candidate.distance_m:.0f} m", fontsize=7)
        draw_map(figure.add_subplot(grid[row, columns - 1]), location)
    save_figure(figure, path)
    plt.close(figure)
