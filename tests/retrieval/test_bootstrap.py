"""Bootstrap intervals of the metrics: the per-query values they resample are the metrics' own,
the resampling is what it says, and the intervals cover as a 95 % interval should."""

from __future__ import annotations

import math

import pytest
import torch

from cvgtext.retrieval.bootstrap import metric_intervals, per_query_values, percentile_interval, resampled_means
from cvgtext.retrieval.metrics import geo_retrieval_metrics
from cvgtext.retrieval.ranking import NOT_RANKED, Ranking, rank_similarity, summarize
from cvgtext.retrieval.split import evaluate_split
from helpers.city import city_names


def ranking_of(ranks: list[int], errors_km: list[float] | None = None) -> Ranking:
    """A ranking whose true names sit at ``ranks`` (0: not ranked)."""
    true_rank = torch.tensor(ranks, dtype=torch.long)
    error = torch.tensor(errors_km if errors_km is not None else [0.0 if r == 1 else 1.0 for r in ranks])
    return Ranking(
        torch.zeros(len(ranks), 1, dtype=torch.long), torch.zeros(len(ranks), 1), true_rank, error.double(), 100
    )


def test_the_per_query_values_average_to_the_reported_metrics():
    queries, gallery = city_names(seed=7, tiles=150, duplicates=5, strangers=4, new_york=0.2)
    from cvgtext.data.names import is_panorama, parse_places

    sim = torch.rand(len(queries), len(gallery), generator=torch.Generator().manual_seed(8))
    places = parse_places([*queries, *gallery])
    panorama = torch.tensor([is_panorama(name) for name in queries])
    for nearest in (100, 10, None):
        ranking = rank_similarity(sim, queries, gallery, places[: len(queries)], places[len(queries) :], nearest)
        metrics = summarize(ranking, panorama)
        assert metrics == geo_retrieval_metrics(sim, queries, gallery, nearest=nearest)
        values = per_query_values(ranking)
        assert set(values) == set(metrics["all"]) - {"count"}
        for group, members in (("all", torch.ones_like(panorama)), ("panorama", panorama), ("single", ~panorama)):
            for name, value in values.items():
                assert float(value[members].mean()) == pytest.approx(metrics[group][name], rel=1e-12, abs=1e-12)


def test_a_query_whose_true_tile_is_not_ranked_adds_nothing_to_mrr():
    values = per_query_values(ranking_of([1, 4, NOT_RANKED, 2]))
    assert values["MRR"].tolist() == [100.0, 25.0, 0.0, 50.0]
    assert summarize(ranking_of([1, 4, NOT_RANKED, 2]), [True] * 4)["all"]["MRR"] == pytest.approx(43.75)


def test_resampled_means_are_the_means_of_queries_drawn_with_replacement():
    values = torch.randn(3, 57, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    means = resampled_means(values, 40, torch.Generator().manual_seed(5))
    draws = torch.randint(0, 57, (40, 57), generator=torch.Generator().manual_seed(5))
    assert means.shape == (3, 40)
    assert torch.allclose(means, values[:, draws].mean(2), rtol=0, atol=1e-12)


def test_intervals_hold_the_estimate_are_seeded_and_narrow_with_more_queries():
    small = ranking_of([1, 2, 1, 3, NOT_RANKED] * 8)
    large = ranking_of([1, 2, 1, 3, NOT_RANKED] * 80)
    views = [True, False] * 20
    first = metric_intervals(small, views, resamples=500, seed=3)
    assert first == metric_intervals(small, views, resamples=500, seed=3)
    assert first != metric_intervals(small, views, resamples=500, seed=4)
    estimate = summarize(small, views)
    for group in ("all", "panorama", "single"):
        for name, (low, high) in first[group].items():
            assert low <= estimate[group][name] <= high, (group, name)
    wide = first["all"]["R@1"][1] - first["all"]["R@1"][0]
    narrow = metric_intervals(large, [True] * 400, resamples=500, seed=3)["all"]["R@1"]
    assert narrow[1] - narrow[0] < wide / 2  # ten times the queries: about a third of the width
    inner = metric_intervals(small, views, resamples=500, seed=3, level=0.5)["all"]["R@1"]
    assert first["all"]["R@1"][0] <= inner[0] <= inner[1] <= first["all"]["R@1"][1]


def test_each_text_view_is_resampled_among_its_own_queries():
    # Every panorama text found first, every single-view text missed: no resample can mix them.
    intervals = metric_intervals(ranking_of([1] * 30 + [NOT_RANKED] * 10), [True] * 30 + [False] * 10, 200)
    assert intervals["panorama"]["R@1"] == [100.0, 100.0] and intervals["single"]["R@1"] == [0.0, 0.0]
    low, high = intervals["all"]["R@1"]
    assert 55 < low < 75 < high < 95  # about 75 +- 13
    assert "single" not in metric_intervals(ranking_of([1, 2]), [True, True], 50)


def test_a_95_percent_interval_covers_the_true_rate_about_95_times_in_100():
    """R@1 of queries each found with probability 0.3: over 300 drawn splits of 150 queries, the
    share of intervals that hold 30 % is near 95 % (a binomial spread of about 1.3 points)."""
    generator = torch.Generator().manual_seed(11)
    covered = 0
    trials = 300
    for trial in range(trials):
        found = torch.rand(150, generator=generator) < 0.3
        ranking = ranking_of(torch.where(found, 1, 2).tolist())
        low, high = metric_intervals(ranking, [True] * 150, resamples=400, seed=trial)["all"]["R@1"]
        covered += low <= 30.0 <= high
    assert 0.90 <= covered / trials <= 0.99


def test_the_interval_leaves_half_the_rest_out_on_each_side():
    """The central 95 % of 0, 1, ..., 1000 runs from 25 to 975 (a 90 % one from 50 to 950): the
    coverage check above cannot tell a 95 % interval from a slightly narrower one."""
    means = torch.arange(1001, dtype=torch.float64)[None]
    assert percentile_interval(means, 0.95) == [pytest.approx((25.0, 975.0))]
    assert percentile_interval(means, 0.90) == [pytest.approx((50.0, 950.0))]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="resamples"):
        metric_intervals(ranking_of([1]), [True], resamples=-1)
    with pytest.raises(ValueError, match="level"):
        metric_intervals(ranking_of([1]), [True], resamples=10, level=1.5)


def test_an_evaluation_qualifies_both_protocols(small_split):
    embedded, dataset = small_split
    evaluation = evaluate_split(embedded, dataset, nearest=2)
    assert evaluation.intervals(0) == {}
    confidence = evaluation.intervals(bootstrap=200, seed=1)
    assert confidence["resamples"] == 200 and confidence["level"] == 0.95 and confidence["seed"] == 1
    assert set(confidence["intervals"]) == set(evaluation.metrics) == {"all", "panorama", "single"}
    for protocol, metrics in (("intervals", evaluation.metrics), ("full_city", evaluation.full_city_metrics)):
        for group, values in metrics.items():
            for name, (low, high) in confidence[protocol][group].items():
                assert low <= values[name] <= high or math.isclose(low, values[name])
    # the single-view group is one query: its interval is that query's value
    assert confidence["intervals"]["single"]["R@1"] == [100.0, 100.0]
