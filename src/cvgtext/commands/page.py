"""The web page's steps, apart from Gradio so that they can be called directly: a description in,
what the page shows out (:class:`Page`).

:meth:`Page.ask` (a new place) and :meth:`Page.more` (a further description of it) answer at
once: the status line, the table, the tiles and the city's map with the answer's area.
:meth:`Page.explain` follows: the tiles under their relevance, the words shaded, and the
neighbourhood of tile 1 drawn from the city's own tiles. Nothing here raises: a failure becomes
one line on the page, its traceback goes to the server's log.
"""

from __future__ import annotations

import functools
import html
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from PIL import Image

from cvgtext.commands.asking import EXAMPLE, Asked, answer
from cvgtext.reports.answer_html import descriptions_html, results_html, status_markdown, tile_caption, words_html
from cvgtext.reports.locations import Location

if TYPE_CHECKING:
    from cvgtext.commands.locator import Locator
    from cvgtext.model.relevance import Explanation

log = logging.getLogger(__name__)

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
