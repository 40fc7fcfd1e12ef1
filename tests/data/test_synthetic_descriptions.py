"""Further descriptions of the synthetic city's places: rebuilt from the same scene facts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cvgtext.data.synthetic.captions import panorama_caption, photo_caption
from cvgtext.data.synthetic.city import city_plan, generate_city, place_scene
from cvgtext.data.synthetic.descriptions import further_descriptions
from cvgtext.utils.errors import DataError


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    root = tmp_path_factory.mktemp("city")
    generate_city(root, places=60, seed=5, tile_size=16)
    texts = {}
    for version in ("Synthetic", "Synthetic-photos"):
        for split in ("train", "test"):
            texts.update(json.loads((root / "annotation" / version / f"{split}.json").read_text()))
    return root, texts


def test_each_place_is_rebuilt_as_it_was_generated(city):
    root, texts = city
    plan = city_plan(60, 5, 0.1, 0.2)
    for i in range(60):
        rng = np.random.default_rng([5, i])
        scene = place_scene(plan, i, rng)
        caption = photo_caption(scene, rng) if plan.is_photo[i] else panorama_caption(scene, rng)
        [name] = [name for name in texts if name.startswith(f"{plan.lat[i]:.8f},{plan.lon[i]:.8f}_")]
        assert texts[name] == caption


def test_further_descriptions_face_other_ways_and_repeat(city):
    root, texts = city
    names = sorted(texts)[:12]
    found = further_descriptions(root, names, count=2)
    assert list(found) == names and all(len(found[name]) == 2 for name in names)
    assert found == further_descriptions(root, names, count=2)
    for name in names:
        first, second = found[name]
        assert first != second and texts[name] not in (first, second)
        assert first.split()[0] in ("A", "This", "Facing")  # single-view intros
    with pytest.raises(DataError, match="is not a place of the synthetic city"):
        further_descriptions(root, ["-1.00000000,2.00000000_x.jpg"])
    with pytest.raises(DataError, match="no synthetic city generated"):
        further_descriptions(root / "elsewhere", names)
