"""What an evaluation leaves in its run folder, checked value by value on a split ranked by hand
(``small_split`` in conftest.py: queries C, A, A again, B; over the whole gallery the last two
are wrong)."""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from cvgtext.reports.results import (
    draw_examples,
    example_queries,
    true_rank_label,
    write_metrics,
    write_predictions,
    write_reports,
)
from cvgtext.reports.tables import TABLE_COLUMNS, WIDTH, metrics_table
from cvgtext.retrieval.split import evaluate_split
from helpers.city import SMALL_COLOURS

GREEN, RED = (50, 205, 50), (255, 0, 0)  # PIL's limegreen and red: right and wrong candidates


@pytest.fixture
def whole_gallery(small_split):
    embedded, dataset = small_split
    return evaluate_split(embedded, dataset, nearest=None), dataset


def test_metrics_table_has_a_row_per_view_in_fixed_columns():
    metrics = {
        "all": {**dict.fromkeys(TABLE_COLUMNS, 12.345), "count": 4},
        "single": {**dict.fromkeys(TABLE_COLUMNS, 100.0), "count": 1},
    }
    title, header, rule, all_row, single_row = metrics_table(metrics, "Testville sat").splitlines()
    assert title == "Testville sat"
    assert header.split() == ["queries", *TABLE_COLUMNS] and set(rule) == {"-"} and len(rule) == len(header)
    assert all_row.split() == ["all"] + ["12.35"] * (len(TABLE_COLUMNS) - 1) + ["4"]
    assert single_row.split() == ["single"] + ["100.00"] * (len(TABLE_COLUMNS) - 1) + ["1"]
    assert len(all_row) == len(header) == 10 + WIDTH * len(TABLE_COLUMNS)
    assert metrics_table(metrics).splitlines()[0] == header  # no title line without a title


def test_write_metrics_holds_both_protocols_and_the_run(small_split, tmp_path):
    embedded, dataset = small_split
    for nearest, protocol in ((2, "nearest2"), (None, "full")):
        evaluation = evaluate_split(embedded, dataset, nearest=nearest)
        write_metrics(tmp_path / "metrics.json", evaluation, {"split": "test", "checkpoint": "best.ckpt"})
        content = json.loads((tmp_path / "metrics.json").read_text())
        assert content["protocol"] == protocol and content["run"] == {"split": "test", "checkpoint": "best.ckpt"}
        assert content["all"] == evaluation.metrics["all"] and content["full_city"]["all"]["R@1"] == 50.0
        assert set(content) == {"all", "panorama", "single", "protocol", "full_city", "run"}
    assert content["all"]["R@1"] == 50.0 and not list(tmp_path.glob(".*.tmp"))


