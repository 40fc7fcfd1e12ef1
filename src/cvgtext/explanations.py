"""What ``eval.py explain.enabled=true`` leaves in the run directory: relevance overlays.

For each of the first ``explain.max_queries`` queries of the split, the caption and its top-1
retrieved tile are explained (``model/explain.py``): ``explanations/query_NNN.png`` shows the
tile under its patch relevance and the caption with each word shaded by its relevance (the sum
over its tokens); ``explanations/query_NNN.npz`` holds the arrays. Each query costs a backward
pass through both towers, hence the cap.
"""

from __future__ import annotations

import io
import logging
import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cvgtext.atomic import atomic_write  # noqa: E402
from cvgtext.data.dataset import PairDataset, load_image  # noqa: E402
from cvgtext.evaluation import Evaluation  # noqa: E402
from cvgtext.model.explain import Explanation, explain_pair  # noqa: E402

log = logging.getLogger(__name__)


def word_relevance(explanation: Explanation) -> list[tuple[str, float]]:
    """The caption's words with their relevance: BPE pieces joined up to the one ending in ``</w>``."""
    words: list[tuple[str, float]] = []
    piece, score = "", 0.0
    for token, relevance in zip(explanation.words, explanation.text.tolist()):
        piece, score = piece + token.replace("</w>", ""), score + relevance
        if token.endswith("</w>"):
            words.append((piece, score))
            piece, score = "", 0.0
    if piece:
        words.append((piece, score))
    return words


def draw_explanation(path: Path, tile: Any, explanation: Explanation, caption: str, title: str) -> None:
    """A PNG: the tile with its patch relevance overlaid, and the caption's words shaded by theirs."""
    figure, (image_axes, text_axes) = plt.subplots(
        2, 1, figsize=(6, 7.5), gridspec_kw={"height_ratios": [3, 1.4]}
    )
    relevance = explanation.image.numpy()
    relevance = relevance / relevance.max() if relevance.max() > 0 else relevance
    width, height = tile.size
    image_axes.imshow(tile)
    image_axes.imshow(relevance, cmap="jet", alpha=0.45, extent=(0, width, height, 0), interpolation="bilinear")
    image_axes.set_title(title, fontsize=9)
    image_axes.axis("off")

    text_axes.axis("off")
    words = word_relevance(explanation)
    top = max((score for _, score in words), default=0.0) or 1.0
    renderer = figure.canvas.get_renderer()
    x, y, line_height = 0.0, 1.0, 0.16
    for word, score in words:
        shade = plt.cm.Reds(0.85 * score / top)
        label = text_axes.text(x, y, word, fontsize=9, va="top", transform=text_axes.transAxes,
                               bbox={"facecolor": shade, "edgecolor": "none", "pad": 1.0})
        extent = label.get_window_extent(renderer).transformed(text_axes.transAxes.inverted())
        if x > 0 and extent.x1 > 1.0:  # wrap: start the word on the next line
            x, y = 0.0, y - line_height
            label.set_position((x, y))
            extent = label.get_window_extent(renderer).transformed(text_axes.transAxes.inverted())
        x = extent.x1 + 0.012
    if not words:
        text_axes.text(0, 1, caption, fontsize=9, va="top", wrap=True)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    with atomic_write(path, "wb") as stream:
        stream.write(buffer.getvalue())


def write_explanations(
    output_dir: str | Path,
    module: Any,
    evaluation: Evaluation,
    dataset: PairDataset,
    max_queries: int = 16,
    start_block: int = 0,
) -> list[Path]:
    """Explain the first ``max_queries`` queries with their top-1 tiles; returns the PNG paths."""
    folder = Path(output_dir) / "explanations"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for query in range(min(max_queries, len(evaluation.query_index))):
        pair_index = evaluation.query_index[query]
        top1 = int(evaluation.ranking.indices[query, 0])
        if top1 < 0:
            continue
        tile_index = evaluation.gallery_index[top1]
        pair, tile_pair = dataset.pairs[pair_index], dataset.pairs[tile_index]
        image = dataset[tile_index]["image"]
        tokens = dataset[pair_index]["tokens"]
        explanation = explain_pair(module, image, tokens, start_block=start_block)
        correct = tile_pair.name == pair.name
        title = (f"query {query}: top-1 {'right' if correct else 'wrong'}, cosine {explanation.similarity:.3f}\n"
                 f"{textwrap.shorten(tile_pair.name, 70, placeholder='...')}")
        stem = folder / f"query_{query:03d}"
        tile = load_image(tile_pair.image_path).resize((image.shape[-1], image.shape[-2]))
        draw_explanation(stem.with_suffix(".png"), tile, explanation, pair.caption, title)
        buffer = io.BytesIO()
        np.savez(
            buffer, image=explanation.image.numpy(), text=explanation.text.numpy(),
            token_ids=explanation.token_ids.numpy(), words=np.array(explanation.words),
            similarity=explanation.similarity, correct=correct,
        )
        with atomic_write(stem.with_suffix(".npz"), "wb") as stream:
            stream.write(buffer.getvalue())
        written.append(stem.with_suffix(".png"))
    log.info("Relevance maps of %d queries written to %s", len(written), folder)
    return written

