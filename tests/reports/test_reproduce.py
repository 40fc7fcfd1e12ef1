"""The reproduce table: evaluation runs gathered into the paper's Table 2, ours beside the paper's,
and the cross-city table, from a fake release of tiny official-format checkpoints."""

from __future__ import annotations

import csv
import json

import pytest

from cvgtext.reports.reproduce import MISSING, ReproduceTable, gather, main, main_rows, published, source
from helpers.official import CITIES, write_fake_release
from helpers.runs import compose_config, run_cli


def test_the_papers_figures_are_kept_with_their_source():
    paper = published()
    assert len(paper) == 6
    assert paper[("NewYork", "osm")] == {"R@1": 59.08, "L@50": 62.00}
    assert paper[("Brisbane", "sat")] == {"R@1": 43.58, "L@50": 47.42}
    assert paper[("Tokyo", "osm")] == {"R@1": 34.33, "L@50": 38.33}
    assert published("CLIP-L/14")[("NewYork", "sat")] == {"R@1": 35.08, "L@50": 37.08}
    assert "arXiv:2412.17007" in source() and "Table 2" in source()


def official_overrides(data_dir, out, *extra: str) -> list[str]:
    return [
        "experiment=reproduce",
        "backbone.model_name=cvg-test",
        f"paths.data_dir={data_dir}",
        f"paths.output_dir={out}",
        "trainer=cpu",
        "data.num_workers=0",
        "eval.bootstrap=200",
        *extra,
    ]


