"""Train and test splits of a town that do not leak.

:class:`BlockSplit` (the default) cuts the town into square blocks, draws whole blocks for the
test split (seeded) until it holds ``test_fraction`` of the places, then leaves out every other
place closer than ``gap_m`` to a test place: each test place is then at least ``gap_m`` from
every training place, so neighbouring tiles (which overlap at the release's ~61 m) cannot tell
the test answers. :class:`HashSplit` decides by a seeded hash of each file name, as random
splits do; neighbours may then fall on both sides.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np
import torch

from cvgtext.data.town.places import local_metres
from cvgtext.retrieval.geo import haversine_km
from cvgtext.utils.errors import ConfigError


def haversine_m(lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray, lon2: np.ndarray) -> np.ndarray:
    """Great-circle distances in metres (broadcasting): the protocol's :func:`haversine_km` on arrays."""
    degrees = (torch.as_tensor(np.asarray(x, dtype=np.float64)) for x in (lat1, lon1, lat2, lon2))
    return 1000 * haversine_km(*degrees).numpy()


def nearest_distance_m(lat: np.ndarray, lon: np.ndarray, to_lat: np.ndarray, to_lon: np.ndarray) -> np.ndarray:
    """``[len(lat)]`` metres from each point to the nearest of the ``to`` points (inf when none)."""
    if len(to_lat) == 0:
        return np.full(len(lat), np.inf)
    nearest = np.empty(len(lat))
    for start in range(0, len(lat), 1024):  # chunks bound the [chunk, len(to)] matrix
        block = slice(start, start + 1024)
        nearest[block] = haversine_m(lat[block, None], lon[block, None], to_lat[None], to_lon[None]).min(1)
    return nearest


def _check_fraction(test_fraction: float) -> None:
    if not 0 < test_fraction < 1:
        raise ConfigError(f"test_fraction={test_fraction} must lie strictly between 0 and 1")


class BlockSplit:
    """Whole blocks of ``block_m`` metres to test; places within ``gap_m`` of a test place left out."""

    rule = "blocks"

    def __init__(self, block_m: float = 250.0, gap_m: float = 100.0):
        if block_m <= 0 or gap_m < 0:
            raise ConfigError(f"town_split.block_m={block_m} must be positive and gap_m={gap_m} not negative")
        self.block_m, self.gap_m = block_m, gap_m

    def assign(self, names: Sequence[str], lat: Sequence[float], lon: Sequence[float], test_fraction: float, seed: int):
        """``"train"``, ``"test"`` or ``"gap"`` (left out) for each place."""
        _check_fraction(test_fraction)
        lat, lon = np.asarray(lat, dtype=float), np.asarray(lon, dtype=float)
        if len(lat) == 0:
            return []
        xy = local_metres(lat, lon, float(lat.mean()))
        cells = np.floor(xy / self.block_m).astype(np.int64)
        blocks, block_of = np.unique(cells, axis=0, return_inverse=True)
        block_of = block_of.reshape(-1)
        order = np.random.default_rng(seed).permutation(len(blocks))
        sizes = np.bincount(block_of, minlength=len(blocks))
        wanted = max(1, math.ceil(test_fraction * len(lat)))
        chosen = order[: int(np.searchsorted(np.cumsum(sizes[order]), wanted)) + 1]
        is_test = np.isin(block_of, chosen)
        distance = nearest_distance_m(lat, lon, lat[is_test], lon[is_test])
        return ["test" if t else "gap" if d < self.gap_m else "train" for t, d in zip(is_test, distance)]

    def describe(self) -> dict:
        return {"rule": self.rule, "block_m": self.block_m, "gap_m": self.gap_m}


class HashSplit:
    """A seeded hash of each file name: ``test_fraction`` of the places to test, wherever they are."""

    rule = "hash"

    def assign(self, names: Sequence[str], lat, lon, test_fraction: float, seed: int) -> list[str]:
        """``"train"`` or ``"test"`` for each place."""
        _check_fraction(test_fraction)
        draws = (
            int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "big") / 2**64 for name in names
        )
        return ["test" if draw < test_fraction else "train" for draw in draws]

    def describe(self) -> dict:
        return {"rule": self.rule}
