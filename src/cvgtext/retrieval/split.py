"""From the embeddings of one split to its ranking and CVG-Text metrics.

The gallery of a split is its set of distinct tiles; every caption of the split is a query.
Both protocols are computed: the paper's (each query ranks the ``nearest`` tiles around its
true place) and the whole city as gallery.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from cvgtext.data.dataset import PairDataset
from cvgtext.retrieval.bootstrap import metric_intervals
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
    # the whole gallery's ranking (``ranking`` when nearest is None; None where it was not scored)
    full_city_ranking: Ranking | None = None
    panorama: torch.Tensor | None = None  # [queries] bool: the query is a panorama's text
    queries: torch.Tensor | None = None  # [queries, embed_dim] embeddings of the captions
    query_places: torch.Tensor | None = None  # [queries, 2] latitude, longitude (degrees) of each true place
    gallery_places: torch.Tensor | None = None  # [gallery, 2]
    true_rows: torch.Tensor | None = None  # [queries] the gallery row of each caption's tile

    def intervals(self, bootstrap: int = 0, seed: int = 0, level: float = 0.95) -> dict[str, Any]:
        """Bootstrap intervals of :attr:`metrics` and :attr:`full_city_metrics` from ``bootstrap``
        resamples of the queries (the ``eval`` settings; see
        :func:`~cvgtext.retrieval.bootstrap.metric_intervals`), with how they were drawn; ``{}``
        when ``bootstrap`` is 0."""
        if not bootstrap:
            return {}
        resamples = int(bootstrap)
        rankings = {"intervals": self.ranking, "full_city": self.full_city_ranking}
        rankings = {key: ranking for key, ranking in rankings.items() if ranking is not None}
        return {
            "method": "percentile bootstrap, queries resampled with replacement within each text view",
            "resamples": resamples,
            "level": float(level),
            "seed": int(seed),
            **{
                key: metric_intervals(ranking, self.panorama, resamples, seed, level)
                for key, ranking in rankings.items()
            },
        }


@dataclass
class SplitLayout:
    """A split's queries and gallery as evaluation sees them: every caption a query, the distinct
    tiles (first occurrence of each name) the gallery."""

    index: list[int]  # dataset positions of the queries
    names: list[str]  # [queries] file names
    places: torch.Tensor  # [queries, 2] latitude, longitude in degrees
    panorama: torch.Tensor  # [queries] bool
    gallery_positions: list[int]  # the gallery tiles' rows among the queries
    gallery_names: list[str]
    gallery_places: torch.Tensor  # [gallery, 2]


def split_layout(index: list[int], dataset: PairDataset, nearest: int | None) -> SplitLayout:
    """The layout of the pairs ``index`` of ``dataset``, in that order."""
    pairs = [dataset.pairs[i] for i in index]
    names = [pair.name for pair in pairs]
    places = torch.tensor([(pair.lat, pair.lon) for pair in pairs], dtype=torch.float64).reshape(len(pairs), 2)
    first_of_name = first_of_each_name(names)
    positions = list(first_of_name.values())
    if nearest is not None and len(first_of_name) < nearest:
        log.info(
            "The %s gallery has %d tiles, fewer than the protocol's %d nearest: every query ranks all of them",
            dataset.split,
            len(first_of_name),
            nearest,
        )
    return SplitLayout(
        index=index,
        names=names,
        places=places,
        panorama=torch.tensor([pair.is_panorama for pair in pairs], dtype=torch.bool),
        gallery_positions=positions,
        gallery_names=list(first_of_name),
        gallery_places=places[positions],
    )


def evaluation_of(
    layout: SplitLayout,
    rank: Callable[[int | None], Ranking],
    nearest: int | None,
    whole_gallery: bool = True,
    gallery: torch.Tensor | None = None,
    queries: torch.Tensor | None = None,
) -> Evaluation:
    """The evaluation of a split whose rankings ``rank(nearest)`` gives; ``whole_gallery=False``
    leaves the whole gallery's figures out (they cost a pair scorer every pair)."""
    ranking = rank(nearest)
    whole = ranking if nearest is None else (rank(None) if whole_gallery else None)
    row_of_name = {name: row for row, name in enumerate(layout.gallery_names)}
    return Evaluation(
        query_index=layout.index,
        gallery_index=[layout.index[p] for p in layout.gallery_positions],
        ranking=ranking,
        metrics=summarize(ranking, layout.panorama),
        full_city_metrics=summarize(whole, layout.panorama) if whole is not None else {},
        nearest=nearest,
        gallery=gallery,
        full_city_ranking=whole,
        panorama=layout.panorama,
        queries=queries,
        query_places=layout.places,
        gallery_places=layout.gallery_places,
        true_rows=torch.tensor([row_of_name[name] for name in layout.names], dtype=torch.long),
    )


def evaluate_split(embedded: EmbeddedSplit, dataset: PairDataset, nearest: int | None = 100) -> Evaluation:
    """Rank each caption's gallery and compute the metrics of both protocols."""
    layout = split_layout(embedded.index.tolist(), dataset, nearest)
    gallery = embedded.image[layout.gallery_positions]

    def rank(nearest: int | None) -> Ranking:
        return rank_gallery(
            embedded.text, gallery, layout.names, layout.gallery_names, layout.places, layout.gallery_places, nearest
        )

    return evaluation_of(layout, rank, nearest, gallery=gallery, queries=embedded.text)


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
