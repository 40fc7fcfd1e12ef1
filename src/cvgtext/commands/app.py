"""A web page to ask "where am I?": a description in, the city's top-k tiles out.

The page (Gradio) keeps one :class:`~cvgtext.commands.locator.Locator` loaded: each description is
embedded and searched in the city's gallery index, and the answer (ranked tiles, their
scores and coordinates, a plain map of the city) is shown at once; the relevance overlays of
the shown tiles (``explain.overlays``) follow in a second step, one backward pass per tile.

Nothing is fetched from the internet: Gradio's analytics are off and its fonts are served
from the package. The server listens on ``server_name`` (127.0.0.1 unless asked otherwise).
"""

from __future__ import annotations

import functools
import html
import logging
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from PIL import Image

from cvgtext.commands.asking import EXAMPLE, Answer, Asked, answer, check_page_options, read_description
from cvgtext.reports.answer_html import (
    PAGE_CSS,
    descriptions_html,
    results_html,
    status_markdown,
    tile_caption,
    words_html,
)
from cvgtext.reports.locations import Location
from cvgtext.utils.errors import ConfigError

if TYPE_CHECKING:
    from cvgtext.commands.locator import Locator
    from cvgtext.model.relevance import Explanation

# Set before Gradio is first imported: it reads this when it loads.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

log = logging.getLogger(__name__)

__all__ = ["Answer", "Asked", "Page", "answer", "check_page_options", "read_description", "results_html", "words_html"]

TILE_PIXELS = 320  # the largest side of a tile on the page
THUMBNAIL_PIXELS = 96  # a tile on the neighbourhood map (each read once, then kept)
THUMBNAILS_KEPT = 4096


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
        shown.append((tile, tile_caption(c)))
    return shown


class Page:
    """The page's steps, kept apart from Gradio so that they can be called directly: :meth:`ask`
    (a new place) and :meth:`more` (a further description of it) answer at once; :meth:`explain`
    follows with the overlays and the neighbourhood map."""

    def __init__(self, locator: Locator, max_chars: int = 2000, overlays: bool = True, tile_m: float | None = None):
        from cvgtext.reports.maps import CityMap, Neighbourhood

        self.locator = locator
        self.max_chars = max_chars
        self.overlays = overlays
        self.refusal = locator.explanation_refusal() if overlays else None
        gallery = locator.gallery
        self.city_map = CityMap(gallery.lat.numpy(), gallery.lon.numpy())  # the city drawn once, here
        self.thumbnail = functools.lru_cache(maxsize=THUMBNAILS_KEPT)(self._thumbnail)
        self.neighbourhood = Neighbourhood(
            gallery.names, gallery.lat.numpy(), gallery.lon.numpy(), self.thumbnail, tile_m
        )

    def _thumbnail(self, name: str) -> Image.Image | None:
        from cvgtext.data.dataset import load_image

        path = self.locator.paths.get(name)
        if path is None:
            return None
        try:
            tile = load_image(path)
        except Exception:  # a tile that cannot be read leaves a gap on the map, not a failed answer
            log.warning("tile %s could not be read for the neighbourhood map", path)
            return None
        tile.thumbnail((THUMBNAIL_PIXELS, THUMBNAIL_PIXELS))
        return tile

    def ask(
        self, text: Any, place: Asked | None = None
    ) -> tuple[str, str, list, Image.Image | None, str, Asked | None]:
        """Step one: ``(status, results table, tiles, map, words, place)``; never raises.
        ``place``: the place described so far, for a further description (None: a new place)."""
        try:
            result = answer(self.locator, text, self.max_chars, place)
            notes = result.notes
            if result.location is None:  # nothing to locate: the place asked about stays as it was
                return status_markdown(result.message, notes), results_html(None), [], None, "", result.place
            if self.overlays and self.refusal:
                notes.append(f"No relevance overlays: {self.refusal}")
            status = status_markdown(result.message, notes) + descriptions_html(result.place.descriptions)
            return (
                status,
                results_html(result.location),
                tile_gallery(result.location),
                self.city_map.draw(result.location),
                "",
                result.place,
            )
        except Exception as error:  # the page shows one line; the server log keeps the traceback
            log.exception("The page could not answer %r", text if not isinstance(text, str) else text[:200])
            message = f"Could not answer: {html.escape(type(error).__name__)}: {html.escape(str(error))[:300]}"
            return status_markdown(message), results_html(None), [], None, "", place

    def more(self, text: Any, place: Asked | None) -> tuple[str, str, list, Image.Image | None, str, Asked | None]:
        """Step one for a further description of the place asked about (a new place without one)."""
        return self.ask(text, place)

    def explain(self, place: Asked | None) -> tuple[Any, str, Image.Image | None]:
        """Step two: the shown tiles under their relevance, the shaded words (unchanged without
        overlays), and the neighbourhood of tile 1."""
        import gradio as gr

        from cvgtext.reports.overlays import word_relevance

        location = place.location if place is not None else None
        if location is None or not location.candidates:
            return gr.skip(), "", None
        try:
            neighbourhood = self.neighbourhood.draw(location)
        except Exception:
            log.exception("No neighbourhood map for %r", location.query[:200])
            neighbourhood = None
        if not self.overlays or self.refusal:
            return gr.skip(), "", neighbourhood
        try:
            found = self.locator.explain(location, len(location.candidates))
        except Exception:
            log.exception("No relevance overlays for %r", location.query[:200])
            return gr.skip(), '<p class="relevance">The relevance overlays could not be computed.</p>', neighbourhood
        explanations = [explanation for explanation, _ in found]
        words = word_relevance(explanations[0]) if explanations else []
        return tile_gallery(location, explanations), words_html(words), neighbourhood

    def warm_up(self) -> float:
        """Answer one description through both steps, so that the first person's answer is as
        fast as the next (lazy initialisation, first kernels, the first drawings); seconds taken."""
        started = time.perf_counter()
        self.explain(self.ask(EXAMPLE)[-1])
        seconds = time.perf_counter() - started
        log.info("The page answered its warm-up description in %.2f s", seconds)
        return seconds


