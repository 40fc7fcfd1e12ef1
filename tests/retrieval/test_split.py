"""From a split's embeddings to its ranking and the metrics of both protocols, on a split
ranked by hand (``small_split`` in conftest.py)."""

from __future__ import annotations

import logging

import pytest
import torch

from cvgtext.retrieval.geo import haversine_km
from cvgtext.retrieval.split import evaluate_split, flatten_metrics
from helpers.city import SMALL_LAT, SMALL_LON


def distance_km(a: str, b: str) -> float:
    return float(
        haversine_km(
            *(torch.tensor(v, dtype=torch.float64) for v in (SMALL_LAT[a], SMALL_LON, SMALL_LAT[b], SMALL_LON))
        )
    )


def test_the_whole_gallery_ranks_each_caption_against_every_distinct_tile(small_split):
    embedded, dataset = small_split
    evaluation = evaluate_split(embedded, dataset, nearest=None)
    # rows come as dataset positions 2 (C), 0 (A), 3 (A again), 1 (B): the gallery is C, A, B
    assert evaluation.query_index == [2, 0, 3, 1]
    assert evaluation.gallery_index == [2, 0, 1]
    assert torch.equal(evaluation.gallery, embedded.image[[0, 1, 3]])
    assert evaluation.ranking.true_rank.tolist() == [1, 1, 2, 2]
    assert evaluation.ranking.indices[:, :3].tolist() == [[0, 2, 1], [1, 2, 0], [2, 1, 0], [0, 2, 1]]
    metrics = evaluation.metrics
    assert metrics == evaluation.full_city_metrics
    assert metrics["all"]["R@1"] == 50.0 and metrics["all"]["R@5"] == metrics["all"]["R@10"] == 100.0
    assert metrics["all"]["L@50"] == metrics["all"]["L@150"] == 75.0  # only B's caption is off by over 150 m
    assert metrics["all"]["mean_error_km"] == pytest.approx((distance_km("A", "B") + distance_km("B", "C")) / 4)
    assert metrics["all"]["count"] == 4
    assert metrics["panorama"]["R@1"] == pytest.approx(100 / 3) and metrics["panorama"]["count"] == 3
    assert metrics["single"] == {**metrics["single"], "R@1": 100.0, "L@50": 100.0, "mean_error_km": 0.0, "count": 1}


def test_the_nearest_protocol_ranks_only_the_tiles_around_each_true_place(small_split):
    embedded, dataset = small_split
    evaluation = evaluate_split(embedded, dataset, nearest=2)
    assert evaluation.nearest == 2
    # B's caption now chooses between B and A only, and is right
    assert evaluation.ranking.true_rank.tolist() == [1, 1, 2, 1]
    assert evaluation.metrics["all"]["R@1"] == 75.0 and evaluation.metrics["all"]["L@50"] == 100.0
    assert evaluation.metrics["all"]["mean_error_km"] == pytest.approx(distance_km("A", "B") / 4)
    # the whole city is still measured beside it
    assert evaluation.full_city_metrics["all"]["R@1"] == 50.0


def test_a_gallery_smaller_than_the_protocol_ranks_every_tile_and_says_so(small_split, caplog):
    embedded, dataset = small_split
    with caplog.at_level(logging.INFO, logger="cvgtext.retrieval.split"):
        evaluation = evaluate_split(embedded, dataset, nearest=100)
    assert "has 3 tiles, fewer than the protocol's 100 nearest" in caplog.text
    assert evaluation.metrics == evaluation.full_city_metrics
    assert evaluation.metrics["all"]["R@1"] == 50.0


def test_flatten_metrics_names_each_value_by_stage_and_view():
    metrics = {
        "all": {"R@1": 50, "L@50": 75.0, "count": 4},
        "panorama": {"R@1": 25.0, "count": 3},
        "single": {"R@1": 100.0, "count": 1},
    }
    flat = flatten_metrics(metrics, "val")
    assert flat == {"val/R@1": 50.0, "val/L@50": 75.0, "val/panorama/R@1": 25.0, "val/single/R@1": 100.0}
    assert all(type(value) is float for value in flat.values())
    assert flatten_metrics(metrics, "test/full", groups=["all", "single"]) == {
        "test/full/R@1": 50.0,
        "test/full/L@50": 75.0,
        "test/full/single/R@1": 100.0,
    }
    assert flatten_metrics(metrics, "val", groups=[]) == {}
