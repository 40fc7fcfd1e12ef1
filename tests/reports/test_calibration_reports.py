"""What an evaluation reports about its confidence, checked on a split ranked by hand
(``small_split``: captions C, A, A again, B; over the whole gallery the last two are wrong),
and end to end by eval.py on a tiny city."""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from cvgtext.commands.calibrate import split_confidence
from cvgtext.reports.calibration import CalibrationReport, calibration_content
from cvgtext.reports.results import write_reports
from cvgtext.retrieval.calibration import Calibration
from cvgtext.retrieval.split import evaluate_split


@pytest.fixture
def report(small_split):
    embedded, dataset = small_split
    evaluation = evaluate_split(embedded, dataset, nearest=None)
    calibration = Calibration(temperature=0.25, queries=7, split="val", nll=0.9)
    answers = split_confidence(evaluation, calibration, probability=0.8, within_m=50)
    correct = evaluation.ranking.hits(1)
    report = CalibrationReport(
        calibration, False, "test", 0.8, 50.0, answers, correct, evaluation.ranking.top1_error_km <= 0.05, bins=5
    )
    return evaluation, dataset, report


def test_each_querys_confidence_is_the_softmax_of_its_scores(report):
    evaluation, _, report = report
    scores = evaluation.queries @ evaluation.gallery.T  # [4 queries, 3 tiles], as ranked by hand
    p = torch.softmax(scores.double() / 0.25, dim=1)
    assert report.answers.top1.tolist() == pytest.approx(p.amax(1).tolist())
    # B lies 30 m from A: "within 50 m" of a top-1 at A or B adds the other's probability
    places = evaluation.gallery_places
    names_near = [
        [j for j in range(3) if abs(float(places[j, 0] - places[int(p[q].argmax()), 0])) * 111_195 <= 50]
        for q in range(4)
    ]
    assert report.answers.within.tolist() == pytest.approx(
        [float(p[q, near].sum()) for q, near in enumerate(names_near)]
    )
    assert report.correct.tolist() == [True, True, False, False]


def test_the_reports_carry_the_calibration(report, tmp_path):
    evaluation, dataset, report = report
    logged = SimpleNamespace(images=[], tables=[])
    wandb = type("WandbLogger", (), {})()
    wandb.log_image = lambda key, images: logged.images.append(key)
    wandb.log_table = lambda key, columns, data: logged.tables.append(columns)
    paths = write_reports(tmp_path, evaluation, dataset, {"split": "test"}, [wandb], calibration=report)
    for picture in ("reliability", "risk_coverage"):
        with Image.open(paths[picture]) as image:
            assert image.width > 400 and image.height > 300
    assert logged.images == ["test/examples", "test/reliability", "test/risk_coverage"]
    content = json.loads(paths["metrics"].read_text())["calibration"]
    assert content["temperature"] == 0.25 and content["fitted_on"] == "val" and content["evaluated_on"] == "test"
    assert content["top1"]["accuracy"] == 50.0
    assert content["top1"]["mean_confidence"] == pytest.approx(100 * float(report.answers.top1.mean()))
    assert content["area"]["holds_true_tile"] == pytest.approx(100 * float(report.answers.in_area.double().mean()))
    assert [row["coverage"] for row in content["risk_coverage"]][-1] == 100.0
    with open(paths["predictions"], newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [float(row["confidence"]) for row in rows] == pytest.approx(report.answers.top1.tolist(), abs=1e-5)
    assert [int(row["area80_places"]) for row in rows] == report.answers.area_size.tolist()
    assert list(rows[0])[8:14] == [
        "confidence",
        "confidence_within_50m",
        "area80_places",
        "area80_radius_m",
        "true_in_area80",
        "true_within_radius80",
    ]
    assert calibration_content(report) == content  # strict JSON: an empty bin is null, not NaN
    assert "NaN" not in paths["metrics"].read_text()


@pytest.mark.slow
def test_eval_fits_on_validation_reports_on_test_and_reuses_the_fit(release_dir, tmp_path, capsys):
    from cvgtext.commands.evaluate import evaluate
    from helpers.city import repaint_tiles
    from helpers.models import tiny_checkpoint
    from helpers.runs import compose_config, locate_overrides

    repaint_tiles(release_dir)
    checkpoint = tiny_checkpoint(tmp_path / "model.ckpt", seed=5)
    settings = [f"paths.cache_dir={tmp_path}/cache", f"ckpt_path={checkpoint}", *locate_overrides(release_dir)]
    metrics = evaluate(compose_config("eval", settings, tmp_path / "first"))
    assert "Confidence on the test split" in capsys.readouterr().out
    first = json.loads((tmp_path / "first" / "run" / "metrics.json").read_text())
    assert not any(key.startswith("val/") for key in metrics) and "test/calibration/ece" in metrics
    assert first["calibration"]["fitted_on"] == "val" and not first["calibration"]["reused"]
    from cvgtext.data.annotations import in_validation
    from helpers.city import CITY, annotation_path

    validation = [
        name
        for version in (CITY, f"{CITY}-photos")
        for name in json.loads(annotation_path(release_dir, version).read_text())
        if in_validation(name, 0.3)
    ]
    assert first["calibration"]["fitted_queries"] == len(validation) > 0
    assert (tmp_path / "first" / "run" / "reliability.png").is_file()
    evaluate(compose_config("eval", settings, tmp_path / "second"))
    second = json.loads((tmp_path / "second" / "run" / "metrics.json").read_text())
    assert (
        second["calibration"]["reused"] and second["calibration"]["temperature"] == first["calibration"]["temperature"]
    )
    assert second["all"] == first["all"]
    off = evaluate(compose_config("eval", [*settings, "calibration.enabled=false"], tmp_path / "off"))
    assert "calibration" not in json.loads((tmp_path / "off" / "run" / "metrics.json").read_text())
    assert {key: value for key, value in metrics.items() if "calibration" not in key} == off
