"""Calibrated confidence: the fitted temperature, the probability of the top-1, the 80 % area,
combined descriptions, and the figures that say whether a confidence can be trusted."""

from __future__ import annotations

import math

import pytest
import torch

from cvgtext.retrieval.calibration import (
    area_members,
    candidate_scores,
    combined_scores,
    confidence,
    fit_on_embeddings,
    fit_temperature,
    log_probabilities,
    true_columns,
)
from cvgtext.retrieval.reliability import (
    brier_score,
    calibration_summary,
    coverage_table,
    expected_calibration_error,
    reliability_bins,
    risk_coverage,
)


def drawn_from_softmax(queries: int, candidates: int, temperature: float, seed: int):
    """Scores like cosines, and true candidates drawn from their softmax at ``temperature``: a
    world in which that temperature is the calibrated one."""
    generator = torch.Generator().manual_seed(seed)
    scores = torch.rand(queries, candidates, generator=generator, dtype=torch.float64) * 0.6
    scores[:, 0] += torch.rand(queries, generator=generator, dtype=torch.float64) * 0.3  # some clear winners
    true = torch.multinomial(torch.softmax(scores / temperature, 1), 1, generator=generator).squeeze(1)
    return scores, true


def test_the_fitted_temperature_is_the_one_the_outcomes_were_drawn_at():
    for temperature in (0.02, 0.05, 0.2):
        scores, true = drawn_from_softmax(4000, 50, temperature, seed=int(temperature * 1000))
        fitted = fit_temperature(scores, true)
        assert fitted.temperature == pytest.approx(temperature, rel=0.08), temperature
        assert fitted.queries == 4000 and fitted.split == "val"


def test_the_fit_minimises_the_negative_log_likelihood_found_by_a_grid():
    scores, true = drawn_from_softmax(500, 30, 0.07, seed=1)
    fitted = fit_temperature(scores, true)
    grid = torch.exp(torch.linspace(math.log(0.01), math.log(1.0), 4001, dtype=torch.float64))
    nll = torch.stack([-(torch.log_softmax(scores / t, 1).gather(1, true[:, None])).mean() for t in grid])
    best = float(grid[nll.argmin()])
    assert fitted.temperature == pytest.approx(best, rel=0.01)
    assert fitted.nll == pytest.approx(float(nll.min()), abs=1e-6)


def test_queries_without_their_tile_are_left_out_and_test_is_refused():
    scores, true = drawn_from_softmax(300, 20, 0.1, seed=2)
    with_strangers = torch.cat([true[:200], torch.full((100,), -1)])
    assert fit_temperature(scores, with_strangers).queries == 200
    assert fit_temperature(scores, with_strangers).temperature == pytest.approx(
        fit_temperature(scores[:200], true[:200]).temperature
    )
    with pytest.raises(ValueError, match="never fitted on the test split"):
        fit_temperature(scores, true, split="test")
    with pytest.raises(ValueError, match="never fitted on the test split"):
        fit_on_embeddings(torch.eye(3), torch.eye(3), torch.arange(3), split="test")
    with pytest.raises(ValueError, match="nothing to fit"):
        fit_temperature(scores, torch.full((300,), -1))


def test_perfect_rankings_give_a_cold_temperature_not_an_endless_loop():
    scores = torch.eye(20, dtype=torch.float64)
    fitted = fit_temperature(scores, torch.arange(20))
    assert fitted.temperature <= 1e-3 and fitted.nll < 1e-6


def test_an_area_holds_the_true_place_as_often_as_it_says_where_the_model_is_calibrated():
    generator = torch.Generator().manual_seed(3)
    queries, candidates = 3000, 40
    scores, true = drawn_from_softmax(queries, candidates, 0.05, seed=3)
    places = torch.stack(
        [torch.rand(candidates, generator=generator) * 0.02 - 27.47, torch.full((candidates,), 153.0)], 1
    )
    log_p = log_probabilities(scores, 0.05)
    found = confidence(log_p, places, true, probability=0.8)
    # The smallest set holding 80 % holds a little more (whole tiles): it should hold the true
    # tile as often as the probability it holds, at least 80 %.
    held = log_p.exp().sort(1, descending=True).values.cumsum(1).gather(1, found.area_size[:, None] - 1)
    assert (held >= 0.8 - 1e-9).all() and (held.squeeze(1) - log_p.exp().amax(1) < 0.8).all()
    coverage = float(found.in_area.double().mean())
    assert abs(coverage - float(held.mean())) < 3 * math.sqrt(0.8 * 0.2 / queries), (coverage, float(held.mean()))
    assert float(found.in_radius.double().mean()) >= 0.8 - 3 * math.sqrt(0.16 / queries)
    right = true == scores.argmax(1)
    assert expected_calibration_error(found.top1, right) < 0.03
    # an over-confident temperature holds the place less often than it says
    cold = confidence(log_probabilities(scores, 0.01), places, true, probability=0.8)
    assert float(cold.in_area.double().mean()) < 0.7
    assert expected_calibration_error(cold.top1, right) > 0.1


