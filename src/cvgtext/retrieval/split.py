"""From the embeddings of one split to its ranking and CVG-Text metrics.

The gallery of a split is its set of distinct tiles; every caption of the split is a query.
Both protocols are computed: the paper's (each query ranks the ``nearest`` tiles around its
true place) and the whole city as gallery.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from cvgtext.data.dataset import PairDataset
from cvgtext.retrieval.ranking import Ranking, first_of_each_name, rank_gallery, summarize

log = logging.getLogger(__name__)


@dataclass
class EmbeddedSplit:
    """Embeddings of the pairs of one split; ``index`` points into its dataset."""

    image: torch.Tensor  # [pairs, embed_dim] the embedding of each pair's tile
    text: torch.Tensor  # [pairs, embed_dim]
    index: torch.Tensor  # [pairs]


@dataclass
class Evaluation:
    """A split's queries, gallery, ranking (under the chosen protocol) and metrics."""

    query_index: list[int]  # dataset positions of the queries
    gallery_index: list[int]  # dataset positions of the gallery tiles
    ranking: Ranking
    metrics: dict[str, dict[str, float]]
    full_city_metrics: dict[str, dict[str, float]]
    nearest: int | None
    gallery: torch.Tensor | None = None  # [gallery, embed_dim] embeddings of the gallery tiles
    queries: torch.Tensor | None = None  # [queries, embed_dim] embeddings of the captions
    query_places: torch.Tensor | None = None  # [queries, 2] latitude, longitude (degrees) of each true place
    gallery_places: torch.Tensor | None = None  # [gallery, 2]
    true_rows: torch.Tensor | None = None  # [queries] the gallery row of each caption's tile


def evaluate_split(embedded: EmbeddedSplit, dataset: PairDataset, nearest: int | None = 100) -> Evaluation:
    """Rank each caption's gallery and compute the metrics of both protocols."""
    index = embedded.index.tolist()
    pairs = [dataset.pairs[i] for i in index]
    names = [pair.name for pair in pairs]
    places = torch.tensor([(pair.lat, pair.lon) for pair in pairs], dtype=torch.float64).reshape(len(pairs), 2)
    panorama = torch.tensor([pair.is_panorama for pair in pairs], dtype=torch.bool)
    first_of_name = first_of_each_name(names)
    gallery_positions = list(first_of_name.values())
    gallery_names = list(first_of_name)
    row_of_name = {name: row for row, name in enumerate(gallery_names)}
    gallery = embedded.image[gallery_positions]
    gallery_places = places[gallery_positions]
    if nearest is not None and len(gallery_names) < nearest:
        log.info(
            "The %s gallery has %d tiles, fewer than the protocol's %d nearest: every query ranks all of them",
            dataset.split,
            len(gallery_names),
            nearest,
        )

    def rank(nearest: int | None) -> Ranking:
        return rank_gallery(embedded.text, gallery, names, gallery_names, places, gallery_places, nearest=nearest)

    ranking = rank(nearest)
    metrics = summarize(ranking, panorama)
    full_city = metrics if nearest is None else summarize(rank(None), panorama)
    return Evaluation(
        query_index=index,
        gallery_index=[index[p] for p in gallery_positions],
        ranking=ranking,
        metrics=metrics,
        full_city_metrics=full_city,
        nearest=nearest,
        gallery=gallery,
        queries=embedded.text,
        query_places=places,
        gallery_places=gallery_places,
        true_rows=torch.tensor([row_of_name[name] for name in names], dtype=torch.long),
    )


def flatten_metrics(
    metrics: dict[str, dict[str, Any]], prefix: str, groups: Sequence[str] | None = None
) -> dict[str, float]:
    """``{"all": {"R@1": ..}, "panorama": ..}`` -> ``{"val/R@1": .., "val/panorama/R@1": ..}``.

    Query counts are left out: they describe the split, not the model.
    """
    flat = {}
    for group, values in metrics.items():
        if groups is not None and group not in groups:
            continue
        for key, value in values.items():
            if key == "count":
                continue
            name = f"{prefix}/{key}" if group == "all" else f"{prefix}/{group}/{key}"
            flat[name] = float(value)
    return flat
