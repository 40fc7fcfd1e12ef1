"""How sure a ranking is: a probability over the candidate tiles from the ranking's own scores.

The model of confidence is a softmax over a query's candidates (the whole gallery, or the
protocol's nearest tiles) at a temperature fitted on the validation split:
``p_j = exp(s_j / T) / sum_i exp(s_i / T)``, ``s`` the cosine similarities. From it follow

- the probability that the top-1 tile is the true one (``p`` of the best), and that the true
  place lies within ``within_m`` metres of the top-1 (``p`` summed over the tiles that close);
- the area: the smallest set of tiles whose probabilities sum to ``probability`` (80 %), and
  the smallest radius around the top-1 holding as much;
- several descriptions of one place: their scores summed over the same candidates, each at the
  fitted temperature (the sum of their log-probabilities, normalised again).

The temperature minimises the negative log-likelihood of the true tiles, a convex problem in
``1 / T`` solved by Newton's method. It is fitted on validation queries only
(:func:`fit_temperature` refuses the test split). Why this model, with figures, is in
``docs/where-am-i.md``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from cvgtext.retrieval.geo import haversine_km
from cvgtext.retrieval.nearest_tiles import nearest_entries
from cvgtext.retrieval.ranking import default_chunk_size

log = logging.getLogger(__name__)

AREA_PROBABILITY = 0.8
WITHIN_M = 50.0
MAX_FIT_SCORES = 2**24  # validation scores held for the fit (64 MiB of float32); more queries are subsampled
_INVERSE_T = (1e-2, 1e4)  # the range of 1 / T searched


@dataclass(frozen=True)
class Calibration:
    """A fitted temperature and what it was fitted on."""

    temperature: float  # the softmax over candidates is taken at scores / temperature
    queries: int  # validation queries the fit read
    split: str = "val"
    nll: float = math.nan  # mean negative log-likelihood of the true tiles at the fitted temperature


@dataclass
class Confidence:
    """Per query, what the calibrated distribution over its candidates says; tensors ``[queries]``."""

    top1: torch.Tensor  # float64 probability that the top-1 tile is the true one
    within: torch.Tensor  # float64 probability that the true place is within ``within_m`` of the top-1
    area_size: torch.Tensor  # int64 tiles in the smallest set holding ``probability``
    area_radius_m: torch.Tensor  # float64 radius around the top-1 holding ``probability``
    in_area: torch.Tensor | None = None  # bool: the true tile is in the set (None: no true tiles given)
    in_radius: torch.Tensor | None = None  # bool: the true place is within the radius


def candidate_scores(
    query_emb: torch.Tensor,
    gallery_emb: torch.Tensor,
    query_places: torch.Tensor | None = None,
    gallery_places: torch.Tensor | None = None,
    nearest: int | None = None,
    chunk_size: int | None = None,
) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor | None]]:
    """``(start, stop, scores, columns)`` for chunks of queries: ``scores  # [chunk, candidates]``
    against the whole gallery (``columns`` None), or against each query's ``nearest`` tiles to its
    true place (``columns  # [chunk, nearest]`` gallery rows), as the ranking protocol does."""
    columns_all = None
    if nearest is not None and nearest < gallery_emb.shape[0]:
        columns_all, _ = nearest_entries(query_places.double(), gallery_places.double(), nearest)
    chunk_size = chunk_size or default_chunk_size(gallery_emb.shape[0])
    for start in range(0, query_emb.shape[0], chunk_size):
        stop = min(start + chunk_size, query_emb.shape[0])
        if columns_all is None:
            yield start, stop, query_emb[start:stop] @ gallery_emb.T, None
        else:
            columns = columns_all[start:stop]
            yield start, stop, (gallery_emb[columns] @ query_emb[start:stop, :, None]).squeeze(2), columns


def true_columns(true_rows: torch.Tensor, columns: torch.Tensor | None) -> torch.Tensor:
    """``[chunk]`` the column of each query's true gallery row among its candidates; -1 where absent."""
    if columns is None:
        return true_rows.clone()
    hit = columns == true_rows[:, None]
    return torch.where(hit.any(1), hit.long().argmax(1), -1)


def fit_temperature(scores: torch.Tensor, true: torch.Tensor, split: str = "val") -> Calibration:
    """The temperature minimising the mean negative log-likelihood of the true candidates.

    ``scores  # [queries, candidates]``, ``true  # [queries]`` the true candidate's column (-1:
    none among the candidates; such queries are left out). Newton's method on ``b = 1 / T``:
    the objective ``mean(logsumexp(b s) - b s_true)`` is convex in ``b``, its derivative the mean
    of ``E_p[s] - s_true`` and its second derivative the mean variance of ``s`` under ``p``.
    """
    if split == "test":
        raise ValueError("a calibration is never fitted on the test split; fit it on the validation split")
    keep = true >= 0
    scores, true = scores[keep].double(), true[keep]
    if not len(true):
        raise ValueError("no validation query has its true tile among its candidates: nothing to fit")
    true_score = scores.gather(1, true[:, None]).squeeze(1)

    def objective(b: float) -> tuple[float, float, float]:
        p = torch.softmax(b * scores, dim=1)
        mean = (p * scores).sum(1)
        variance = (p * scores.square()).sum(1) - mean.square()
        nll = torch.logsumexp(b * scores, dim=1) - b * true_score
        return float(nll.mean()), float((mean - true_score).mean()), float(variance.clamp(min=0).mean())

    low, high = _INVERSE_T
    b = 1 / 0.05
    for _ in range(100):
        _, slope, curvature = objective(b)
        if slope > 0:
            high = b
        else:
            low = b
        step = b - slope / curvature if curvature > 0 else math.nan
        # Newton's step where it stays inside the bracket the slopes proved, else bisection.
        b_next = step if low < step < high else (math.sqrt(low * high) if high / low > 1.5 else (low + high) / 2)
        if abs(b_next - b) <= 1e-9 * b:
            b = b_next
            break
        b = b_next
    nll, _, _ = objective(b)
    return Calibration(temperature=1 / b, queries=int(len(true)), split=split, nll=nll)


def fit_on_embeddings(
    query_emb: torch.Tensor,
    gallery_emb: torch.Tensor,
    true_rows: torch.Tensor,
    query_places: torch.Tensor | None = None,
    gallery_places: torch.Tensor | None = None,
    nearest: int | None = None,
    split: str = "val",
) -> Calibration:
    """:func:`fit_temperature` on the scores of validation queries against their candidates
    (``nearest`` as :func:`candidate_scores`); ``true_rows  # [queries]`` their tiles' gallery rows.

    At most :data:`MAX_FIT_SCORES` scores are held: a larger split is fitted on evenly spaced queries.
    """
    if split == "test":
        raise ValueError("a calibration is never fitted on the test split; fit it on the validation split")
    candidates = gallery_emb.shape[0] if nearest is None else min(nearest, gallery_emb.shape[0])
    queries = query_emb.shape[0]
    if queries * candidates > MAX_FIT_SCORES:
        keep = torch.linspace(0, queries - 1, MAX_FIT_SCORES // candidates).round().long().unique()
        log.info("fitting the calibration on %d of %d validation queries", len(keep), queries)
        query_emb, true_rows = query_emb[keep], true_rows[keep]
        query_places = query_places[keep] if query_places is not None else None
    parts, trues = [], []
    for start, stop, scores, columns in candidate_scores(query_emb, gallery_emb, query_places, gallery_places, nearest):
        parts.append(scores.float())
        trues.append(true_columns(true_rows[start:stop], columns))
    return fit_temperature(torch.cat(parts), torch.cat(trues), split)


def log_probabilities(scores: torch.Tensor, temperature: float) -> torch.Tensor:
    """``[queries, candidates]`` float64 log-probabilities of the candidates; for several
    descriptions of one place, pass their scores summed (:func:`combined_scores`)."""
    return torch.log_softmax(scores.double() / temperature, dim=-1)


def combined_scores(scores: torch.Tensor) -> torch.Tensor:
    """``[candidates]``: the scores of several descriptions of one place (``[descriptions,
    candidates]``) summed; at the fitted temperature their softmax is the normalised product of
    each description's probabilities."""
    return scores.double().sum(0)


def confidence(
    log_p: torch.Tensor,
    candidate_places: torch.Tensor,
    true: torch.Tensor | None = None,
    probability: float = AREA_PROBABILITY,
    within_m: float = WITHIN_M,
) -> Confidence:
    """What ``log_p  # [queries, candidates]`` says about each query's answer.

    ``candidate_places``: ``[candidates, 2]`` (shared by every query) or ``[queries, candidates,
    2]`` latitude and longitude in degrees; ``true  # [queries]`` the true candidate's column (-1:
    absent), for the coverage of the areas.
    """
    if not 0 < probability <= 1:
        raise ValueError(f"the area's probability must lie in (0, 1], got {probability}")
    p = log_p.exp()
    top1_p, top1 = p.max(1)
    rows = torch.arange(p.shape[0])
    places = candidate_places.double()
    if places.ndim == 2:
        places = places.expand(p.shape[0], -1, -1)
    best = places[rows, top1]  # [queries, 2]
    distance_m = 1000 * haversine_km(best[:, :1], best[:, 1:], places[..., 0], places[..., 1])  # [queries, candidates]
    within = (p * (distance_m <= within_m)).sum(1).clamp(max=1)
    # The set: candidates by falling probability until they hold `probability` (float rounding allowed).
    by_p = p.argsort(dim=1, descending=True, stable=True)
    held = p.gather(1, by_p).cumsum(1)
    area_size = ((held < probability - 1e-9).sum(1) + 1).clamp(max=p.shape[1])
    # The radius: candidates by distance from the top-1 until they hold `probability`.
    by_distance = distance_m.argsort(dim=1, stable=True)
    held_near = p.gather(1, by_distance).cumsum(1)
    reach = ((held_near < probability - 1e-9).sum(1)).clamp(max=p.shape[1] - 1)
    area_radius_m = distance_m.gather(1, by_distance).gather(1, reach[:, None]).squeeze(1)
    result = Confidence(top1_p, within, area_size, area_radius_m)
    if true is not None:
        present = true >= 0
        safe = true.clamp(min=0)
        position = (by_p == safe[:, None]).long().argmax(1)
        result.in_area = present & (position < area_size)
        true_distance = distance_m.gather(1, safe[:, None]).squeeze(1)
        result.in_radius = present & (true_distance <= area_radius_m + 1e-6)
    return result


def area_members(log_p: torch.Tensor, probability: float = AREA_PROBABILITY) -> torch.Tensor:
    """``[members]`` the columns of the smallest set of candidates of one query (``log_p  #
    [candidates]``) holding ``probability``, most probable first."""
    p = log_p.exp()
    order = p.argsort(descending=True, stable=True)
    size = int((p[order].cumsum(0) < probability - 1e-9).sum()) + 1
    return order[: min(size, len(order))]