def test_the_area_and_its_radius_on_a_small_example():
    # four tiles on a meridian, 0, 100, 200 and 1000 m north of the first
    lat = torch.tensor([0.0, 100, 200, 1000], dtype=torch.float64) / 111_194.93
    places = torch.stack([lat, torch.zeros(4, dtype=torch.float64)], 1)
    p = torch.tensor([[0.5, 0.1, 0.25, 0.15], [0.1, 0.2, 0.6, 0.1]], dtype=torch.float64)
    found = confidence(p.log(), places, torch.tensor([3, 1]), probability=0.8, within_m=150)
    assert found.top1.tolist() == pytest.approx([0.5, 0.6])
    # within 150 m of tile 0: tiles 0 and 1; of tile 2: tiles 1, 2 and 3? no: 1 and 2 (3 is 800 m off)
    assert found.within.tolist() == pytest.approx([0.6, 0.8])
    # by falling probability 0.5, 0.25, 0.15 -> 0.9 >= 0.8: three tiles; 0.6, 0.2 -> 0.8: two
    assert found.area_size.tolist() == [3, 2]
    # from tile 0 outwards 0.5, 0.6, 0.85: 200 m; from tile 2: 0.6, +0.2 at 100 m = 0.8: 100 m
    assert found.area_radius_m.tolist() == pytest.approx([200, 100], abs=0.01)
    assert found.in_area.tolist() == [True, True] and found.in_radius.tolist() == [False, True]
    assert area_members(p[0].log(), 0.8).tolist() == [0, 2, 3]
    assert area_members(p[1].log(), 0.8).tolist() == [2, 1]


def test_candidates_under_the_protocol_are_the_whole_rows_scores_at_the_nearest_tiles():
    generator = torch.Generator().manual_seed(4)
    gallery = torch.nn.functional.normalize(torch.randn(300, 8, generator=generator), dim=1)
    queries = torch.nn.functional.normalize(torch.randn(25, 8, generator=generator), dim=1)
    places = torch.stack(
        [torch.rand(300, generator=generator) * 0.05 - 27.5, 153 + torch.rand(300, generator=generator) * 0.05], 1
    )
    true_rows = torch.randint(0, 300, (25,), generator=generator)
    query_places = places[true_rows].double()
    full = queries @ gallery.T
    seen = 0
    for start, stop, scores, columns in candidate_scores(
        queries, gallery, query_places, places.double(), 100, chunk_size=7
    ):
        assert columns.shape == (stop - start, 100)
        assert torch.allclose(scores, full[start:stop].gather(1, columns), atol=1e-6)
        # the 100 nearest hold each query's own tile (distance 0)
        cols = true_columns(true_rows[start:stop], columns)
        assert (cols >= 0).all() and (columns.gather(1, cols[:, None]).squeeze(1) == true_rows[start:stop]).all()
        seen += stop - start
    assert seen == 25
    [(_, _, whole, none)] = list(candidate_scores(queries, gallery))
    assert none is None and torch.equal(whole, full)


def test_combined_descriptions_are_the_normalised_product_of_each_ones_probabilities():
    generator = torch.Generator().manual_seed(5)
    scores = torch.rand(3, 40, generator=generator, dtype=torch.float64)
    temperature = 0.04
    combined = log_probabilities(combined_scores(scores)[None], temperature)[0]
    each = torch.log_softmax(scores / temperature, 1)  # each description alone
    product = each.sum(0)
    assert torch.allclose(combined, product - torch.logsumexp(product, 0), atol=1e-10)
    assert torch.allclose(combined_scores(scores[:1]), scores[0])


def test_reliability_figures_on_a_small_example():
    confidence_ = torch.tensor([0.95, 0.9, 0.85, 0.3, 0.25, 0.05], dtype=torch.float64)
    correct = torch.tensor([True, True, False, True, False, False])
    # bins: [0.9, 1.0) holds 0.95 and 0.9 (both right), [0.8, 0.9) 0.85 (wrong), [0.3, 0.4) 0.3
    # (right), [0.2, 0.3) 0.25 (wrong), [0.0, 0.1) 0.05 (wrong)
    expected = (2 * abs(1 - 0.925) + abs(0 - 0.85) + abs(1 - 0.3) + abs(0 - 0.25) + abs(0 - 0.05)) / 6
    assert expected_calibration_error(confidence_, correct) == pytest.approx(expected)
    assert brier_score(confidence_, correct) == pytest.approx(
        (0.05**2 + 0.1**2 + 0.85**2 + 0.7**2 + 0.25**2 + 0.05**2) / 6
    )
    bins = reliability_bins(confidence_, correct)
    assert [b["count"] for b in bins] == [1, 0, 1, 1, 0, 0, 0, 0, 1, 2] and bins[1]["accuracy"] is None
    coverage, accuracy = risk_coverage(confidence_, correct)
    assert coverage.tolist() == pytest.approx([1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1])
    assert accuracy.tolist() == pytest.approx([1, 1, 2 / 3, 3 / 4, 3 / 5, 3 / 6])
    summary = calibration_summary(confidence_, correct)
    assert summary["accuracy"] == pytest.approx(50.0) and summary["ece"] == pytest.approx(expected)


def test_ties_in_confidence_are_withheld_together():
    confidence_ = torch.tensor([0.9, 0.5, 0.5, 0.5, 0.1])
    correct = torch.tensor([True, False, True, True, False])
    coverage, accuracy = risk_coverage(confidence_, correct)
    assert coverage.tolist() == pytest.approx([0.2, 0.8, 1.0])
    assert accuracy.tolist() == pytest.approx([1.0, 0.75, 0.6])
    table = coverage_table(confidence_, correct, steps=5)
    assert [row["coverage"] for row in table] == pytest.approx([20, 80, 80, 80, 100])
    assert [row["accuracy"] for row in table] == pytest.approx([100, 75, 75, 75, 60])
