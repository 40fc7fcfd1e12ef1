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
    full_city_ranking: Ranking | None = None  # the whole gallery's ranking (``ranking`` when nearest is None)
    panorama: torch.Tensor | None = None  # [queries] bool: the query is a panorama's text

    def intervals(self, bootstrap: int = 0, seed: int = 0, level: float = 0.95) -> dict[str, Any]:
        """Bootstrap intervals of :attr:`metrics` and :attr:`full_city_metrics` from ``bootstrap``
        resamples of the queries (the ``eval`` settings; see
        :func:`~cvgtext.retrieval.bootstrap.metric_intervals`), with how they were drawn; ``{}``
        when ``bootstrap`` is 0."""
        if not bootstrap:
            return {}
        resamples = int(bootstrap)
        rankings = {"intervals": self.ranking, "full_city": self.full_city_ranking}
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
    whole = ranking if nearest is None else rank(None)
    return Evaluation(
        query_index=index,
        gallery_index=[index[p] for p in gallery_positions],
        ranking=ranking,
        metrics=summarize(ranking, panorama),
        full_city_metrics=summarize(whole, panorama),
        nearest=nearest,
        gallery=gallery,
        full_city_ranking=whole,
        panorama=panorama,
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
