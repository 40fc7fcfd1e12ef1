"""``eval.py explain.enabled=true``: relevance overlays and arrays of the first queries."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cvgtext.commands.evaluate import evaluate
from cvgtext.model.relevance import Explanation
from cvgtext.reports.overlays import word_relevance
from helpers.city import CITY, write_release
from helpers.runs import compose_config


def test_word_relevance_joins_the_pieces_of_a_word():
    explanation = Explanation(
        image=torch.zeros(1, 1),
        text=torch.tensor([0.5, 0.25, 1.0, 2.0]),
        token_ids=torch.arange(4),
        words=["a</w>", "sky", "scraper</w>", "park"],
    )
    assert word_relevance(explanation) == [("a", 0.5), ("skyscraper", 1.25), ("park", 2.0)]


def test_words_outside_ascii_read_as_typed_from_clips_tokenizer():
    import open_clip

    tokenizer = open_clip.get_tokenizer("ViT-B-16")
    caption = "Café beside 東京の交差点, naïve—sign 🚦"
    ids = [int(token) for token in tokenizer([caption])[0] if int(token)][1:-1]  # no start and end tokens
    explanation = Explanation(
        image=torch.zeros(1, 1),
        text=torch.ones(len(ids)),
        token_ids=torch.tensor(ids),
        words=[tokenizer.decoder[token] for token in ids],
    )
    words = [word for word, _ in word_relevance(explanation)]
    # CLIP's tokenizer lower-cases and splits punctuation off; every character comes back whole.
    assert words == ["café", "beside", "東京の交差点", ",", "naïve", "—", "sign", "🚦"]
    assert sum(score for _, score in word_relevance(explanation)) == len(ids)


@pytest.mark.slow
def test_eval_writes_the_maps_of_the_first_queries_on_a_2_to_1_gallery(tmp_path, test_backbone):
    data_dir = write_release(tmp_path / "data", panoramas=8, photos=4)
    cfg = compose_config(
        "eval",
        [
            f"backbone.model_name={test_backbone}",
            "img=stv",
            "city=Brisbane",
            f"city.name={CITY}",
            f"paths.data_dir={data_dir}",
            "trainer=cpu",
            "data.num_workers=0",
            "explain.enabled=true",
            "explain.max_queries=2",
        ],
        tmp_path,
    )
    evaluate(cfg)
    folder = tmp_path / "run" / "explanations"
    assert sorted(p.name for p in folder.iterdir()) == [
        "query_000.npz",
        "query_000.png",
        "query_001.npz",
        "query_001.png",
    ]
    arrays = np.load(folder / "query_000.npz")
    assert arrays["image"].shape == (2, 4)  # 32x64 street views, 16 px patches
    assert (arrays["image"] >= 0).all() and len(arrays["text"]) == len(arrays["words"]) > 0
    with Image.open(folder / "query_000.png") as picture:
        assert picture.width > 100 and picture.height > 100
    # explain.overlays (on by default): examples.png shades the captions' words by relevance
    with Image.open(tmp_path / "run" / "examples.png") as picture:
        pixels = np.asarray(picture.convert("RGB")).astype(int)
    caption_area = pixels[:, :352]
    shaded = (caption_area[..., 0] > 200) & (caption_area[..., 2] < 150) & (caption_area[..., 1] < 200)
    assert shaded.sum() > 50
    # again, with the gallery index stored by the first run: only the captions are read then
    (tmp_path / "run" / "examples.png").unlink()
    evaluate(cfg)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["run"]["gallery_index"] == "reused"
    assert (tmp_path / "run" / "examples.png").exists()