def test_predictions_list_each_query_its_rank_and_top_tiles_with_distances(whole_gallery, tmp_path):
    evaluation, dataset = whole_gallery
    write_predictions(tmp_path / "predictions.csv", evaluation, dataset)
    with open(tmp_path / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    name = {tile: dataset.pairs[position].name for position, tile in enumerate("ABC")}
    assert [row["query"] for row in rows] == [name["C"], name["A"], name["A"], name["B"]]
    assert [row["caption"] for row in rows] == ["a blue pool", "a red roof", "red tiles", "a green lawn"]
    assert [row["view"] for row in rows] == ["single", "panorama", "panorama", "panorama"]
    assert [row["correct"] for row in rows] == ["1", "1", "0", "0"]
    assert [row["true_rank"] for row in rows] == ["1", "1", "2", "2"]
    assert [row["top1"] for row in rows] == [name["C"], name["A"], name["B"], name["C"]]
    assert [row["top2"] for row in rows] == [name["B"], name["B"], name["A"], name["B"]]
    # A to B is 30 m, B to C 1 km; the third query's top-1 is B, 30 m from its true place A
    assert float(rows[2]["top1_error_m"]) == pytest.approx(30.0, abs=0.1)
    # the candidate distances are the same float64 haversine as the error
    assert rows[2]["top1_distance_m"] == rows[2]["top1_error_m"]
    assert float(rows[3]["top1_error_m"]) == pytest.approx(1000.0, abs=0.1)
    assert float(rows[3]["top3_distance_m"]) == pytest.approx(30.0, abs=0.5)  # B's third is A
    assert rows[0]["top1_distance_m"] == "0.0"
    # scores are the cosine similarities, best first; the gallery has 3 tiles, so no 4th or 5th
    scores = [float(rows[1][f"top{rank}_score"]) for rank in (1, 2, 3)]
    assert scores == sorted(scores, reverse=True) and scores[0] == pytest.approx(1 / (1 + 0.09 + 0.04) ** 0.5, abs=1e-5)
    assert rows[1]["top4"] in ("", None)


@pytest.mark.parametrize(
    "ranks, count, chosen",
    [
        ([1, 1, 1, 1], 4, [0, 1, 2, 3]),
        # spread from the best ranked to the worst, the true tiles not ranked (0) last
        ([3, 1, 0, 2, 1, 7, 1, 0, 5, 1], 4, [1, 9, 8, 7]),
        ([3, 1, 0, 2, 1, 7, 1, 0, 5, 1], 3, [1, 3, 7]),
        ([2, 2, 1], 1, [2]),
        # fewer queries than examples: every query is shown, best ranked first
        ([4], 4, [0]),
        ([5, 1], 4, [1, 0]),
        ([0, 3, 1], 6, [2, 1, 0]),
    ],
)
def test_example_queries_spread_over_the_ranks_of_their_true_tile(ranks, count, chosen):
    evaluation = SimpleNamespace(
        query_index=list(range(len(ranks))), ranking=SimpleNamespace(true_rank=torch.tensor(ranks))
    )
    assert example_queries(evaluation, count) == chosen


def test_the_rank_of_the_true_tile_is_named():
    assert [true_rank_label(rank) for rank in (1, 2, 1234, 0)] == [
        "true tile first",
        "true tile at rank 2",
        "true tile at rank 1,234",
        "true tile not ranked",
    ]


def test_examples_show_each_query_with_its_candidates_outlined_right_or_wrong(whole_gallery, tmp_path):
    evaluation, dataset = whole_gallery
    tile, margin, text_width = 64, 8, 360
    draw_examples(tmp_path / "examples.png", evaluation, dataset, count=4, tile=tile)
    with Image.open(tmp_path / "examples.png") as picture:
        picture = picture.convert("RGB")
    assert picture.size == (text_width + 5 * (tile + margin) + margin, 4 * (tile + 2 * margin) + margin)

    def candidate(row: int, column: int) -> tuple[tuple, tuple]:
        """The colour inside a candidate's tile, and of its outline."""
        left, top = text_width + column * (tile + margin), margin + row * (tile + 2 * margin)
        return picture.getpixel((left + 5, top + 5)), picture.getpixel((left - 3, top + 5))

    tiles = {row: [SMALL_COLOURS[t] for t in order] for row, order in enumerate(["CBA", "ABC", "BAC", "CBA"])}
    outlines = {0: [GREEN, RED, RED], 1: [GREEN, RED, RED], 2: [RED, GREEN, RED], 3: [RED, GREEN, RED]}
    for row in range(4):
        for column in range(3):
            assert candidate(row, column) == (tiles[row][column], outlines[row][column]), (row, column)
        assert candidate(row, 3)[0] == (255, 255, 255)  # three tiles: the 4th and 5th places stay empty
        # under the caption, the rank of the true tile: green when first, red otherwise
        top = margin + row * (tile + 2 * margin)
        label = picture.crop((margin, top + tile - 12, text_width - margin, top + tile))
        colours = [colour for _, colour in label.getcolors(10_000)]
        green = any(g > r + 80 and g > b + 80 for r, g, b in colours)
        red = any(r > g + 80 and r > b + 80 for r, g, b in colours)
        assert (green, red) == (row < 2, row >= 2), row


class WandbLogger:
    """Stands in for Lightning's: the reports are handed to a logger by its class name."""

    def __init__(self):
        self.tables, self.images = [], []

    def log_table(self, key, columns, data):
        self.tables.append((key, columns, data))

    def log_image(self, key, images):
        self.images.append((key, images))


def test_write_reports_writes_three_files_prints_the_table_and_hands_them_to_wandb(whole_gallery, tmp_path, capsys):
    evaluation, dataset = whole_gallery
    wandb, other = WandbLogger(), SimpleNamespace()
    paths = write_reports(
        tmp_path / "run",
        evaluation,
        dataset,
        {"city": "Testville", "img": "sat", "split": "test"},
        loggers=[wandb, other],
    )
    assert paths == {
        name: tmp_path / "run" / file
        for name, file in (
            ("metrics", "metrics.json"),
            ("predictions", "predictions.csv"),
            ("examples", "examples.png"),
        )
    }
    assert json.loads(paths["metrics"].read_text())["all"]["R@1"] == 50.0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0] == "Testville sat test (whole gallery), percent / km"
    assert printed.strip().endswith(metrics_table(evaluation.metrics).splitlines()[-1])
    ((key, columns, data),) = wandb.tables
    assert key == "test/predictions" and columns[:2] == ["query", "caption"] and len(data) == 4
    assert wandb.images == [("test/examples", [str(paths["examples"])])]


