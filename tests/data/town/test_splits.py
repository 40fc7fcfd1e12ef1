"""Splits that do not leak: every test place at least gap_m from every training place."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cvgtext.data.town.splits import BlockSplit, HashSplit, haversine_m
from cvgtext.utils.errors import ConfigError


def great_circle_m(lat1, lon1, lat2, lon2) -> float:
    """Distance by the spherical law of cosines (apart from the haversine under test)."""
    p1, p2, dl = math.radians(lat1), math.radians(lat2), math.radians(lon2 - lon1)
    c = math.sin(p1) * math.sin(p2) + math.cos(p1) * math.cos(p2) * math.cos(dl)
    return 6_371_000.0 * math.acos(max(-1.0, min(1.0, c)))


def town(seed: int, places: int = 300):
    rng = np.random.default_rng(seed)
    lat0, lon0 = [(-33.87, 151.21), (40.75, -73.98), (-16.5, 179.995)][seed % 3]  # the last crosses the antimeridian
    lat = lat0 + rng.uniform(-0.01, 0.01, places)
    lon = (lon0 + rng.uniform(-0.01, 0.01, places) + 180) % 360 - 180
    return [f"p{i}" for i in range(places)], lat, lon


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("block_m, gap_m", [(250, 100), (400, 60), (150, 0)])
def test_each_test_place_keeps_the_gap_from_every_training_place(seed, block_m, gap_m):
    names, lat, lon = town(seed)
    split = BlockSplit(block_m, gap_m).assign(names, lat, lon, 0.15, seed)
    test = [i for i, s in enumerate(split) if s == "test"]
    train = [i for i, s in enumerate(split) if s == "train"]
    assert len(test) >= 0.15 * len(names) and train
    closest = min(great_circle_m(lat[i], lon[i], lat[j], lon[j]) for i in test for j in train)
    assert closest >= gap_m
    # only places near a test place are left out
    for i, s in enumerate(split):
        if s == "gap":
            assert min(great_circle_m(lat[i], lon[i], lat[j], lon[j]) for j in test) < gap_m


def test_the_split_is_by_whole_blocks_and_from_the_seed():
    names, lat, lon = town(0)
    rule = BlockSplit(250, 100)
    assert rule.assign(names, lat, lon, 0.1, 7) == rule.assign(names, lat, lon, 0.1, 7)
    assert rule.assign(names, lat, lon, 0.1, 7) != rule.assign(names, lat, lon, 0.1, 8)


def test_the_hash_split_is_seeded_and_ignores_order():
    names = [f"{i}.jpg" for i in range(2000)]
    first = dict(zip(names, HashSplit().assign(names, None, None, 0.1, 3)))
    backwards = dict(zip(names[::-1], HashSplit().assign(names[::-1], None, None, 0.1, 3)))
    assert first == backwards and 0.08 < list(first.values()).count("test") / 2000 < 0.12
    assert first != dict(zip(names, HashSplit().assign(names, None, None, 0.1, 4)))


def test_haversine_matches_the_law_of_cosines():
    assert haversine_m(-27.47, 153.02, -27.48, 153.03) == pytest.approx(
        great_circle_m(-27.47, 153.02, -27.48, 153.03), rel=1e-6
    )


@pytest.mark.parametrize("fraction", [0, 1, 1.5])
def test_a_test_fraction_outside_0_1_is_refused(fraction):
    with pytest.raises(ConfigError, match=rf"test_fraction={fraction} must lie strictly between 0 and 1"):
        BlockSplit().assign(["a"], [0.0], [0.0], fraction, 0)
