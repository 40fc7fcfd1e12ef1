"""Relevance drawn where people look: heat maps over tiles and caption words shaded by relevance.

Used by ``examples.png`` (PIL), ``locations.png`` and ``explanations/`` (matplotlib). The maps
come from :mod:`cvgtext.model.relevance`; this module only draws them.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from cvgtext.model.relevance import Explanation

HEAT_ALPHA = 0.65  # share of the heat map in an overlaid tile where relevance peaks
WORD_GAP = 4  # pixels between shaded words in examples.png


def word_relevance(explanation: Explanation) -> list[tuple[str, float]]:
    """The caption's words with their relevance: BPE pieces joined up to the one ending in ``</w>``,
    then read back from CLIP's byte-level alphabet (``é`` is two bytes, ``東`` three, which pieces may split)."""
    words: list[tuple[str, float]] = []
    piece, score = "", 0.0
    for token, relevance in zip(explanation.words, explanation.text.tolist()):
        piece, score = piece + token.replace("</w>", ""), score + relevance
        if token.endswith("</w>"):
            words.append((_text(piece), score))
            piece, score = "", 0.0
    if piece:
        words.append((_text(piece), score))
    return words


@functools.cache
def _byte_of() -> dict[str, int]:
    from open_clip.tokenizer import bytes_to_unicode

    return {char: byte for byte, char in bytes_to_unicode().items()}


def _text(piece: str) -> str:
    """A word of byte-level BPE pieces as text (printable ASCII stands for itself, so other
    tokenizers' words come through unchanged)."""
    byte_of = _byte_of()
    if not all(char in byte_of for char in piece):
        return piece
    return bytes(byte_of[char] for char in piece).decode("utf-8", errors="replace")


def _colormap(name: str):
    import matplotlib

    return matplotlib.colormaps[name]


def word_colour(score: float, top: float) -> tuple[float, float, float]:
    """The background of a word of relevance ``score`` when the caption's largest is ``top``:
    white for none, deep orange for the most relevant (black text stays readable on both)."""
    return tuple(_colormap("Oranges")(0.75 * score / top if top > 0 else 0.0)[:3])


def heat_overlay(tile: Image.Image, relevance: Any, alpha: float = HEAT_ALPHA) -> Image.Image:
    """``tile`` blended with its patch relevance (``[grid_h, grid_w]``, scaled to its maximum),
    upsampled bilinearly to the tile's size and coloured from blue to red; the heat map covers
    the tile in proportion to relevance, so irrelevant parts stay as they are."""
    relevance = np.asarray(relevance, dtype=np.float32)
    peak = float(relevance.max()) if relevance.size else 0.0
    relevance = relevance / peak if peak > 0 else np.zeros_like(relevance)
    upsampled = np.asarray(Image.fromarray(relevance, mode="F").resize(tile.size, Image.BILINEAR))
    upsampled = np.clip(upsampled, 0.0, 1.0)
    heat = _colormap("jet")(upsampled)[..., :3] * 255
    share = alpha * upsampled[..., None]
    blended = (1 - share) * np.asarray(tile.convert("RGB"), dtype=np.float32) + share * heat
    return Image.fromarray(np.round(blended).astype(np.uint8))


def draw_shaded_words(
    draw: ImageDraw.ImageDraw,
    origin: tuple[int, int],
    words: Sequence[tuple[str, float]],
    width: int,
    font: Any,
    max_lines: int,
) -> int:
    """Lay ``words`` out from ``origin`` within ``width`` pixels, each on a background shaded by its
    relevance; at most ``max_lines`` lines (the last ends in "..." if the caption is longer).
    Returns the number of lines drawn."""
    top = max((score for _, score in words), default=0.0)
    left, y = origin
    ascent, descent = font.getmetrics() if hasattr(font, "getmetrics") else (10, 2)
    line_height = ascent + descent + 3
    x, line = left, 1
    for word, score in words:
        length = draw.textlength(word, font=font)
        if x > left and x + length > left + width:
            if line == max_lines:
                draw.text((x, y), "...", fill="black", font=font)
                return line
            x, y, line = left, y + line_height, line + 1
        colour = tuple(round(255 * c) for c in word_colour(score, top))
        draw.rectangle([x - 1, y - 1, x + length + 1, y + ascent + descent], fill=colour)
        draw.text((x, y), word, fill="black", font=font)
        x += length + WORD_GAP
    return line


def plot_shaded_words(
    axes: Any,
    words: Sequence[tuple[str, float]],
    y: float = 1.0,
    right: float = 1.0,
    fontsize: float = 9,
    max_lines: int | None = None,
) -> float:
    """Lay ``words`` out on matplotlib ``axes`` from ``(0, y)`` (axes fraction, top of the first
    line) to ``right``, each on a background shaded by its relevance. Returns the height taken,
    in axes fraction."""
    top = max((score for _, score in words), default=0.0)
    renderer = axes.figure.canvas.get_renderer()
    inverse = axes.transAxes.inverted()
    x, line, line_height, start = 0.0, 1, None, y
    for word, score in words:
        label = axes.text(
            x,
            y,
            word,
            fontsize=fontsize,
            va="top",
            transform=axes.transAxes,
            clip_on=False,
            bbox={"facecolor": word_colour(score, top), "edgecolor": "none", "pad": 1.0},
        )
        extent = label.get_window_extent(renderer).transformed(inverse)
        line_height = line_height or 1.45 * extent.height
        if x > 0 and extent.x1 > right:  # wrap: start the word on the next line
            if max_lines is not None and line == max_lines:
                label.set_text("...")
                label.set_bbox(None)
                break
            x, y, line = 0.0, y - line_height, line + 1
            label.set_position((x, y))
            extent = label.get_window_extent(renderer).transformed(inverse)
        x = extent.x1 + WORD_GAP / axes.bbox.width
    return start - y + (line_height or 0.0)
