"""What an evaluation reports about its confidence: the calibration section of metrics.json,
the confidence columns of predictions.csv, and two pictures, ``reliability.png`` (the
reliability diagram) and ``risk_coverage.png`` (R@1 against the share of queries answered when
the least confident are withheld). All files are written atomically.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cvgtext.retrieval.calibration import Calibration, Confidence
from cvgtext.retrieval.reliability import BINS, calibration_summary, coverage_table, risk_coverage
from cvgtext.utils.atomic import save_figure


@dataclass
class CalibrationReport:
    """The calibrated confidence of every query of an evaluated split, and the outcomes."""

    calibration: Calibration
    reused: bool  # the calibration was read from paths.cache_dir, not fitted in this run
    split: str  # the evaluated split
    probability: float  # of the areas
    within_m: float
    answers: Confidence
    correct: torch.Tensor  # [queries] bool: the top-1 tile is the true one (R@1)
    correct_within: torch.Tensor  # [queries] bool: the top-1 tile is within within_m of the true place
    bins: int = BINS


def _quantiles(values: torch.Tensor) -> dict[str, float]:
    values = values.double()
    return {
        "mean": float(values.mean()),
        "median": float(values.median()),
        "p90": float(values.quantile(0.9)),
        "max": float(values.max()),
    }


def calibration_content(report: CalibrationReport) -> dict[str, Any]:
    """metrics.json's ``calibration``: the fit, ECE and Brier score of both confidences, the
    areas' coverage and size, and the risk-coverage curve (percent)."""
    answers, calibration = report.answers, report.calibration
    within_key = f"within_{report.within_m:g}m"
    return {
        "model": "softmax over the candidates at a temperature fitted on the validation split",
        "temperature": calibration.temperature,
        "fitted_on": calibration.split,
        "fitted_queries": calibration.queries,
        "fitted_nll": calibration.nll,
        "reused": report.reused,
        "evaluated_on": report.split,
        "top1": calibration_summary(answers.top1, report.correct, report.bins),
        within_key: calibration_summary(answers.within, report.correct_within, report.bins),
        "area": {
            "probability": report.probability,
            "holds_true_tile": 100.0 * float(answers.in_area.double().mean()),
            "holds_true_place_radius": 100.0 * float(answers.in_radius.double().mean()),
            "places": _quantiles(answers.area_size),
            "radius_m": _quantiles(answers.area_radius_m),
        },
        "risk_coverage": coverage_table(answers.top1, report.correct),
    }


def calibration_metrics(report: CalibrationReport) -> dict[str, float]:
    """The figures loggers receive, under ``{split}/calibration/``."""
    content = calibration_content(report)
    prefix = f"{report.split}/calibration"
    within_key = f"within_{report.within_m:g}m"
    return {
        f"{prefix}/ece": content["top1"]["ece"],
        f"{prefix}/brier": content["top1"]["brier"],
        f"{prefix}/{within_key}_ece": content[within_key]["ece"],
        f"{prefix}/{within_key}_brier": content[within_key]["brier"],
        f"{prefix}/area_holds_true_tile": content["area"]["holds_true_tile"],
        f"{prefix}/area_places_median": content["area"]["places"]["median"],
        f"{prefix}/area_radius_m_median": content["area"]["radius_m"]["median"],
    }


def prediction_header(report: CalibrationReport) -> list[str]:
    share = f"{100 * report.probability:g}"
    return [
        "confidence",
        f"confidence_within_{report.within_m:g}m",
        f"area{share}_places",
        f"area{share}_radius_m",
        f"true_in_area{share}",
        f"true_within_radius{share}",
    ]


def prediction_cells(report: CalibrationReport, query: int) -> list[Any]:
    """The confidence columns of one query's row of predictions.csv."""
    answers = report.answers
    return [
        round(float(answers.top1[query]), 5),
        round(float(answers.within[query]), 5),
        int(answers.area_size[query]),
        round(float(answers.area_radius_m[query]), 1),
        int(answers.in_area[query]),
        int(answers.in_radius[query]),
    ]