def test_an_explained_query_has_its_top_tile_and_its_words_shaded(whole_gallery, tmp_path):
    import torch

    from cvgtext.model.relevance import Explanation

    evaluation, dataset = whole_gallery
    explanation = Explanation(
        image=torch.ones(2, 2),
        text=torch.tensor([0.1, 1.0, 0.4]),
        token_ids=torch.tensor([1, 2, 3]),
        words=["a</w>", "blue</w>", "pool</w>"],
    )
    draw_examples(tmp_path / "plain.png", evaluation, dataset, count=4, tile=64)
    draw_examples(tmp_path / "explained.png", evaluation, dataset, count=4, tile=64, explanations={0: explanation})
    with Image.open(tmp_path / "plain.png") as plain, Image.open(tmp_path / "explained.png") as explained:
        plain, explained = plain.convert("RGB"), explained.convert("RGB")
    assert plain.size == explained.size

    def differs(box) -> bool:
        return plain.crop(box).tobytes() != explained.crop(box).tobytes()

    top, bottom = 8, 8 + 64
    assert differs((360, top, 360 + 32, bottom))  # the top-1 tile of query 0, under its heat map
    assert not differs((360 + 72, top, 360 + 72 + 32, bottom))  # its second tile
    assert differs((0, top, 352, bottom))  # its caption, shaded word by word
    assert not differs((0, bottom + 8, plain.width, plain.height))  # the other queries


def test_run_summary_says_what_was_evaluated():
    from omegaconf import OmegaConf

    from cvgtext.reports.results import run_summary

    cfg = OmegaConf.create(
        {
            "city": {"name": "Tokyo"},
            "img": {"name": "osm"},
            "text": {"name": "mixed"},
            "protocol": {"name": "nearest100"},
            "ckpt_path": "best.ckpt",
        }
    )
    backbone = {"name": "vit_b16", "model_name": "ViT-B-16", "pretrained": "openai", "context_length": 300}
    assert run_summary(cfg, backbone, "val") == {
        "city": "Tokyo",
        "img": "osm",
        "text": "mixed",
        "split": "val",
        "protocol": "nearest100",
        "backbone": "ViT-B-16",
        "backbone_name": "vit_b16",
        "pretrained": "openai",
        "context_length": 300,
        "checkpoint": "best.ckpt",
    }
    official = {**backbone, "name": "crosstext2loc", "trained_on": {"city": "NewYork", "img": "osm"}}
    assert run_summary(cfg, official, "test")["trained_on"] == {"city": "NewYork", "img": "osm"}


def test_reports_give_both_protocols_with_an_interval_under_every_metric(small_split, tmp_path, capsys):
    embedded, dataset = small_split
    evaluation = evaluate_split(embedded, dataset, nearest=2)
    confidence = evaluation.intervals(bootstrap=300, seed=0)
    paths = write_reports(
        tmp_path / "run",
        evaluation,
        dataset,
        {"city": "Testville", "img": "sat", "split": "test"},
        confidence=confidence,
    )
    assert json.loads(paths["metrics"].read_text())["confidence"] == confidence
    lines = capsys.readouterr().out.splitlines()
    titles = [line for line in lines if line.startswith("Testville sat test")]
    assert titles == [
        "Testville sat test (2 nearest tiles), percent / km, 95% intervals",
        "Testville sat test (whole gallery), percent / km, 95% intervals",
    ]
    for protocol, title in zip(("intervals", "full_city"), titles):
        table = lines[lines.index(title) :]
        for row, group in enumerate(("all", "panorama", "single")):
            values, bounds = table[3 + 2 * row], table[4 + 2 * row]
            assert values.split()[0] == group
            low, high = confidence[protocol][group]["R@1"]
            assert bounds.split(", ")[0].split()[0] == f"[{low:.1f}"  # under R@1, the first column
            assert bounds.count("[") == len(TABLE_COLUMNS) - 1  # every metric but the count
