"""ViLT, the official code's last baseline: each (description, tile) pair scored as transformers'
``ViltForImageAndTextRetrieval`` scores it, fed as ``ViltProcessor`` feeds it, and a split ranked
as the official ``evaluate_vilt`` ranks it (each description's nearest tiles, by the logit)."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from PIL import Image

from cvgtext.model.encoder import build_encoder
from cvgtext.model.vilt import pad_images
from cvgtext.utils.errors import ConfigError
from helpers.city import CITY
from helpers.hf_stand_ins import write_bert_like
from helpers.reference_protocol import haversine_km, reference_metrics
from helpers.runs import compose_config

transformers = pytest.importorskip("transformers")

TEXTS = ["A street with 3 trees and a red roof.", "A street with 1 trees and a blue roof.", "green"]
# a small ViLT: what depth and width add is checked once at real width below
SMALL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64, "patch_size": 16}


def picture(seed: int, size: tuple[int, int]) -> Image.Image:
    pixels = torch.randint(
        0, 256, (size[1], size[0], 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )
    return Image.fromarray(pixels.numpy())


def official_scores(model, processor, images: list[Image.Image], text: str) -> torch.Tensor:
    """``evaluate_vilt``'s call, restated: the description beside each tile, cut at 40 tokens."""
    encoding = processor(images, [text] * len(images), max_length=40, truncation=True, return_tensors="pt")
    with torch.no_grad():
        return model(**encoding).logits.squeeze(1)


