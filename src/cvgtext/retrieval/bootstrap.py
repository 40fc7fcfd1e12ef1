"""How sure the metrics are: percentile bootstrap intervals, the queries resampled with replacement.

Every metric of :func:`~cvgtext.retrieval.ranking.summarize` is a mean over the queries of a
per-query value (a hit of R@k or L@m is 100 or 0, the reciprocal rank in percent, the top-1
error in km), so a resample of the queries is a vector of counts and its metrics one matrix
product. Intervals are drawn per text view (each view's queries resampled among themselves) and
seeded, so the same run gives the same intervals; a paired comparison of two rankings of the same
queries (a re-ranking) resamples both alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cvgtext.retrieval.ranking import LOCALIZED_WITHIN_M, RECALL_AT, Ranking, reciprocal_ranks

DEFAULT_RESAMPLES = 1000
DEFAULT_LEVEL = 0.95
# Elements of one block of resample counts ([resamples, queries] float64): 64 MiB
_BLOCK = 2**23


def per_query_values(ranking: Ranking) -> dict[str, torch.Tensor]:
    """Each query's contribution to each metric, ``[queries]`` float64: percent, or km for the error."""
    values = {f"R@{k}": 100.0 * ranking.hits(k).double() for k in RECALL_AT}
    for metres in LOCALIZED_WITHIN_M:
        values[f"L@{metres}"] = 100.0 * (ranking.top1_error_km <= metres / 1000).double()
    values["mean_error_km"] = ranking.top1_error_km.double()
    values["MRR"] = 100.0 * reciprocal_ranks(ranking)
    return values


def resampled_means(values: torch.Tensor, resamples: int, generator: torch.Generator) -> torch.Tensor:
    """``[metrics, resamples]``: the means of ``values  # [metrics, queries]`` over ``resamples``
    resamples of the queries, drawn with replacement by ``generator``."""
    metrics, queries = values.shape
    block = max(1, _BLOCK // max(1, queries))
    means = []
    for start in range(0, resamples, block):
        rows = min(block, resamples - start)
        draws = torch.randint(0, queries, (rows, queries), generator=generator)
        counts = torch.zeros(rows, queries, dtype=torch.float64).scatter_add_(
            1, draws, torch.ones(rows, queries, dtype=torch.float64)
        )
        means.append(values @ counts.T / queries)  # [metrics, rows]
    return torch.cat(means, dim=1)


def percentile_interval(means: torch.Tensor, level: float) -> list[tuple[float, float]]:
    """Per row of ``means  # [metrics, resamples]``: the central ``level`` share of its values."""
    tail = (1 - level) / 2
    bounds = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=means.dtype), dim=1)  # [2, metrics]
    return [(float(low), float(high)) for low, high in bounds.T.tolist()]


def check_settings(resamples: int, level: float) -> None:
    if resamples < 0 or not 0 < level < 1:
        raise ValueError(f"bootstrap resamples must be >= 0 and the level in (0, 1), got {resamples} and {level}")


def metric_intervals(
    ranking: Ranking,
    panorama: torch.Tensor | Sequence[bool],
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> dict[str, dict[str, list[float]]]:
    """``{"all": {"R@1": [low, high], ...}, "panorama": ..., "single": ...}``: the ``level``
    interval of each metric of :func:`summarize`, for the groups it reports."""
    check_settings(resamples, level)
    panorama = torch.as_tensor(panorama, dtype=torch.bool).cpu()
    values = per_query_values(ranking)
    stacked = torch.stack(list(values.values()))  # [metrics, queries]
    generator = torch.Generator().manual_seed(seed)
    intervals = {}
    for group, members in {"all": torch.ones_like(panorama), "panorama": panorama, "single": ~panorama}.items():
        if not members.any():
            continue
        bounds = percentile_interval(resampled_means(stacked[:, members], resamples, generator), level)
        intervals[group] = {name: [low, high] for name, (low, high) in zip(values, bounds)}
    return intervals


def paired_bootstrap(
    before: Ranking, after: Ranking, samples: int = 2000, seed: int = 0, level: float = DEFAULT_LEVEL
) -> dict[str, dict[str, float]]:
    """Per metric: the mean difference ``after - before`` over the same queries and its interval,
    both rankings resampled alike. Metrics undefined for some query (NaN) are left out."""
    check_settings(samples, level)
    first, second = per_query_values(before), per_query_values(after)
    names = [name for name in first if not (second[name] - first[name]).isnan().any()]
    difference = torch.stack([second[name] - first[name] for name in names])  # [metrics, queries]
    generator = torch.Generator().manual_seed(seed)
    bounds = percentile_interval(resampled_means(difference, samples, generator), level)
    return {
        name: {"difference": float(row.mean()), "low": low, "high": high}
        for name, row, (low, high) in zip(names, difference, bounds)
    }
