"""A split ranked by a pair scorer (ViLT): each (description, tile) pair scored by the model itself.

A single-stream model has no embeddings to compare, so every pair a ranking needs costs a
forward pass of the whole model. Which pairs: the protocol's candidates (each description's
``nearest`` tiles, as the official ``evaluate_vilt`` scores them: ``nearest`` passes per
description) and, with ``whole_gallery``, every tile of the split for each description, which the
whole-gallery figures need (``queries x tiles`` passes, and the protocol's pairs among them).

Pairs are scored tile by tile: each tile is read and preprocessed once, then scored with every
description that needs it, ``batch_size`` pairs per forward pass. The scores fill a
``[queries, gallery]`` matrix (``-inf`` where no pair was scored, never a candidate) that the
retrieval engine ranks under the protocol, exactly as it ranks a dual encoder's similarities.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch

from cvgtext.data.dataset import PairDataset, load_image
from cvgtext.retrieval.nearest_tiles import nearest_entries
from cvgtext.retrieval.ranking import Ranking, rank_similarity
from cvgtext.retrieval.split import Evaluation, SplitLayout, evaluation_of, split_layout

log = logging.getLogger(__name__)

TILES_PER_STEP = 8  # tiles read and preprocessed together before their pairs are scored
# (images [B, 3, H, W], tokens [B, L], pixel_mask [B, H, W]) -> [B] scores
PairScore = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
# gallery rows -> (pixel values [tiles, 3, H, W], pixel mask [tiles, H, W]) of those tiles
TileImages = Callable[[list[int]], tuple[torch.Tensor, torch.Tensor]]


def pairs_needed(layout: SplitLayout, nearest: int | None, whole_gallery: bool) -> torch.Tensor:
    """``[queries, gallery]`` bool: the pairs a ranking of both protocols (or, without
    ``whole_gallery``, of the protocol's candidates only) needs scored."""
    queries, gallery = len(layout.names), len(layout.gallery_names)
    if whole_gallery or nearest is None or nearest >= gallery:
        return torch.ones(queries, gallery, dtype=torch.bool)
    candidates, _ = nearest_entries(layout.places, layout.gallery_places, nearest)
    return torch.zeros(queries, gallery, dtype=torch.bool).scatter_(1, candidates, True)


@torch.no_grad()
def score_pairs(
    score: PairScore, tiles: TileImages, tokens: torch.Tensor, needed: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """``[queries, gallery]`` float32: ``score`` of every ``needed`` pair, ``-inf`` elsewhere.

    ``tokens  # [queries, L]`` are the descriptions' token ids, on the device ``score`` runs on.
    Each tile's image is asked for once.
    """
    scores = torch.full(needed.shape, -math.inf)
    gallery = needed.shape[1]
    for start in range(0, gallery, TILES_PER_STEP):
        rows = torch.arange(start, min(start + TILES_PER_STEP, gallery))
        tile, query = needed[:, rows].T.nonzero(as_tuple=True)  # this step's pairs, tile by tile
        if not len(query):
            continue
        images, mask = tiles(rows.tolist())
        images, mask = images.to(tokens.device), mask.to(tokens.device)
        for first in range(0, len(query), batch_size):
            t, q = tile[first : first + batch_size], query[first : first + batch_size]
            device_t = t.to(tokens.device)
            logits = score(images[device_t], tokens[q.to(tokens.device)], mask[device_t])
            scores[q, rows[t]] = logits.float().cpu()
    return scores


def evaluate_pairs(
    score: PairScore,
    tiles: Callable[[list[int]], tuple[torch.Tensor, torch.Tensor]],
    tokens: torch.Tensor,
    index: list[int],
    dataset: PairDataset,
    nearest: int | None,
    whole_gallery: bool = True,
    batch_size: int = 128,
) -> Evaluation:
    """The evaluation of the pairs ``index`` of ``dataset`` by a pair scorer.

    ``tiles(paths)`` gives the pixel values and masks of tile files; ``tokens  # [queries, L]``
    the descriptions' tokens in the order of ``index``.
    """
    layout = split_layout(index, dataset, nearest)
    needed = pairs_needed(layout, nearest, whole_gallery)
    queries, gallery = needed.shape
    log.info(
        "Scoring %s (description, tile) pairs: %s descriptions x %s",
        f"{int(needed.sum()):,}",
        f"{queries:,}",
        f"{gallery:,} tiles (the whole gallery)" if bool(needed.all()) else f"the protocol's {nearest} nearest tiles",
    )
    paths = [dataset.pairs[layout.index[p]].image_path for p in layout.gallery_positions]
    sim = score_pairs(score, lambda rows: tiles([paths[row] for row in rows]), tokens, needed, batch_size)

    def rank(nearest: int | None) -> Ranking:
        return rank_similarity(sim, layout.names, layout.gallery_names, layout.places, layout.gallery_places, nearest)

    return evaluation_of(layout, rank, nearest, whole_gallery=bool(needed.all()))


def tile_loader(preprocess: Callable, pad: Callable) -> Callable[[list], tuple[torch.Tensor, torch.Tensor]]:
    """``paths -> (pixel values, pixel mask)``: each file decoded and preprocessed, padded to one size."""

    def load(paths: list) -> tuple[torch.Tensor, torch.Tensor]:
        return pad([preprocess(load_image(path)) for path in paths])

    return load
