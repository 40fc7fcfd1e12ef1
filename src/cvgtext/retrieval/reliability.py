"""Whether stated confidences can be trusted: expected calibration error, Brier score, the
reliability diagram's bins and the risk-coverage curve.

``confidence  # [queries]`` is a probability that an answer is right, ``correct  # [queries]``
whether it was. A calibrated model's answers stated at 70 % are right 70 % of the time.
"""

from __future__ import annotations

import math

import torch

BINS = 10
COVERAGE_STEPS = 20  # the risk-coverage curve in metrics.json: every 5 % of the queries


def reliability_bins(confidence: torch.Tensor, correct: torch.Tensor, bins: int = BINS) -> list[dict[str, float]]:
    """Equal-width bins of confidence: ``{"low", "high", "count", "confidence", "accuracy"}``
    (the mean confidence and the share right of the queries in each; None in an empty bin)."""
    confidence, correct = confidence.double().cpu(), correct.double().cpu()
    which = (confidence * bins).floor().clamp(0, bins - 1).long()
    rows = []
    for b in range(bins):
        members = which == b
        count = int(members.sum())
        rows.append(
            {
                "low": b / bins,
                "high": (b + 1) / bins,
                "count": count,
                "confidence": float(confidence[members].mean()) if count else None,
                "accuracy": float(correct[members].mean()) if count else None,
            }
        )
    return rows


def expected_calibration_error(confidence: torch.Tensor, correct: torch.Tensor, bins: int = BINS) -> float:
    """ECE: the queries' share in each equal-width bin times the gap between its accuracy and its
    mean confidence, summed (0 is perfectly calibrated, in [0, 1])."""
    total = confidence.numel()
    if not total:
        raise ValueError("no queries to measure calibration on")
    rows = reliability_bins(confidence, correct, bins)
    return math.fsum(row["count"] / total * abs(row["accuracy"] - row["confidence"]) for row in rows if row["count"])


def brier_score(confidence: torch.Tensor, correct: torch.Tensor) -> float:
    """Mean squared difference between the confidence and the outcome (1 right, 0 wrong)."""
    return float((confidence.double() - correct.double()).square().mean())


def risk_coverage(confidence: torch.Tensor, correct: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(coverage, accuracy)``, each ``[queries]``: answering only the most confident queries
    (the least confident withheld first), the share answered and the share of those right.

    Queries of equal confidence are withheld together: the curve has a point only where the
    confidence changes, so its order among ties never matters.
    """
    confidence, correct = confidence.double().cpu(), correct.double().cpu()
    order = confidence.argsort(descending=True, stable=True)
    right = correct[order].cumsum(0)
    answered = torch.arange(1, len(order) + 1, dtype=torch.float64)
    ranked = confidence[order]
    last_of_tie = torch.cat([ranked[1:] != ranked[:-1], torch.tensor([True])])
    return (answered / len(order))[last_of_tie], (right / answered)[last_of_tie]


def coverage_table(
    confidence: torch.Tensor, correct: torch.Tensor, steps: int = COVERAGE_STEPS
) -> list[dict[str, float]]:
    """The risk-coverage curve at every ``1 / steps`` of the queries: ``{"coverage", "accuracy",
    "threshold"}`` in percent and the confidence at or above which those queries are answered.
    Ties at the threshold are all answered, so a coverage can exceed its step."""
    confidence, correct = confidence.double().cpu(), correct.double().cpu()
    ranked = confidence.sort(descending=True, stable=True).values
    rows = []
    for step in range(1, steps + 1):
        threshold = float(ranked[max(0, math.ceil(step / steps * len(ranked)) - 1)])
        answered = confidence >= threshold
        rows.append(
            {
                "coverage": 100.0 * float(answered.double().mean()),
                "accuracy": 100.0 * float(correct[answered].mean()),
                "threshold": threshold,
            }
        )
    return rows


def calibration_summary(confidence: torch.Tensor, correct: torch.Tensor, bins: int = BINS) -> dict:
    """ECE, Brier score, mean confidence and accuracy (percent), and the reliability bins."""
    return {
        "ece": expected_calibration_error(confidence, correct, bins),
        "brier": brier_score(confidence, correct),
        "mean_confidence": 100.0 * float(confidence.double().mean()),
        "accuracy": 100.0 * float(correct.double().mean()),
        "bins": reliability_bins(confidence, correct, bins),
    }
