"""What the query tool leaves in its run folder: locations.json, locations.geojson, locations.png.

All three are written atomically. The picture shows, per query, its caption, its top-k tiles
and a small map of the candidates on a plain lat/lon canvas with a scale bar (no web tiles:
nothing outside this machine is reached).
"""

from __future__ import annotations

import io
import json
import logging
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvgtext.retrieval.geo import EARTH_RADIUS_KM
from cvgtext.utils.atomic import atomic_write

log = logging.getLogger(__name__)

MAX_DRAWN_QUERIES = 8  # rows of locations.png; the JSON files hold every query


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


@dataclass
class Location:
    """One description and the places it ranked first."""

    query: str
    candidates: list[Candidate]
    # relevance of the description with its top-1 tile (a model.explain.Explanation), drawn on locations.png
    explanation: Any = None
    reranking: str | None = None  # with a re-ranker: "re-ranked", or why the order was kept


def candidate_content(c: Candidate) -> dict:
    content = {
        "rank": c.rank,
        "file": c.file,
        "lat": c.lat,
        "lon": c.lon,
        "score": c.score,
        "distance_m": round(c.distance_m, 1),
    }
    if c.dual_rank is not None:
        content.update(dual_encoder_rank=c.dual_rank, value=c.value, reason=c.reason)
    return content


def locations_content(locations: Sequence[Location]) -> list[dict]:
    """``[{"query", "candidates": [{"rank", "file", "lat", "lon", "score", "distance_m"}]}]``;
    re-ranked, each query also has ``reranking`` and each candidate ``dual_encoder_rank``,
    ``value`` and ``reason``."""
    return [
        {
            "query": location.query,
            **({"reranking": location.reranking} if location.reranking is not None else {}),
            "candidates": [candidate_content(c) for c in location.candidates],
        }
        for location in locations
    ]


def geojson_content(locations: Sequence[Location]) -> dict:
    """The candidates as GeoJSON points (``[lon, lat]``), with their query, rank and score."""
    features = [
        {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [c.lon, c.lat]},
            "properties": {
                "query": location.query,
                "query_index": number,
                "rank": c.rank,
                "file": c.file,
                "score": c.score,
            },
        }
        for number, location in enumerate(locations)
        for c in location.candidates
    ]
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


def scale_bar_metres(span_m: float) -> float:
    """A round length (1, 2 or 5 times a power of ten) of about a quarter of ``span_m``."""
    target = max(span_m / 4, 1.0)
    power = 10 ** math.floor(math.log10(target))
    return max(step * power for step in (1, 2, 5) if step * power <= target)


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
    with atomic_write(path, "wb") as stream:
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        stream.write(buffer.getvalue())
    plt.close(figure)


def draw_map(axes, location: Location, city: tuple[Sequence[float], Sequence[float]] | None = None) -> None:
    """The candidates at their coordinates, numbered by rank, with a scale bar in metres; with
    ``city`` (the gallery's latitudes and longitudes), every tile in grey beneath, all in view."""
    axes.set_xticks([])
    axes.set_yticks([])
    if not location.candidates:
        return
    # Longitudes as seen from the best candidate, so that a city across the antimeridian
    # (179.99 and -179.99) is drawn whole rather than at both ends of the world.
    reference = location.candidates[0].lon

    def near(longitude: float) -> float:
        return reference + (longitude - reference + 180) % 360 - 180

    lat = [c.lat for c in location.candidates]
    lon = candidate_lon = [near(c.lon) for c in location.candidates]
    middle = math.radians(sum(lat) / len(lat))
    metres_per_degree = math.radians(1) * EARTH_RADIUS_KM * 1000
    # Equal distances look equal: a degree of longitude is cos(lat) of a degree of latitude.
    axes.set_aspect(1 / max(math.cos(middle), 1e-6))
    if city is not None:
        city_lon = [near(value) for value in city[1]]
        axes.scatter(city_lon, city[0], s=3, c="lightgrey", linewidths=0)
        lat, lon = [*lat, *city[0]], [*lon, *city_lon]
    axes.scatter(candidate_lon[1:], [c.lat for c in location.candidates[1:]], s=14, c="tab:blue")
    axes.scatter(candidate_lon[:1], [location.candidates[0].lat], s=30, c="tab:red", marker="*")
    for c, x in zip(location.candidates, candidate_lon):
        axes.annotate(str(c.rank), (x, c.lat), fontsize=6, xytext=(2, 2), textcoords="offset points")
    pad = max(max(lat) - min(lat), (max(lon) - min(lon)) * math.cos(middle), 100 / metres_per_degree) * 0.25
    axes.set_ylim(min(lat) - pad, max(lat) + pad)
    lon_pad = pad / max(math.cos(middle), 1e-6)
    axes.set_xlim(min(lon) - lon_pad, max(lon) + lon_pad)
    x0, x1 = axes.get_xlim()
    y0, y1 = axes.get_ylim()
    span_m = (x1 - x0) * metres_per_degree * math.cos(middle)
    bar_m = scale_bar_metres(span_m)
    bar_degrees = bar_m / (metres_per_degree * math.cos(middle))
    left, bottom = x0 + 0.06 * (x1 - x0), y0 + 0.08 * (y1 - y0)
    axes.plot([left, left + bar_degrees], [bottom, bottom], color="black", linewidth=2)
    label = f"{bar_m / 1000:g} km" if bar_m >= 1000 else f"{bar_m:g} m"
    axes.text(left, bottom + 0.03 * (y1 - y0), label, fontsize=6)
    axes.set_title("candidates", fontsize=7)
    axes.set_xlabel(f"{location.candidates[0].lat:.5f}, {location.candidates[0].lon:.5f}", fontsize=6)