def build_page(page: Page, title: str, concurrency: dict[str, int] | None = None, apart: bool = True):
    """The Gradio page of ``page``: a text box and two buttons, then the answer in a status
    line, the tiles and the city's map, the table and the neighbourhood map.

    ``concurrency``: how many first steps (``answers``) and second steps (``overlays``) may run
    at once; each kind has its own queue, so a person's overlays never wait behind another's
    answer. ``apart=False`` puts both in one queue of ``answers`` places (what the load
    benchmark compares with). The API (``gradio_client``) has ``/ask``, ``/more`` and ``/explain``.
    """
    import gradio as gr

    from cvgtext.commands.shown_files import ShownFiles

    concurrency = {"answers": 1, "overlays": 1, **(concurrency or {})}
    files = ShownFiles()

    def answered_files(outputs: tuple) -> tuple:
        status, table, tiles, city_map, words, place = outputs
        return status, table, files.gallery(tiles), files.path(city_map), words, place

    def ask_step(text: Any) -> tuple:
        return answered_files(page.ask(text))

    def more_step(text: Any, place: Asked | None) -> tuple:
        return answered_files(page.more(text, place))

    def explain_step(place: Asked | None) -> tuple:
        tiles, words, around = page.explain(place)
        return files.gallery(tiles), words, files.path(around)

    with gr.Blocks(title=title, analytics_enabled=False) as blocks:
        gr.Markdown(
            f"# {title}\nDescribe what you see around you; the tiles of the city that match your words best are "
            "shown, best first, with how sure the model is. Seen more? Add it to the same place."
        )
        with gr.Row():
            text = gr.Textbox(label="Your description", placeholder=EXAMPLE, lines=3, scale=4, elem_id="query")
            with gr.Column(scale=1, min_width=180):
                ask = gr.Button("Where am I?", variant="primary", elem_id="ask")
                more = gr.Button("Add to this place", variant="secondary", elem_id="more")
        status = gr.Markdown(elem_id="status")
        with gr.Row(equal_height=False):
            with gr.Column(scale=3, min_width=400):
                tiles = gr.Gallery(
                    label="Best tiles (rank: probability, metres from tile 1)",
                    columns=5,
                    height=210,
                    elem_id="tiles",
                    object_fit="contain",
                    type="filepath",
                )
                words = gr.HTML(elem_id="words")
                table = gr.HTML(results_html(None), elem_id="results")
            with gr.Column(scale=2, min_width=300):
                where = gr.Image(label="Where they are in the city", type="filepath", elem_id="map", interactive=False)
                around = gr.Image(label="Around tile 1", type="filepath", elem_id="neighbourhood", interactive=False)
        place = gr.State()
        # An empty request when the page opens: the browser's connection to the queue is made
        # then, not on the first description.
        blocks.load(lambda: None, api_name=False, concurrency_id="answers")
        answered = [status, table, tiles, where, words, place]
        listeners = [
            (ask.click, ask_step, [text], "ask"),
            (text.submit, ask_step, [text], False),
            (more.click, more_step, [text, place], "more"),
        ]
        second = ("overlays", concurrency["overlays"]) if apart else ("answers", concurrency["answers"])
        for trigger, step, inputs, api_name in listeners:
            trigger(
                step,
                inputs=inputs,
                outputs=answered,
                api_name=api_name,
                concurrency_id="answers",
                concurrency_limit=concurrency["answers"],
            ).then(
                explain_step,
                inputs=place,
                outputs=[tiles, words, around],
                api_name="explain" if api_name == "ask" else False,
                concurrency_id=second[0],
                concurrency_limit=second[1],
            )
    return blocks


