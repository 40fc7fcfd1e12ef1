"""A web page to ask "where am I?": a description in, the city's top-k tiles out.

The page (Gradio) keeps one :class:`~cvgtext.commands.locator.Locator` loaded: each description is
embedded and searched in the city's gallery index, and the answer (ranked tiles, their
scores and coordinates, a plain map of the city) is shown at once; the relevance overlays of
the shown tiles (``explain.overlays``) follow in a second step, one backward pass per tile.

Nothing is fetched from the internet: Gradio's analytics are off and its fonts are served
from the package. The server listens on ``server_name`` (127.0.0.1 unless asked otherwise).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from cvgtext.commands.asking import EXAMPLE, Answer, Asked, answer, check_page_options, read_description
from cvgtext.commands.page import Page, display_tile, tile_gallery
from cvgtext.reports.answer_html import (
    PAGE_CSS,
    results_html,
    words_html,
)
from cvgtext.utils.errors import ConfigError

# Set before Gradio is first imported: it reads this when it loads.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

log = logging.getLogger(__name__)

__all__ = [
    "Answer",
    "Asked",
    "Page",
    "answer",
    "check_page_options",
    "display_tile",
    "read_description",
    "results_html",
    "tile_gallery",
    "words_html",
]


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
