"""Relevance maps of retrieved pairs: the overlays of examples.png and ``explanations/``.

``example_explanations`` explains the queries examples.png shows (``explain.overlays``). For
each of the first ``explain.max_queries`` queries of the split, the caption and its top-1
retrieved tile are explained (``model/relevance.py``): ``explanations/query_NNN.png`` shows the
tile under its patch relevance and the caption with each word shaded by its relevance (the sum
over its tokens); ``explanations/query_NNN.npz`` holds the arrays. Each query costs a backward
pass through both towers, hence the cap.
"""

from __future__ import annotations

import io
import logging
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from cvgtext.data.dataset import PairDataset, load_image
from cvgtext.model.relevance import Explanation, explain_pairs, refusal
from cvgtext.reports.overlays import heat_overlay, plot_shaded_words, word_relevance
from cvgtext.reports.results import example_queries
from cvgtext.retrieval.split import Evaluation
from cvgtext.utils.atomic import atomic_write, save_figure

log = logging.getLogger(__name__)


def draw_explanation(path: Path, tile: Any, explanation: Explanation, caption: str, title: str) -> None:
    """A PNG: the tile with its patch relevance overlaid, and the caption's words shaded by theirs."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 7.5))
    FigureCanvasAgg(figure)  # files only, never a window: no pyplot, no global backend
    image_axes, text_axes = figure.subplots(2, 1, gridspec_kw={"height_ratios": [3, 1.4]})
    image_axes.imshow(heat_overlay(tile, explanation.image))
    image_axes.set_title(title, fontsize=9)
    image_axes.axis("off")
    text_axes.axis("off")
    words = word_relevance(explanation)
    if words:
        plot_shaded_words(text_axes, words)
    else:
        text_axes.text(0, 1, caption, fontsize=9, va="top", wrap=True)
    save_figure(figure, path, dpi=100, bbox_inches="tight")


def explain_caption(
    module: Any, caption: str, tiles: Sequence[str | Path], preprocess: Any, tokenizer: Any, start_block: int = 0
) -> list[tuple[Explanation, Image.Image]]:
    """``caption`` explained with each of the image files ``tiles`` (one batch): each explanation
    with its tile as the model saw it (resized to its input)."""
    if not tiles:
        return []
    read = [load_image(path) for path in tiles]
    images = torch.stack([preprocess(tile) for tile in read])
    tokens = tokenizer([caption]).reshape(1, -1).expand(len(read), -1)
    explanations = explain_pairs(module, images, tokens, start_block=start_block)
    size = (images.shape[-1], images.shape[-2])
    return [(explanation, tile.resize(size)) for explanation, tile in zip(explanations, read)]


def explain_top1(
    module: Any, evaluation: Evaluation, dataset: PairDataset, query: int, start_block: int = 0
) -> tuple[Explanation, Image.Image, Any] | None:
    """Query ``query``'s caption explained with its top-1 tile: the explanation, the tile as the
    model saw it (resized to its input) and the tile's pair; None if nothing was retrieved."""
    top1 = int(evaluation.ranking.indices[query, 0])
    if top1 < 0:
        return None
    tile_pair = dataset.pairs[evaluation.gallery_index[top1]]
    caption = dataset.pairs[evaluation.query_index[query]].caption
    # The tile is read here: a reused gallery index leaves images out of the dataset.
    [(explanation, tile)] = explain_caption(
        module, caption, [tile_pair.image_path], dataset.preprocess, dataset.tokenizer, start_block
    )
    return explanation, tile, tile_pair


def example_explanations(
    module: Any, evaluation: Evaluation, dataset: PairDataset, queries: Sequence[int], start_block: int = 0
) -> dict[int, Explanation]:
    """The explanations of ``queries`` with their top-1 tiles, for the overlays of examples.png;
    empty (and logged) for a model the relevance maps do not support."""
    reason = refusal(module)
    if reason is not None:
        log.info("examples.png without relevance overlays: %s", reason)
        return {}
    found = {query: explain_top1(module, evaluation, dataset, query, start_block) for query in queries}
    return {query: result[0] for query, result in found.items() if result is not None}


def report_explanations(cfg: Any, module: Any, evaluation: Evaluation, dataset: PairDataset) -> dict[int, Explanation]:
    """The overlays of examples.png when the run's ``explain.overlays`` asks for them."""
    explain = cfg.get("explain") or {}
    if not explain.get("overlays"):
        return {}
    queries = example_queries(evaluation)
    return example_explanations(module, evaluation, dataset, queries, explain.get("start_block", 0))


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
        found = explain_top1(module, evaluation, dataset, query, start_block)
        if found is None:
            continue
        explanation, tile, tile_pair = found
        pair = dataset.pairs[evaluation.query_index[query]]
        correct = tile_pair.name == pair.name
        title = (
            f"query {query}: top-1 {'right' if correct else 'wrong'}, cosine {explanation.similarity:.3f}\n"
            f"{textwrap.shorten(tile_pair.name, 70, placeholder='...')}"
        )
        stem = folder / f"query_{query:03d}"
        draw_explanation(stem.with_suffix(".png"), tile, explanation, pair.caption, title)
        buffer = io.BytesIO()
        np.savez(
            buffer,
            image=explanation.image.numpy(),
            text=explanation.text.numpy(),
            token_ids=explanation.token_ids.numpy(),
            words=np.array(explanation.words),
            similarity=explanation.similarity,
            correct=correct,
        )
        with atomic_write(stem.with_suffix(".npz"), "wb") as stream:
            stream.write(buffer.getvalue())
        written.append(stem.with_suffix(".png"))
    log.info("Relevance maps of %d queries written to %s", len(written), folder)
    return written
