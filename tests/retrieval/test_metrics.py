"""``geo_retrieval_metrics`` against the plain per-query protocol and against numbers worked out by hand."""

from __future__ import annotations

import random

import pytest
import torch

from cvgtext.retrieval.metrics import geo_retrieval_metrics
from helpers.city import city_names
from helpers.reference_protocol import reference_metrics, synthetic_names

KM_PER_DEGREE_AT_EQUATOR = 6371.0 * torch.pi / 180


def distinct_scores(queries: int, gallery: int, seed: int) -> torch.Tensor:
    """``[queries, gallery]`` scores without ties within a row."""
    generator = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(gallery, generator=generator) for _ in range(queries)]).float() / gallery


def assert_same_metrics(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for group in expected:
        for mean in ("mean_error_km", "MRR"):
            assert actual[group].pop(mean) == pytest.approx(expected[group].pop(mean), rel=1e-12, abs=1e-12)
        assert actual[group] == expected[group]


@pytest.mark.parametrize("nearest", [100, 7, None])
def test_matches_plain_protocol_with_duplicates_and_both_hemispheres(nearest):
    queries, gallery = city_names(seed=1, tiles=160, duplicates=12, strangers=3, new_york=0.25)
    sim = distinct_scores(len(queries), len(gallery), seed=2)
    expected = reference_metrics(sim.tolist(), queries, gallery, nearest=nearest)
    assert_same_metrics(geo_retrieval_metrics(sim, queries, gallery, nearest=nearest), expected)


@pytest.mark.parametrize("nearest", [100, None])
def test_matches_plain_protocol_when_gallery_is_smaller_than_nearest(nearest):
    queries, gallery = city_names(seed=3, tiles=40, duplicates=3, new_york=0.25)
    sim = distinct_scores(len(queries), len(gallery), seed=4)
    expected = reference_metrics(sim.tolist(), queries, gallery, nearest=nearest)
    assert_same_metrics(geo_retrieval_metrics(sim, queries, gallery, nearest=nearest), expected)


@pytest.mark.parametrize("chunk_size", [1, 5, 64])
def test_chunking_does_not_change_metrics(chunk_size):
    queries, gallery = city_names(seed=5, tiles=120, duplicates=6, new_york=0.25)
    sim = distinct_scores(len(queries), len(gallery), seed=6)
    for nearest in (10, None):
        whole = geo_retrieval_metrics(sim, queries, gallery, nearest=nearest, chunk_size=len(queries))
        assert geo_retrieval_metrics(sim, queries, gallery, nearest=nearest, chunk_size=chunk_size) == whole


# Four tiles on the equator, where the haversine distance is R * (longitude difference in radians).
A = "0.0,0.0_a.jpg"  # single view
B = "0.0,0.001_b.jpg"  # single view, 111 m east of A
C = "0.0,0.01_2022-08_c_d62_z3.jpg"  # panorama, 1.11 km east of A
D = "0.0,0.0004_2022-08_d_d62_z3.jpg"  # panorama, 44.5 m east of A
HAND_GALLERY = [A, B, C, D]
HAND_QUERIES = [A, D, C]
HAND_SIM = torch.tensor(
    [
        [0.9, 0.1, 0.2, 0.3],  # A: A first
        [0.8, 0.1, 0.2, 0.3],  # D: A, D, C, B; top-1 A is 44.5 m away
        [0.95, 0.1, 0.2, 0.3],  # C: A, D, C, B; top-1 A is 1.11 km away
    ]
)


def test_hand_made_case_on_the_whole_gallery():
    error_d, error_c = 0.0004 * KM_PER_DEGREE_AT_EQUATOR, 0.01 * KM_PER_DEGREE_AT_EQUATOR
    metrics = geo_retrieval_metrics(HAND_SIM, HAND_QUERIES, HAND_GALLERY, nearest=None)
    expected = {
        "all": {
            "R@1": 100 / 3,
            "R@5": 100.0,
            "R@10": 100.0,
            "L@50": 200 / 3,
            "L@100": 200 / 3,
            "L@150": 200 / 3,
            "mean_error_km": (error_d + error_c) / 3,
            "MRR": 100 * (1 + 1 / 2 + 1 / 3) / 3,  # A first, D second, C third
            "count": 3,
        },
        "panorama": {
            "R@1": 0.0,
            "R@5": 100.0,
            "R@10": 100.0,
            "L@50": 50.0,
            "L@100": 50.0,
            "L@150": 50.0,
            "mean_error_km": (error_d + error_c) / 2,
            "MRR": 100 * (1 / 2 + 1 / 3) / 2,
            "count": 2,
        },
        "single": {
            "R@1": 100.0,
            "R@5": 100.0,
            "R@10": 100.0,
            "L@50": 100.0,
            "L@100": 100.0,
            "L@150": 100.0,
            "mean_error_km": 0.0,
            "MRR": 100.0,
            "count": 1,
        },
    }
    assert metrics.keys() == expected.keys()
    for group in expected:
        assert metrics[group] == pytest.approx(expected[group], rel=1e-9)


def test_hand_made_case_with_two_nearest_tiles():
    # Candidates: A -> {A, D}; D -> {D, A} (B is 66.7 m away); C -> {C, B}, so C now wins its own ranking.
    error_d = 0.0004 * KM_PER_DEGREE_AT_EQUATOR
    metrics = geo_retrieval_metrics(HAND_SIM, HAND_QUERIES, HAND_GALLERY, nearest=2)
    assert metrics["all"] == pytest.approx(
        {
            "R@1": 200 / 3,
            "R@5": 100.0,
            "R@10": 100.0,
            "L@50": 100.0,
            "L@100": 100.0,
            "L@150": 100.0,
            "mean_error_km": error_d / 3,
            "MRR": 100 * (1 + 1 / 2 + 1) / 3,  # D second among {D, A}
            "count": 3,
        },
        rel=1e-9,
    )
    assert metrics["panorama"]["R@1"] == 50.0 and metrics["panorama"]["count"] == 2
    assert metrics["single"]["R@1"] == 100.0 and metrics["single"]["count"] == 1


def test_split_is_absent_when_it_has_no_queries():
    queries = [D, C]
    metrics = geo_retrieval_metrics(HAND_SIM[1:], queries, HAND_GALLERY, nearest=None)
    assert set(metrics) == {"all", "panorama"}
    assert metrics["all"]["count"] == metrics["panorama"]["count"] == 2
    only_single = geo_retrieval_metrics(HAND_SIM[:1], [A], HAND_GALLERY, nearest=None)
    assert set(only_single) == {"all", "single"}


def test_true_tile_crowded_out_of_the_nearest_set_is_a_miss():
    # Four tiles share the query's place; with nearest=2 the first two by gallery order are the candidates.
    same_place = [f"10.0,20.0_{letter}.jpg" for letter in "wxyz"]
    gallery = same_place + ["10.001,20.0_far.jpg"]
    queries = ["10.0,20.0_z.jpg", "10.0,20.0_w.jpg"]
    sim = distinct_scores(len(queries), len(gallery), seed=7)
    metrics = geo_retrieval_metrics(sim, queries, gallery, nearest=2)
    assert_same_metrics(dict(metrics), reference_metrics(sim.tolist(), queries, gallery, nearest=2))
    missed = geo_retrieval_metrics(sim[:1], queries[:1], gallery, nearest=2)["all"]
    assert missed["R@1"] == missed["R@10"] == 0.0
    assert missed["L@50"] == 100.0  # the top-1 tile stands at the true place


def test_query_without_a_tile_is_a_miss_at_every_k():
    metrics = geo_retrieval_metrics(HAND_SIM[:1], ["0.0,0.0_missing.jpg"], HAND_GALLERY, nearest=None)["all"]
    assert metrics["R@1"] == metrics["R@10"] == 0.0
    assert metrics["mean_error_km"] == 0.0  # top-1 is A, at the query's place


def test_matches_plain_protocol_on_a_12000_tile_city():
    # A city of 12,000 tiles, half spread over 16 km and half crowded into a 1.6 km centre, so
    # that search boxes meet both densities; 60 queries keep the plain protocol to seconds.
    rng = random.Random(8)
    gallery = synthetic_names(rng, 6000, span_deg=0.144) + synthetic_names(rng, 6000, span_deg=0.0144)
    gallery += rng.sample(gallery, 40)
    rng.shuffle(gallery)
    queries = rng.sample(sorted(set(gallery)), 60) + synthetic_names(rng, 2, span_deg=0.2)
    sim = distinct_scores(len(queries), len(gallery), seed=9)
    expected = reference_metrics(sim.tolist(), queries, gallery, nearest=100)
    assert_same_metrics(geo_retrieval_metrics(sim, queries, gallery, nearest=100), expected)
