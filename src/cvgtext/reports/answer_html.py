"""What the web page shows of an answer, as text: the status line, the table of candidates, the
tiles' captions and the description's words shaded by relevance. Everything typed is escaped:
markup in a description is shown as text, never run."""

from __future__ import annotations

import html
from collections.abc import Sequence

from cvgtext.reports.locations import Candidate, Location, confidence_words

# Laid out so that the table never runs under the map beside it: it fills its column and the
# long file names wrap; the tiles' captions wrap instead of being cut.
PAGE_CSS = """
#results table.candidates { width: 100%; table-layout: fixed; border-collapse: collapse; font-size: 13px; }
#results table.candidates th, #results table.candidates td { padding: 4px 5px; text-align: left; }
#results table.candidates td { white-space: nowrap; overflow: hidden; }
#results table.candidates td.file, #results table.candidates td.reason { white-space: normal; overflow-wrap: anywhere; }
#results table.candidates td.file { font-size: 11px; }
#results table.candidates col.rank { width: 6%; }
#results table.candidates col.file { width: 27%; }
#results table.candidates col.lat, #results table.candidates col.lon { width: 14%; }
#results table.candidates col.score { width: 10%; }
#results table.candidates col.probability { width: 15%; }
#results table.candidates col.metres { width: 14%; }
#tiles .caption-label { white-space: normal; max-width: 96%; overflow: visible; }
"""


COLUMN_CLASSES = {
    "rank": "rank",
    "file": "file",
    "lat": "lat",
    "lon": "lon",
    "score": "score",
    "probability": "probability",
    "metres from 1": "metres",
}


def status_markdown(message: str, notes: Sequence[str] = ()) -> str:
    return "\n\n".join([message, *[f"*{html.escape(note)}*" for note in notes]])


def confidence_message(location: Location) -> str:
    """The answer's confidence in words and numbers, and its area, for the status line."""
    if location.confidence is None:
        return ""
    words = confidence_words(location.confidence)
    words = words[0].upper() + words[1:]
    text = f"**{html.escape(words)}.** {100 * location.confidence:.0f} % that tile 1 is the place"
    if location.area is not None:
        area = location.area
        plural = "" if area.places == 1 else "s"
        text += (
            f"; with {100 * area.probability:.0f} % it lies within {area.radius_m:,.0f} m of tile 1 "
            f"(the orange area: {area.places:,} tile{plural})"
        )
    return text + "."


def answer_message(location: Location, tiles: int, seconds: float) -> str:
    best = location.candidates[0]
    count = len(location.descriptions)
    described = f" from {count} descriptions of this place" if count > 1 else ""
    message = (
        f"Best match **{best.lat:.5f}, {best.lon:.5f}** (score {best.score:.3f}) among {tiles:,} tiles"
        f"{described}, in {1000 * seconds:.0f} ms."
    )
    confidence = confidence_message(location)
    return f"{confidence}\n\n{message}" if confidence else message


def tile_caption(c: Candidate) -> str:
    """A tile's caption, short enough to read whole under its thumbnail: rank, probability (or
    score), and metres from tile 1."""
    value = f"{100 * c.probability:.0f} %" if c.probability is not None else f"{c.score:.2f}"
    return f"{c.rank}: {value}" + (f", {c.distance_m:,.0f} m" if c.rank > 1 else "")


def results_html(location: Location | None) -> str:
    """The ranked candidates as a table (each row carries its file in ``data-file``)."""
    if location is None or not location.candidates:
        return '<p class="no-results">No results yet.</p>'
    reranked = location.reranking is not None
    calibrated = any(c.probability is not None for c in location.candidates)

    def cells(c: Candidate) -> str:
        row = f'<td>{c.rank}</td><td class="file">{html.escape(c.file)}</td>'
        row += f"<td>{c.lat:.5f}</td><td>{c.lon:.5f}</td><td>{c.score:.4f}</td>"
        if calibrated:
            row += "<td></td>" if c.probability is None else f"<td>{100 * c.probability:.1f} %</td>"
        row += f"<td>{c.distance_m:,.0f}</td>"
        if reranked:
            value = "" if c.value is None else f"{c.value:.2f}"
            row += f'<td>{c.dual_rank or ""}</td><td>{value}</td><td class="reason">{html.escape(c.reason or "")}</td>'
        return row

    rows = "".join(f'<tr data-file="{html.escape(c.file)}">{cells(c)}</tr>' for c in location.candidates)
    headers = ["rank", "file", "lat", "lon", "score", *(["probability"] if calibrated else []), "metres from 1"]
    if reranked:
        headers += ["dual encoder rank", "re-ranker value", "re-ranker reason"]
    columns = "".join(f'<col class="{COLUMN_CLASSES.get(header, "other")}">' for header in headers)
    head = "".join(f"<th>{header}</th>" for header in headers)
    return (
        f'<table class="candidates" data-query="{html.escape(location.query)}"><colgroup>{columns}</colgroup>'
        f"<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
    )


def words_html(words: Sequence[tuple[str, float]]) -> str:
    """The description's words, each on a background shaded by its relevance to the top-1 tile."""
    from cvgtext.reports.overlays import word_colour

    if not words:
        return ""
    top = max(score for _, score in words)
    spans = " ".join(
        '<span style="background: rgb({}, {}, {}); color: black; padding: 0 2px">{}</span>'.format(
            *(round(255 * c) for c in word_colour(score, top)), html.escape(word)
        )
        for word, score in words
    )
    return f'<p class="relevance">Words by relevance to tile 1: {spans}</p>'


def descriptions_html(descriptions: Sequence[str]) -> str:
    """The descriptions of the place asked about so far, numbered."""
    if len(descriptions) < 2:
        return ""
    items = "".join(f"<li>{html.escape(text)}</li>" for text in descriptions)
    return f'<ol class="descriptions">{items}</ol>'
