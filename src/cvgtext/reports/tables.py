"""The metrics as a fixed-width table, one row per text view, with each metric's interval below it;
Markdown tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

TABLE_COLUMNS = ("R@1", "R@5", "R@10", "MRR", "L@50", "L@100", "L@150", "mean_error_km", "count")
WIDTH = 15  # characters per column: an interval of two 100.0 and a space


def interval_cell(bounds: list[float] | None, key: str) -> str:
    """``[low, high]``: one decimal for percentages, two for km."""
    if not bounds:
        return ""
    digits = 2 if key.endswith("_km") else 1
    return f"[{bounds[0]:.{digits}f}, {bounds[1]:.{digits}f}]"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table of ``rows`` under ``header`` (cells already formatted)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def metrics_table(
    metrics: Mapping[str, Mapping[str, float]],
    title: str = "",
    intervals: Mapping[str, Mapping[str, list[float]]] | None = None,
) -> str:
    """A fixed-width table: one row per text view (all, panorama, single), percent and km.

    ``intervals`` (``{group: {metric: [low, high]}}``, as ``Evaluation.intervals`` gives them)
    adds a row under each group's with the interval of each metric.
    """
    header = f"{'queries':<10}" + "".join(f"{column:>{WIDTH}}" for column in TABLE_COLUMNS)
    lines = [title, header, "-" * len(header)] if title else [header, "-" * len(header)]
    for group, values in metrics.items():
        cells = [
            f"{int(values[c]):>{WIDTH}d}" if c == "count" else f"{values.get(c, float('nan')):>{WIDTH}.2f}"
            for c in TABLE_COLUMNS
        ]
        lines.append(f"{group:<10}" + "".join(cells))
        bounds = (intervals or {}).get(group)
        if bounds:
            lines.append(f"{'':<10}" + "".join(f"{interval_cell(bounds.get(c), c):>{WIDTH}}" for c in TABLE_COLUMNS))
    return "\n".join(lines)
