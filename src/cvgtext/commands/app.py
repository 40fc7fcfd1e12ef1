"""A web page to ask "where am I?": a description in, the city's top-k tiles out.

The page (Gradio) keeps one :class:`~cvgtext.commands.locator.Locator` loaded: each description is
embedded and searched in the city's gallery index, and the answer (ranked tiles, their
scores and coordinates, a plain map of the city) is shown at once; the relevance overlays of
the shown tiles (``explain.overlays``) follow in a second step, one backward pass per tile.

Nothing is fetched from the internet: Gradio's analytics are off and its fonts are served
from the package. The server listens on ``server_name`` (127.0.0.1 unless asked otherwise).
"""

from __future__ import annotations

import html
import io
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from PIL import Image

from cvgtext.reports.locations import Candidate, Location
from cvgtext.utils.errors import ConfigError

if TYPE_CHECKING:
    from cvgtext.commands.locator import Locator
    from cvgtext.model.relevance import Explanation

# Set before Gradio is first imported: it reads this when it loads.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

log = logging.getLogger(__name__)

TILE_PIXELS = 320  # the largest side of a tile on the page
MAX_MAP_TILES = 20_000  # grey dots of the city drawn under the candidates (every n-th tile beyond)
EXAMPLE = "a church on a roundabout, a small park to the north-east and a car park to the south"


@dataclass
class Answer:
    """What the page shows for one description: a status line and, when it could be located, the ranking."""

    message: str
    location: Location | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def tokens_beyond_context(tokenizer: Any, text: str) -> int:
    """How many of ``text``'s tokens the text encoder does not read (0 when unknown)."""
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    encode, length = getattr(tokenizer, "encode", None), getattr(tokenizer, "context_length", None)
    if encode is None or not isinstance(length, int):
        return 0
    return max(0, len(encode(text)) + 2 - length)  # start and end of text take two places


def read_description(text: Any, max_chars: int) -> tuple[str | None, list[str]]:
    """The description to locate, or None and why not; notes on what was left out."""
    if not isinstance(text, str) or not text.strip():
        return None, [f'Describe the place you see, e.g. "{EXAMPLE}".']
    text = " ".join(text.split())
    notes = []
    if len(text) > max_chars:
        notes.append(
            f"The description was {len(text):,} characters long; the first {max_chars:,} were read "
            "(max_chars in the config)."
        )
        text = text[:max_chars]
    return text, notes


def answer(locator: Locator, text: Any, max_chars: int = 2000) -> Answer:
    """Locate one description typed on the page; user mistakes become messages, not errors."""
    started = time.perf_counter()
    description, notes = read_description(text, max_chars)
    if description is None:
        return Answer(notes[0])
    unread = tokens_beyond_context(locator.module.tokenizer, description)
    if unread:
        notes.append(
            f"The text encoder reads the first {locator.module.tokenizer.context_length} tokens; "
            f"the last {unread} were not read."
        )
    if not any(character.isascii() and character.isalpha() for character in description):
        notes.append("The model was trained on English descriptions; other scripts are read, but rarely well.")
    [location] = locator.locate([description])
    seconds = time.perf_counter() - started
    if not location.candidates:
        return Answer("The gallery has no tiles to rank.", location, notes, seconds)
    best = location.candidates[0]
    message = (
        f"Best match **{best.lat:.5f}, {best.lon:.5f}** (score {best.score:.3f}) among "
        f"{len(locator.gallery.names):,} tiles, in {1000 * seconds:.0f} ms."
    )
    if location.reranking is not None:
        notes.append(f"Re-ranker: {location.reranking}.")
    return Answer(message, location, notes, seconds)


def status_markdown(result: Answer) -> str:
    return "\n\n".join([result.message, *[f"*{html.escape(note)}*" for note in result.notes]])