def processor_of(encoder, folder):
    """transformers' ViltProcessor with the tokenizer and image processor the encoder was built with."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    return transformers.ViltProcessor(image_processor=encoder.preprocess.processor, tokenizer=tokenizer)


def small_vilt(tmp_path, image_size: int = 64):
    folder = write_bert_like(tmp_path / "tokenizer", TEXTS)
    encoder = build_encoder(
        "vilt-b32", family="vilt", tokenizer=str(folder), config=SMALL, image_size=image_size, context_length=40
    )
    return encoder, folder


def assert_scores_as_transformers(encoder, folder, images: list[Image.Image]) -> None:
    scorer = encoder.model.eval()
    processor = processor_of(encoder, folder)
    pixels, mask = pad_images([encoder.preprocess(image) for image in images])
    batch = processor.image_processor(images, return_tensors="pt")
    assert torch.equal(pixels, batch.pixel_values) and torch.equal(mask, batch.pixel_mask)  # padded alike
    for text in TEXTS:
        tokens = encoder.tokenizer([text] * len(images))
        with torch.no_grad():
            ours = scorer.score(pixels, tokens, mask)
        torch.testing.assert_close(ours, official_scores(scorer.vilt, processor, images, text), atol=1e-5, rtol=1e-4)


def test_pairs_score_as_transformers_forward_on_the_processors_input(tmp_path):
    encoder, folder = small_vilt(tmp_path)
    assert encoder.model.scores_pairs and encoder.context_length == 40
    # square tiles, and tiles of other sizes that a batch pads (a panorama keeps its aspect)
    assert_scores_as_transformers(
        encoder, folder, [picture(0, (96, 96)), picture(1, (500, 333)), picture(2, (128, 64))]
    )
    long = " ".join(["a red roof"] * 30)
    assert encoder.tokenizer([long]).shape == (1, 40)  # cut at ViLT's 40 positions, as the official call


@pytest.mark.slow
def test_vilt_b32_at_real_width_from_a_saved_folder_scores_as_transformers(tmp_path):
    """ViLT-B/32's widths, heads, patches and 384 px input (two layers: depth repeats what one
    layer checks), saved by save_pretrained with its tokenizer and image processor and loaded as
    backbone.pretrained=<folder>."""
    folder = tmp_path / "vilt"
    torch.manual_seed(0)
    transformers.ViltForImageAndTextRetrieval(transformers.ViltConfig(num_hidden_layers=2)).save_pretrained(folder)
    write_bert_like(folder, TEXTS)
    transformers.ViltImageProcessor().save_pretrained(folder)
    encoder = build_encoder("vilt-b32", family="vilt", pretrained=str(folder), context_length=40)
    assert encoder.preprocess(picture(3, (512, 512))).shape == (3, 384, 384)  # a release tile
    assert_scores_as_transformers(encoder, folder, [picture(3, (512, 512)), picture(4, (512, 512))])


def test_settings_that_do_not_apply_are_refused(tmp_path):
    folder = write_bert_like(tmp_path / "tokenizer", TEXTS)
    with pytest.raises(ConfigError, match="context_length=77: ViLT's text embeddings have 40 positions"):
        build_encoder("vilt-b32", family="vilt", tokenizer=str(folder), config=SMALL, context_length=77)
    with pytest.raises(ConfigError, match="needs a tokenizer"):
        build_encoder("vilt-b32", family="vilt", config=SMALL)
    with pytest.raises(ConfigError, match="CLIP settings"):
        build_encoder("vilt-b32", family="vilt", tokenizer=str(folder), config=SMALL, quick_gelu=True)


def vilt_overrides(tokenizer, *extra: str) -> list[str]:
    fields = [f"+backbone.config.{key}={value}" for key, value in SMALL.items()]
    return ["backbone=vilt", "backbone.pretrained=null", f"backbone.tokenizer={tokenizer}", *fields, *extra]


def city_overrides(release_dir) -> list[str]:
    return [
        "city=Brisbane",
        f"city.name={CITY}",
        f"paths.data_dir={release_dir}",
        "trainer=cpu",
        "data.val_fraction=0.3",
        "data.num_workers=0",
        "data.eval_batch_size=5",  # pairs per forward pass: batches cut across tiles
        "backbone.image_size=64",
        "eval.bootstrap=0",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("whole_gallery", [False, True])
def test_a_split_ranks_as_the_official_evaluation_ranks_it(release_dir, tmp_path, caplog, whole_gallery):
    """The official evaluate_vilt, restated: for each description its 4 nearest tiles, each pair
    scored by the model on the processor's input, ranked by the logit; then the protocol's metrics."""
    from cvgtext.commands.evaluate import evaluate
    from cvgtext.model.build import build_module

    folder = write_bert_like(
        tmp_path / "tokenizer", TEXTS + [text for text in json.dumps(captions(release_dir)).split()]
    )
    overrides = [
        *vilt_overrides(folder, f"backbone.whole_gallery={str(whole_gallery).lower()}"),
        *city_overrides(release_dir),
        "protocol.nearest=4",
    ]
    cfg = compose_config("eval", overrides, tmp_path)
    caplog.set_level(logging.INFO)
    evaluate(cfg)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    rows = list(csv_rows(tmp_path / "run" / "predictions.csv"))
    queries = [row["query"] for row in rows]
    gallery = list(dict.fromkeys(queries))  # each test tile once, in the split's order
    (scored,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Scoring ")]
    pairs = len(queries) * (len(gallery) if whole_gallery else 4)
    assert scored.startswith(f"Scoring {pairs} (description, tile) pairs")

    # the same weights (seeded), scored the official way
    torch.manual_seed(cfg.seed)
    module, _ = build_module(cfg)
    model, processor = module.model.vilt.eval(), processor_of(module, folder)
    tiles = {path.name: path for path in release_dir.glob("reference/*-satellite/*.jpg")}
    places = {name: parse_place(name) for name in gallery}
    sim = []
    for query, row in zip(queries, rows):
        nearest = sorted(range(len(gallery)), key=lambda j: haversine_km(*places[query], *places[gallery[j]]))[:4]
        images = [Image.open(tiles[gallery[j]]).convert("RGB") for j in nearest]
        logits = official_scores(model, processor, images, row["caption"]).tolist()
        scores = [float("-inf")] * len(gallery)
        for j, logit in zip(nearest, logits):
            scores[j] = logit
        sim.append(scores)
    expected = reference_metrics(sim, queries, gallery, nearest=4)
    for group, values in expected.items():
        assert saved[group] == pytest.approx(values, abs=1e-6), group
    assert bool(saved["full_city"]) == whole_gallery


def captions(release_dir) -> list[str]:
    return [c for path in (release_dir / "annotation").rglob("*.json") for c in json.loads(path.read_text()).values()]


def csv_rows(path):
    import csv

    with open(path, newline="") as stream:
        yield from csv.DictReader(stream)


def parse_place(name: str) -> tuple[float, float]:
    from cvgtext.data.names import parse_coordinates

    return parse_coordinates(name)


def test_training_and_the_query_tool_refuse_a_pair_scorer(release_dir, tmp_path):
    from cvgtext.commands.cli import find_user_error
    from cvgtext.commands.locator import Locator
    from cvgtext.commands.train import train

    folder = write_bert_like(tmp_path / "tokenizer", TEXTS)
    overrides = [*vilt_overrides(folder), *city_overrides(release_dir)]
    with pytest.raises(Exception) as refused:  # as instantiate wraps it; the CLI prints the ConfigError
        train(compose_config("train", [*overrides, "logger=csv"], tmp_path))
    assert "backbone=vilt scores (description, tile) pairs and is evaluated, not trained" in str(
        find_user_error(refused.value)
    )
    with pytest.raises(ConfigError, match="backbone=vilt scores .* the query tool and the page need a dual encoder"):
        Locator(compose_config("locate", overrides, tmp_path))
