"""Where am I? Descriptions in, ranked places of the city out: the query tool.

A :class:`~cvgtext.commands.locator.Locator` ranks the city's tiles for each place (one
description, or several of the same place: ``also=``, or ``+`` lines in a queries file); the
top-k tiles, with the answer's confidence and area, are printed and written to
``locations.json``, ``locations.geojson`` and ``locations.png`` in the run folder.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from omegaconf import DictConfig

from cvgtext.commands.locator import Locator
from cvgtext.commands.queries import read_places
from cvgtext.reports.locations import MAX_DRAWN_QUERIES, Location, confidence_line, write_locations

log = logging.getLogger(__name__)


def explain_locations(locator: Locator, locations: Sequence[Location]) -> None:
    """Attach to the drawn queries the relevance of each description with its top-1 tile."""
    reason = locator.explanation_refusal()
    if reason is not None:
        log.info("locations.png without relevance overlays: %s", reason)
        return
    for location in locations[:MAX_DRAWN_QUERIES]:
        found = locator.explain(location)
        if found:
            location.explanation = found[0][0]


def locations_table(location: Location, number: int) -> str:
    """The ranked candidates of one query as a fixed-width table; re-ranked, with the dual
    encoder's rank, the re-ranker's value and its reasons below."""
    width = max([len("file")] + [len(c.file) for c in location.candidates])
    reranked = location.reranking is not None
    calibrated = location.confidence is not None
    header = f"{'rank':>4}  {'file':<{width}}  {'lat':>11}  {'lon':>11}  {'score':>8}  {'distance_m':>10}"
    header += f"  {'p':>6}" if calibrated else ""
    header += f"  {'was':>3}  {'value':>5}" if reranked else ""
    title = f"query {number}: {location.query}"
    lines = [f"{title} ({location.reranking})" if reranked else title]
    lines += [f"    + {text}" for text in location.descriptions[1:]]
    if location.confidence is not None:
        lines.append(confidence_line(location))
    lines += [header, "-" * len(header)]
    for c in location.candidates:
        line = f"{c.rank:>4}  {c.file:<{width}}  {c.lat:>11.6f}  {c.lon:>11.6f}  {c.score:>8.4f}  {c.distance_m:>10.0f}"
        if calibrated:
            line += f"  {'' if c.probability is None else f'{100 * c.probability:5.1f}%':>6}"
        if reranked:
            value = "" if c.value is None else f"{c.value:.2f}"
            line += f"  {c.dual_rank or '':>3}  {value:>5}"
        lines.append(line)
    lines += [f"{c.rank:>4}: {c.reason}" for c in location.candidates if reranked and c.reason]
    return "\n".join(lines)


def locate(cfg: DictConfig, stdin: IO[str] | None = None) -> list[Location]:
    """Locate ``cfg.query`` / ``cfg.queries`` in the city's gallery; print and write the results."""
    places = read_places(cfg.get("query"), cfg.get("queries"), cfg.get("also"), stdin)
    locator = Locator(cfg)
    locations = locator.locate(places)
    for number, location in enumerate(locations, start=1):
        print(locations_table(location, number))
        print()
    draw = cfg.get("draw", True)
    if draw and (cfg.get("explain") or {}).get("overlays"):
        explain_locations(locator, locations)
    write_locations(Path(cfg.paths.output_dir), locations, draw=draw)
    return locations
