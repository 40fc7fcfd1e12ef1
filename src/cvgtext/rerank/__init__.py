"""Re-ranking the top candidates of a description after the dual encoder has ranked them.

A re-ranker judges each of a query's top-k tiles (:class:`Judged`: a value in [0, 1] or a
failure, and a reason) and :func:`reorder` turns the judgements into a new order:

    score_i = similarity_i + weight * value_i / sum(value_j over the judged candidates j)

The normalised values form a distribution over the judged candidates, so ``weight`` is on the
scale of the cosine similarity whatever k is. A candidate whose judgement failed (no reply, a
reply that is not the JSON asked for, a value out of range, too late) keeps its place in the
dual encoder's order; the judged candidates are re-ordered among the remaining places. A query
with fewer than two judged candidates keeps its order and is reported as not re-ranked.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

RERANKED = "re-ranked"


@dataclass
class Judged:
    """A re-ranker's word on one candidate: ``value`` in [0, 1] (None: no usable judgement)."""

    value: float | None
    reason: str = ""
    failures: Counter = field(default_factory=Counter)  # kind of failure -> count, of its requests


@dataclass
class Query:
    """What a re-ranker is given: the description and its candidates, best first."""

    description: str
    tiles: Sequence[Path]  # image files of the candidates
    scores: Sequence[float]  # the dual encoder's similarities


@dataclass
class Reranked:
    """A query's new order: ``order[new position] = old position``, with what decided it."""

    order: list[int]
    status: str  # RERANKED, or why the order was kept
    judged: list[Judged]
    scores: list[float | None]  # the combined score of each old position; None where not judged

    @property
    def reranked(self) -> bool:
        return self.status == RERANKED


class Reranker(Protocol):
    """Judges the candidates of many queries at once (so requests can run concurrently)."""

    name: str
    top_k: int

    def judge(self, queries: Sequence[Query]) -> list[list[Judged]]: ...


def reorder(scores: Sequence[float], judged: Sequence[Judged], weight: float) -> Reranked:
    """The new order of one query's candidates (see the module's docstring)."""
    if len(scores) != len(judged):
        raise ValueError(f"{len(judged)} judgements for {len(scores)} candidates")
    positions = [i for i, j in enumerate(judged) if j.value is not None]
    order = list(range(len(scores)))
    combined: list[float | None] = [None] * len(scores)
    if len(positions) < 2:
        return Reranked(order, not_reranked(judged), list(judged), combined)
    total = sum(judged[i].value for i in positions)
    for i in positions:
        share = judged[i].value / total if total > 0 else 0.0
        combined[i] = float(scores[i]) + weight * share
    ranked = sorted(positions, key=lambda i: (-combined[i], i))
    for slot, position in zip(positions, ranked):
        order[slot] = position
    return Reranked(order, RERANKED, list(judged), combined)


def not_reranked(judged: Sequence[Judged]) -> str:
    """Why a query with fewer than two judged candidates keeps its order."""
    if len(judged) < 2:
        return "fewer than two candidates"
    kinds = sorted(set().union(*(j.failures for j in judged)))
    return f"fewer than two candidates judged ({', '.join(kinds) or 'no reply'})"


def rerank(reranker: Reranker, queries: Sequence[Query], weight: float) -> list[Reranked]:
    """Judge and re-order the candidates of ``queries`` (each cut to the re-ranker's top k)."""
    cut = [Query(q.description, list(q.tiles)[: reranker.top_k], list(q.scores)[: reranker.top_k]) for q in queries]
    judgements = reranker.judge(cut)
    results = []
    for query, judged in zip(queries, judgements):
        result = reorder(list(query.scores)[: reranker.top_k], judged, weight)
        rest = list(range(len(result.order), len(query.scores)))
        results.append(Reranked(result.order + rest, result.status, result.judged, result.scores))
    return results


def failure_counts(results: Sequence[Reranked]) -> dict[str, int]:
    """How often each kind of failure happened over all requests of ``results``."""
    total: Counter = Counter()
    for result in results:
        for judged in result.judged:
            total.update(judged.failures)
    return dict(sorted(total.items()))


def status_counts(results: Sequence[Reranked]) -> dict[str, int]:
    """How many queries were re-ranked, and how many kept their order for each reason."""
    return dict(Counter(result.status for result in results).most_common())