def table_rows(markdown: str, title: str) -> list[list[str]]:
    """The header and rows of the Markdown table under the heading that starts with ``title``."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"## {title}"))
    table = []
    for line in lines[start + 1 :]:
        if line.startswith("## "):
            break
        if line.startswith("| "):
            table.append([cell.strip() for cell in line.strip("|").split("|")])
    return table


@pytest.mark.slow
def test_train_evaluate_and_gather_the_table_on_a_fake_release(tmp_path, test_backbone):
    from cvgtext.commands.evaluate import evaluate
    from cvgtext.commands.train import train

    data = write_fake_release(tmp_path / "data", test_backbone)
    sweep, job = tmp_path / "sweep", 0
    for city in CITIES:  # each official checkpoint on its own city, and the sat ones on every city
        for img in ("sat", "osm"):
            for trained_on in CITIES if img == "sat" else (city,):
                evaluate(
                    compose_config(
                        "eval",
                        official_overrides(data, sweep / str(job), f"city={city}", f"img={img}")
                        + [f"backbone.trained_on.city={trained_on}"],
                        tmp_path,
                    )
                )
                job += 1
    # a model of this project, trained here, joins the table as a row of its own
    run = tmp_path / "trained"
    train(
        compose_config(
            "train",
            [
                "city=Brisbane",
                f"backbone.model_name={test_backbone}",
                f"paths.data_dir={data}",
                f"paths.output_dir={run}",
                "trainer=cpu",
                "debug=fast",
                "logger=csv",
                "data.batch_size=8",
                "data.val_fraction=0.3",
                "test=false",
            ],
            tmp_path,
        )
    )
    evaluate(
        compose_config(
            "eval",
            [
                "city=Brisbane",
                f"ckpt_path={run}/checkpoints/last.ckpt",
                f"backbone.model_name={test_backbone}",
                f"paths.data_dir={data}",
                f"paths.output_dir={sweep}/{job}",
                "trainer=cpu",
                "data.num_workers=0",
                "data.val_fraction=0.3",
            ],
            tmp_path,
        )
    )
    (sweep / "stopped").mkdir()
    (sweep / "stopped" / "metrics.json").write_text('{"all": {"R@1"')  # a job killed while writing

    markdown_path, csv_path = ReproduceTable.write(str(sweep))
    markdown = markdown_path.read_text()
    main_table = table_rows(markdown, "Test split")
    header, rows = main_table[0], main_table[1:]
    assert header[:4] == ["model", "city", "img", "queries"] and "R@1 ours" in header and "R@1 paper" in header
    official = [row for row in rows if row[0] == "CrossText2Loc, official checkpoint"]
    assert sorted((row[1], row[2]) for row in official) == sorted((c, i) for c in CITIES for i in ("sat", "osm"))
    paper = published()
    for row in official:
        values = dict(zip(header, row))
        assert values["R@1 paper"] == f"{paper[(row[1], row[2])]['R@1']:.2f}"
        assert values["L@50 paper"] == f"{paper[(row[1], row[2])]['L@50']:.2f}"
        saved = json.loads(next(p for p in sweep.glob("[0-9]*/metrics.json") if _is(p, row[1], row[2])).read_text())
        low, high = saved["confidence"]["intervals"]["all"]["R@1"]
        assert values["R@1 ours"] == f"{saved['all']['R@1']:.2f} [{low:.1f}, {high:.1f}]"
    (trained,) = [row for row in rows if row[0].startswith("tiny")]
    assert trained[1:3] == ["Brisbane", "sat"] and dict(zip(header, trained))["R@1 paper"] == MISSING

    cross = table_rows(markdown, "Across cities, sat")
    assert cross[0] == ["trained on \\ tested on", "NewYork", "Brisbane", "Tokyo"]  # the paper's order
    assert [row[0] for row in cross[1:]] == ["NewYork sat", "Brisbane sat", "Tokyo sat"]
    assert all(len(row) == 4 and MISSING not in row for row in cross[1:])
    assert "Across cities, osm" not in markdown  # no osm checkpoint was tested on another city

    with open(csv_path, newline="") as stream:
        table = list(csv.DictReader(stream))
    assert {row["protocol"] for row in table} == {"nearest100", "full"}
    for row in table:
        if row["low"]:
            assert float(row["low"]) <= float(row["ours"]) <= float(row["high"]), row
    r1 = [row for row in table if row["metric"] == "R@1" and row["protocol"] == "nearest100" and row["paper"]]
    assert len(r1) == 6  # the paper's R@1 beside the six official checkpoints on their own city


def _is(path, city, img) -> bool:
    run = json.loads(path.read_text())["run"]
    own = (run.get("trained_on") or {}).get("city") == city
    return run["city"] == city and run["img"] == img and own


@pytest.mark.slow
def test_the_table_command_gathers_folders_and_says_when_there_is_nothing(tmp_path, capsys, test_backbone):
    from cvgtext.commands.evaluate import evaluate

    data = write_fake_release(tmp_path / "data", test_backbone, cities=("Tokyo",), images=("osm",))
    evaluate(compose_config("eval", official_overrides(data, tmp_path / "run", "city=Tokyo", "img=osm"), tmp_path))
    assert main([str(tmp_path / "run"), "--out", str(tmp_path / "table")]) == 0
    printed = capsys.readouterr().out
    assert "| CrossText2Loc, official checkpoint | Tokyo | osm |" in printed and "| 34.33 | 38.33 |" in printed
    assert (tmp_path / "table" / "reproduce.md").read_text() in printed
    assert main([str(tmp_path / "data")]) == 1
    assert capsys.readouterr().err.startswith("error: no evaluation's metrics.json in ")


@pytest.mark.heavy  # a sweep through the CLI: make test-slow
def test_a_reproduce_sweep_writes_the_table_into_its_folder(tmp_path):
    data = write_fake_release(tmp_path / "data", "cvg-tiny", cities=("Brisbane", "Tokyo"), images=("sat",), half=True)
    run = run_cli(
        "eval.py",
        "-m",
        "experiment=reproduce",
        "city=Brisbane,Tokyo",
        "backbone.model_name=cvg-tiny",
        f"paths.data_dir={data}",
        f"paths.log_dir={tmp_path}/outputs",
        f"hydra.sweep.dir={tmp_path}/sweep",
        "trainer=cpu",
        "data.num_workers=0",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    table = (tmp_path / "sweep" / "reproduce.md").read_text()
    assert table in run.stdout
    rows = table_rows(table, "Test split")[1:]
    assert [(row[1], row[2]) for row in rows] == [("Brisbane", "sat"), ("Tokyo", "sat")]


def test_the_papers_figures_stand_only_beside_what_the_paper_measured(tmp_path):
    values = {"R@1": 40.0, "R@5": 60.0, "R@10": 70.0, "L@50": 42.0, "MRR": 50.0, "count": 1200}
    settings = {  # folder -> (split, protocol, trained on): only the first is the paper's setting
        "published": ("test", "nearest100", "Brisbane"),
        "validation": ("val", "nearest100", "Brisbane"),
        "whole": ("test", "full", "Brisbane"),
        "across": ("test", "nearest100", "Tokyo"),
    }
    for folder, (split, protocol, trained_on) in settings.items():
        (tmp_path / folder).mkdir()
        run = {"city": "Brisbane", "img": "sat", "text": "mixed", "split": split, "backbone_name": "crosstext2loc"}
        run["trained_on"] = {"city": trained_on, "img": "sat"}
        metrics = {"all": values, "protocol": protocol, "full_city": {"all": values}, "run": run}
        (tmp_path / folder / "metrics.json").write_text(json.dumps(metrics))
    runs = {run.folder.name: run for run in gather([tmp_path])}
    assert [name for name, run in runs.items() if run.as_published] == ["published"]
    header, rows = main_rows(runs.values())
    beside = [dict(zip(header, row)) for row in rows if row[header.index("R@1 paper")] != MISSING]
    assert len(beside) == 1 and beside[0]["R@1 paper"] == "43.58" and beside[0]["R@1 ours"] == "40.00"
    assert len(rows) == 2  # the paper's protocol on the own city: the test run and the validation run