def page_theme():
    """Gradio's default look with the system's fonts: a page that loads nothing from outside."""
    import gradio as gr

    system = ("ui-sans-serif", "system-ui", "sans-serif")
    return gr.themes.Default(font=system, font_mono=("ui-monospace", "Consolas", "monospace"))


def serve(cfg: Any, block: bool = True):
    """Load the model and the gallery index of ``cfg``, answer one description to warm up, and
    serve the page; returns Gradio's app."""
    from cvgtext.commands.locator import Locator

    check_page_options(cfg.server_name, cfg.port, cfg.max_chars)
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ConfigError("app.py needs Gradio: pip install 'cvgtext[app]'") from None
    locator = Locator(cfg)
    explain = cfg.get("explain") or {}
    page = Page(locator, cfg.max_chars, bool(explain.get("overlays")), cfg.get("neighbourhood_tile_m"))
    page.warm_up()
    title = f"Where am I? {cfg.city.name}, {cfg.img.name} tiles"
    blocks = build_page(page, title, dict(cfg.get("concurrency") or {}))
    try:
        blocks.queue(default_concurrency_limit=1).launch(
            server_name=cfg.server_name,
            server_port=cfg.port,
            share=False,
            inbrowser=False,
            prevent_thread_lock=True,
            theme=page_theme(),
            css=PAGE_CSS,
            footer_links=[],
            quiet=False,
        )
    except OSError as error:
        raise ConfigError(
            f"cannot serve on {cfg.server_name}:{cfg.port} ({error}); give another port=... or server_name=..."
        ) from None
    warm_up_served(blocks.local_url)
    if block:
        blocks.block_thread()
    return blocks


def warm_up_served(url: str) -> None:
    """Ask the served page once through its API (Gradio's own first request: the queue, the
    pictures handed over), so that the first person is not the one who pays for it."""
    started = time.perf_counter()
    try:
        from gradio_client import Client

        client = Client(url, verbose=False)
        client.predict(EXAMPLE, api_name="/ask")
        client.predict(api_name="/explain")
    except Exception as error:  # the page serves all the same
        log.warning("The served page could not be warmed up (%s: %s)", type(error).__name__, error)
        return
    log.info("The served page answered its warm-up request in %.2f s", time.perf_counter() - started)
