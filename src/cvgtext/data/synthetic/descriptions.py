"""Further descriptions of the synthetic city's places: what a person standing there might add.

Each place of the synthetic city has one text in its annotations, a panorama's or a single-view
photo's, so no place has the several texts that the release's mixed versions can give one
place. A person asking "where am I?" can add more: here, single-view descriptions of the same
place facing other ways, written by the city's own caption generator from the same scene
facts (its place is rebuilt from the city's seed, exactly as it was generated). They measure how
the answers change with a second and a third description (``benchmarks/bench_answer.py``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cvgtext.data.synthetic.captions import photo_caption
from cvgtext.data.synthetic.city import STAMP, city_plan, place_scene
from cvgtext.utils.errors import DataError

_STREAM = 7919  # the further descriptions' own streams, [seed, place, _STREAM + k]: no generated draw moves


def further_descriptions(
    root: str | Path, names: Sequence[str], count: int = 2, city: str = "Synthetic"
) -> dict[str, list[str]]:
    """``count`` single-view descriptions of each named place of the synthetic city under
    ``root``, facing away from its annotated view: the k-th turned ``360 k / (count + 1)``
    degrees from it. The same arguments give the same texts."""
    stamp = Path(root) / "annotation" / city / STAMP
    try:
        arguments = json.loads(stamp.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise DataError(f"{stamp}: no synthetic city generated under {root} (its stamp is missing)") from None
    seed = arguments["seed"]
    plan = city_plan(arguments["places"], seed, arguments["test_fraction"], arguments["photo_fraction"])
    place_of = {f"{lat:.8f},{lon:.8f}": i for i, (lat, lon) in enumerate(zip(plan.lat, plan.lon))}
    found = {}
    for name in names:
        i = place_of.get(name.split("_", 1)[0])
        if i is None:
            raise DataError(f"{name} is not a place of the synthetic city {city!r} under {root}")
        scene = place_scene(plan, i, np.random.default_rng([seed, i]))
        found[name] = [
            photo_caption(
                dataclasses.replace(scene, fov=90, heading=(scene.heading + 360 * k // (count + 1)) % 360),
                np.random.default_rng([seed, i, _STREAM + k]),
            )
            for k in range(1, count + 1)
        ]
    return found