def draw_reliability(path: Path, report: CalibrationReport) -> None:
    """``reliability.png``: accuracy against stated confidence per bin (the diagonal is calibrated),
    for the top-1 and for the top-1 within ``within_m``, with the queries per bin beneath."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    content = calibration_content(report)
    within_key = f"within_{report.within_m:g}m"
    figure = Figure(figsize=(9, 4.6))
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(2, 2, height_ratios=(3, 1), hspace=0.08, wspace=0.25)
    for column, (key, title) in enumerate(
        (("top1", "top-1 is the true tile"), (within_key, f"top-1 within {report.within_m:g} m"))
    ):
        summary = content[key]
        bins = summary["bins"]
        axes, counts = figure.add_subplot(grid[0, column]), figure.add_subplot(grid[1, column])
        centres = [(b["low"] + b["high"]) / 2 for b in bins]
        width = 1 / len(bins)
        accuracy = [b["accuracy"] or 0.0 for b in bins]
        axes.bar(centres, accuracy, width=width * 0.9, color="tab:blue", label="share right")
        stated = [math.nan if b["confidence"] is None else b["confidence"] for b in bins]
        axes.plot(
            [c for c, s in zip(centres, stated) if not math.isnan(s)],
            [s for s in stated if not math.isnan(s)],
            "o",
            color="black",
            markersize=3,
            label="mean confidence",
        )
        axes.plot([0, 1], [0, 1], "--", color="grey", linewidth=1, label="calibrated")
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1)
        axes.set_xticklabels([])
        axes.set_title(f"{title}: ECE {summary['ece']:.3f}, Brier {summary['brier']:.3f}", fontsize=9)
        if column == 0:
            axes.set_ylabel("share right")
            axes.legend(fontsize=7, loc="upper left")
        counts.bar(centres, [b["count"] for b in bins], width=width * 0.9, color="grey")
        counts.set_xlim(0, 1)
        counts.set_xlabel("stated confidence")
        if column == 0:
            counts.set_ylabel("queries")
    figure.suptitle(
        f"{report.split} split, {len(report.correct):,} queries; temperature {report.calibration.temperature:.4g} "
        f"fitted on {report.calibration.split} ({report.calibration.queries:,} queries)",
        fontsize=9,
    )
    save_figure(figure, path, dpi=100)


def draw_risk_coverage(path: Path, report: CalibrationReport) -> None:
    """``risk_coverage.png``: R@1 of the queries answered against the share answered, the least
    confident withheld first; R@1 of all queries and a perfect ordering beside it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    coverage, accuracy = risk_coverage(report.answers.top1, report.correct)
    overall = 100 * float(report.correct.double().mean())
    # A perfect ordering answers the right queries first: R@1 100 % up to their share, then falling.
    ideal_coverage = torch.linspace(0.5, 100, 200, dtype=torch.float64)
    ideal_accuracy = (100 * overall / ideal_coverage).clamp(max=100)
    figure = Figure(figsize=(5.5, 4))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot(100 * coverage, 100 * accuracy, color="tab:blue", label="withholding the least confident")
    axes.plot(ideal_coverage, ideal_accuracy, color="grey", linestyle=":", label="a perfect ordering")
    axes.axhline(overall, color="black", linestyle="--", linewidth=1, label=f"all queries: R@1 {overall:.1f} %")
    axes.set_xlim(0, 100)
    axes.set_ylim(0, 100)
    axes.set_xlabel("queries answered (%)")
    axes.set_ylabel("R@1 of those answered (%)")
    axes.set_title(f"Risk-coverage, {report.split} split ({len(report.correct):,} queries)", fontsize=9)
    axes.legend(fontsize=7, loc="lower left")
    save_figure(figure, path, dpi=100)


def calibration_table(report: CalibrationReport) -> str:
    """The printed summary: how well the confidences match the outcomes, and the areas."""
    content = calibration_content(report)
    within_key = f"within_{report.within_m:g}m"
    area = content["area"]
    share = f"{100 * report.probability:g} %"
    lines = [
        f"Confidence on the {report.split} split (temperature {report.calibration.temperature:.4g}, "
        f"fitted on {report.calibration.queries:,} validation queries)",
        f"{'':<28}{'ECE':>8}{'Brier':>8}{'stated %':>10}{'right %':>9}",
    ]
    for key, label in (("top1", "top-1 is the true tile"), (within_key, f"top-1 within {report.within_m:g} m")):
        summary = content[key]
        lines.append(
            f"{label:<28}{summary['ece']:>8.3f}{summary['brier']:>8.3f}"
            f"{summary['mean_confidence']:>10.1f}{summary['accuracy']:>9.1f}"
        )
    lines.append(
        f"{share} areas hold the true tile for {area['holds_true_tile']:.1f} % of the queries "
        f"({area['holds_true_place_radius']:.1f} % within their radius); median {area['places']['median']:g} "
        f"tiles, {area['radius_m']['median']:,.0f} m"
    )
    return "\n".join(lines)
