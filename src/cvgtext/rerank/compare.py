"""Re-ranking a split's rankings and measuring what it changed.

The queries re-ranked are a seeded sample of the split (``max_queries``; all when null). Their
metrics are reported without and with re-ranking, on the same queries and the same protocol,
with a paired bootstrap interval for each difference.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from cvgtext.data.dataset import PairDataset
from cvgtext.rerank import Query, Reranked, Reranker, failure_counts, rerank, status_counts
from cvgtext.retrieval.bootstrap import paired_bootstrap
from cvgtext.retrieval.ranking import NOT_RANKED, Ranking, summarize, top1_error
from cvgtext.retrieval.split import Evaluation

log = logging.getLogger(__name__)

BOOTSTRAP_SAMPLES = 2000


@dataclass
class SplitReranking:
    """The re-ranked queries of a split and the two sets of metrics."""

    queries: list[int]  # positions in the evaluation's query list
    results: list[Reranked]
    before: Ranking  # the dual encoder's ranking of those queries
    after: Ranking
    metrics: dict[str, Any]  # for metrics.json: settings, counts, without / with / difference


def sample_queries(count: int, max_queries: int | None, seed: int) -> list[int]:
    """``max_queries`` of ``count`` queries drawn with ``seed``, in query order; all when None."""
    if max_queries is None or max_queries >= count:
        return list(range(count))
    generator = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(count, generator=generator)[:max_queries].tolist())


def select(ranking: Ranking, rows: Sequence[int]) -> Ranking:
    at = torch.tensor(list(rows), dtype=torch.long)
    return Ranking(
        ranking.indices[at], ranking.scores[at], ranking.true_rank[at], ranking.top1_error_km[at], ranking.nearest
    )


def apply_order(
    ranking: Ranking, results: Sequence[Reranked], query_places: torch.Tensor, gallery_places: torch.Tensor
) -> Ranking:
    """``ranking`` (of the re-ranked queries) with each row's candidates in its new order.

    A true tile among the re-ordered candidates moves with them; one below them keeps its rank.
    """
    indices, scores, true_rank = ranking.indices.clone(), ranking.scores.clone(), ranking.true_rank.clone()
    for row, result in enumerate(results):
        order = torch.tensor(result.order, dtype=torch.long)
        width = len(order)
        indices[row, :width] = ranking.indices[row, order]
        scores[row, :width] = ranking.scores[row, order]
        old = int(ranking.true_rank[row])
        if old != NOT_RANKED and old <= width:
            true_rank[row] = result.order.index(old - 1) + 1
    return Ranking(
        indices, scores, true_rank, top1_error(indices, true_rank, query_places, gallery_places), ranking.nearest
    )


def rerank_split(
    evaluation: Evaluation,
    dataset: PairDataset,
    reranker: Reranker,
    weight: float,
    max_queries: int | None,
    seed: int = 0,
) -> SplitReranking:
    """Re-rank a sample of ``evaluation``'s queries and compare the metrics on them."""
    chosen = sample_queries(len(evaluation.query_index), max_queries, seed)
    ranking = evaluation.ranking
    asked = []
    for row in chosen:
        candidates = [position for position in ranking.indices[row, : reranker.top_k].tolist() if position >= 0]
        asked.append(
            Query(
                dataset.pairs[evaluation.query_index[row]].caption,
                [dataset.pairs[evaluation.gallery_index[p]].image_path for p in candidates],
                ranking.scores[row, : len(candidates)].tolist(),
            )
        )
    log.info("Re-ranking the top %d of %d queries with %s", reranker.top_k, len(chosen), reranker.name)
    results = rerank(reranker, asked, weight)
    query_pairs = [dataset.pairs[evaluation.query_index[row]] for row in chosen]
    query_places = torch.tensor([(p.lat, p.lon) for p in query_pairs], dtype=torch.float64).reshape(-1, 2)
    gallery_places = torch.tensor(
        [(dataset.pairs[i].lat, dataset.pairs[i].lon) for i in evaluation.gallery_index], dtype=torch.float64
    ).reshape(-1, 2)
    before = select(ranking, chosen)
    after = apply_order(before, results, query_places, gallery_places)
    panorama = [pair.is_panorama for pair in query_pairs]
    reranked = sum(result.reranked for result in results)
    metrics = {
        **(reranker.settings() if hasattr(reranker, "settings") else {"reranker": reranker.name}),
        "weight": weight,
        "queries": len(chosen),
        "reranked": reranked,
        "queries_by_status": status_counts(results),
        "failed_requests": failure_counts(results),
        "without": summarize(before, panorama),
        "with": summarize(after, panorama),
        "difference": paired_bootstrap(before, after, BOOTSTRAP_SAMPLES, seed=seed),
    }
    if reranked < len(chosen):
        log.warning(
            "%d of %d queries were re-ranked; the others kept their order: %s",
            reranked,
            len(chosen),
            ", ".join(f"{status} {count}" for status, count in metrics["queries_by_status"].items()),
        )
    return SplitReranking(chosen, results, before, after, metrics)


def comparison_table(reranking: SplitReranking, keys: Sequence[str] = ("R@1", "R@5", "L@50", "mean_error_km")) -> str:
    """Without and with re-ranking on the re-ranked queries, and the difference with its interval."""
    metrics = reranking.metrics
    lines = [
        f"re-ranking ({metrics.get('mode', metrics['reranker'])}, top {metrics.get('top_k')}, weight "
        f"{metrics['weight']:g}): {metrics['reranked']} of {metrics['queries']} queries re-ranked",
        f"{'metric':<14}{'without':>10}{'with':>10}{'difference':>12}{'95% interval':>22}",
    ]
    for key in keys:
        difference = metrics["difference"].get(key)
        interval = f"[{difference['low']:+.2f}, {difference['high']:+.2f}]" if difference else ""
        change = f"{difference['difference']:+.2f}" if difference else ""
        lines.append(
            f"{key:<14}{metrics['without']['all'][key]:>10.2f}{metrics['with']['all'][key]:>10.2f}"
            f"{change:>12}{interval:>22}"
        )
    if metrics["reranked"] < metrics["queries"]:
        lines.append(
            "kept their order: "
            + ", ".join(
                f"{count} {status}" for status, count in metrics["queries_by_status"].items() if status != "re-ranked"
            )
        )
    if metrics["failed_requests"]:
        lines.append("failed requests: " + ", ".join(f"{k} {v}" for k, v in metrics["failed_requests"].items()))
    return "\n".join(lines)