def results_html(location: Location | None) -> str:
    """The ranked candidates as a table (each row carries its file in ``data-file``)."""
    if location is None or not location.candidates:
        return '<p class="no-results">No results yet.</p>'
    reranked = location.reranking is not None

    def reranker_cells(c: Candidate) -> str:
        if not reranked:
            return ""
        value = "" if c.value is None else f"{c.value:.2f}"
        return f'<td>{c.dual_rank or ""}</td><td>{value}</td><td class="reason">{html.escape(c.reason or "")}</td>'

    rows = "".join(
        f'<tr data-file="{html.escape(c.file)}"><td>{c.rank}</td><td class="file">{html.escape(c.file)}</td>'
        f"<td>{c.lat:.6f}</td><td>{c.lon:.6f}</td><td>{c.score:.4f}</td><td>{c.distance_m:,.0f}</td>"
        f"{reranker_cells(c)}</tr>"
        for c in location.candidates
    )
    extra = "<th>dual encoder rank</th><th>re-ranker value</th><th>re-ranker reason</th>" if reranked else ""
    return (
        f'<table class="candidates" data-query="{html.escape(location.query)}"><thead><tr><th>rank</th>'
        f"<th>file</th><th>lat</th><th>lon</th><th>score</th><th>metres from 1</th>{extra}</tr></thead>"
        f"<tbody>{rows}</tbody></table>"
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


def display_tile(path: Any) -> Image.Image:
    """A tile as the page shows it: at most :data:`TILE_PIXELS` on a side."""
    from cvgtext.data.dataset import load_image

    tile = load_image(path)
    tile.thumbnail((TILE_PIXELS, TILE_PIXELS))
    return tile


def tile_gallery(location: Location | None, explanations: Sequence[Explanation] = ()) -> list[tuple[Image.Image, str]]:
    """The candidates' tiles with their captions; the first ``len(explanations)`` under their relevance."""
    from cvgtext.reports.overlays import heat_overlay

    if location is None:
        return []
    shown = []
    # the candidates whose tile file is known, as Locator.explain takes them
    for i, c in enumerate(c for c in location.candidates if c.path is not None):
        tile = display_tile(c.path)
        if i < len(explanations):
            tile = heat_overlay(tile, explanations[i].image)
        shown.append((tile, f"{c.rank}: {c.score:.3f}, {c.distance_m:,.0f} m"))
    return shown


def map_image(location: Location | None, city: tuple[Sequence[float], Sequence[float]] | None) -> Image.Image | None:
    """The candidates over the city's tiles on a plain lat/lon canvas (no web map: nothing is fetched)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from cvgtext.reports.locations import draw_map

    if location is None or not location.candidates:
        return None
    figure = Figure(figsize=(4.5, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    draw_map(axes, location, city)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def city_points(locator: Locator) -> tuple[list[float], list[float]]:
    """The gallery's coordinates for the map, at most :data:`MAX_MAP_TILES` of them (evenly strided)."""
    step = max(1, math.ceil(len(locator.gallery.names) / MAX_MAP_TILES))
    return locator.gallery.lat[::step].tolist(), locator.gallery.lon[::step].tolist()


def check_page_options(server_name: Any, port: Any, max_chars: Any) -> None:
    """Refuse a server address, port or description length the page cannot use."""
    if not isinstance(server_name, str) or not server_name:
        raise ConfigError(f"server_name={server_name!r}: give a host name or address, e.g. 127.0.0.1")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError(f"port={port!r} must be a port number from 1 to 65535")
    if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1:
        raise ConfigError(f"max_chars={max_chars!r} must be a positive number of characters")


class Page:
    """The page's two steps, kept apart from Gradio so that they can be called directly."""

    def __init__(self, locator: Locator, max_chars: int = 2000, overlays: bool = True):
        self.locator = locator
        self.max_chars = max_chars
        self.overlays = overlays
        self.city = city_points(locator)
        self.refusal = locator.explanation_refusal() if overlays else None

    def ask(self, text: Any) -> tuple[str, str, list, Image.Image | None, str, Location | None]:
        """Step one: ``(status, results table, tiles, map, words, location)``; never raises."""
        try:
            result = answer(self.locator, text, self.max_chars)
            notes = result.notes
            if result.location is not None and self.overlays and self.refusal:
                notes.append(f"No relevance overlays: {self.refusal}")
            return (
                status_markdown(result),
                results_html(result.location),
                tile_gallery(result.location),
                map_image(result.location, self.city),
                "",
                result.location,
            )
        except Exception as error:  # the page shows one line; the server log keeps the traceback
            log.exception("The page could not answer %r", text if not isinstance(text, str) else text[:200])
            return (
                f"Could not answer: {html.escape(type(error).__name__)}: {html.escape(str(error))[:300]}",
                results_html(None),
                [],
                None,
                "",
                None,
            )

    def explain(self, location: Location | None) -> tuple[Any, str]:
        """Step two: the shown tiles under their relevance and the shaded words, or unchanged."""
        import gradio as gr

        from cvgtext.reports.overlays import word_relevance

        if location is None or not self.overlays or self.refusal or not location.candidates:
            return gr.skip(), ""
        try:
            found = self.locator.explain(location, len(location.candidates))
        except Exception:
            log.exception("No relevance overlays for %r", location.query[:200])
            return gr.skip(), '<p class="relevance">The relevance overlays could not be computed.</p>'
        explanations = [explanation for explanation, _ in found]
        words = word_relevance(explanations[0]) if explanations else []
        return tile_gallery(location, explanations), words_html(words)


def build_page(page: Page, title: str):
    """The Gradio page of ``page``: a text box, then the answer in a status line, a table, the
    tiles, a map and the shaded words."""
    import gradio as gr

    with gr.Blocks(title=title, analytics_enabled=False) as blocks:
        gr.Markdown(
            f"# {html.escape(title)}\nDescribe what you see around you; the tiles of the city that "
            "match your words best are shown, best first."
        )
        with gr.Row():
            text = gr.Textbox(label="Your description", placeholder=EXAMPLE, lines=3, scale=4, elem_id="query")
            ask = gr.Button("Where am I?", variant="primary", scale=1, elem_id="ask")
        status = gr.Markdown(elem_id="status")
        with gr.Row():
            with gr.Column(scale=3):
                tiles = gr.Gallery(
                    label="Best tiles",
                    columns=5,
                    height=220,
                    elem_id="tiles",
                    object_fit="contain",
                    type="pil",
                    format="png",
                )
                words = gr.HTML(elem_id="words")
                table = gr.HTML(results_html(None), elem_id="results")
            with gr.Column(scale=2):
                where = gr.Image(label="Where they are", type="pil", elem_id="map", interactive=False)
        location = gr.State()
        for trigger in (ask.click, text.submit):
            trigger(page.ask, inputs=text, outputs=[status, table, tiles, where, words, location]).then(
                page.explain, inputs=location, outputs=[tiles, words]
            )
    return blocks


def page_theme():
    """Gradio's default look with the system's fonts: a page that loads nothing from outside."""
    import gradio as gr

    system = ("ui-sans-serif", "system-ui", "sans-serif")
    return gr.themes.Default(font=system, font_mono=("ui-monospace", "Consolas", "monospace"))


def serve(cfg: Any, block: bool = True):
    """Load the model and the gallery index of ``cfg`` and serve the page; returns Gradio's app."""
    from cvgtext.commands.locator import Locator

    check_page_options(cfg.server_name, cfg.port, cfg.max_chars)
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ConfigError("app.py needs Gradio: pip install 'cvgtext[app]'") from None
    locator = Locator(cfg)
    explain = cfg.get("explain") or {}
    page = Page(locator, cfg.max_chars, bool(explain.get("overlays")))
    title = f"Where am I? {cfg.city.name}, {cfg.img.name} tiles"
    blocks = build_page(page, title)
    try:
        blocks.queue(default_concurrency_limit=1).launch(
            server_name=cfg.server_name,
            server_port=cfg.port,
            share=False,
            inbrowser=False,
            prevent_thread_lock=not block,
            theme=page_theme(),
            footer_links=[],
            quiet=False,
        )
    except OSError as error:
        raise ConfigError(
            f"cannot serve on {cfg.server_name}:{cfg.port} ({error}); give another port=... or server_name=..."
        ) from None
    return blocks
