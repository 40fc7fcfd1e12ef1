"""The paper's Table 2 as this project measures it: evaluation runs gathered into one table.

Each run folder's ``metrics.json`` (``eval.py``, one job of a sweep) gives a row: the model, the
city and gallery type it was tested on, our figures under the paper's protocol (each description
ranks the 100 tiles nearest its place) with their 95 % bootstrap intervals, and the whole test
gallery's; for the official checkpoints, the paper's published R@1 and L@50 beside them
(``data/published_table2.csv``, with its source). Runs of an official checkpoint tested on
another city than its own make the cross-city table (trained on X, tested on Y).

    python eval.py -m experiment=reproduce city=Brisbane,NewYork,Tokyo img=sat,osm   # writes it at the end
    python -m cvgtext.reports.reproduce outputs/eval/multiruns/<sweep> [more folders]   # gathers again

``reproduce.md`` and ``reproduce.csv`` go into the sweep folder (or ``--out``).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from cvgtext.reports.tables import interval_cell, markdown_table
from cvgtext.utils.atomic import atomic_write

PUBLISHED = "data/published_table2.csv"
PAPER_METHOD = "CrossText2Loc (EPE, no ERM)"  # the row the official checkpoints reproduce
MODEL_LABELS = {"crosstext2loc": "CrossText2Loc, official checkpoint", "vilt": "ViLT-B/32"}
CITIES = ("NewYork", "Brisbane", "Tokyo")  # the paper's column order
OURS = ("R@1", "R@5", "R@10", "L@50", "MRR")
WHOLE = ("R@1", "R@5", "MRR")
MISSING = "—"


@dataclass
class Run:
    """One evaluation: what was tested, and its metrics.json."""

    folder: Path
    model: str
    trained_on: str | None  # the official checkpoint's city, None for other weights
    city: str
    img: str
    metrics: dict[str, Any]
    split: str = "test"
    text: str = "mixed"

    @property
    def own_city(self) -> bool:
        return self.trained_on in (None, self.city)

    @property
    def as_published(self) -> bool:
        """An official checkpoint on its own city's test split, mixed texts, the paper's protocol:
        what the paper's Table 2 reports."""
        setting = (self.split, self.text, self.metrics.get("protocol"))
        return self.trained_on == self.city and setting == ("test", "mixed", "nearest100")


def published(method: str = PAPER_METHOD) -> dict[tuple[str, str], dict[str, float]]:
    """``(city, img) -> {"R@1": .., "L@50": ..}`` as the paper publishes them for ``method``."""
    text = resources.files("cvgtext.reports").joinpath(PUBLISHED).read_text()
    return {
        (row["city"], row["img"]): {"R@1": float(row["R@1"]), "L@50": float(row["L@50"])}
        for row in csv.DictReader(io.StringIO(text))
        if row["method"] == method
    }


def source() -> str:
    text = resources.files("cvgtext.reports").joinpath(PUBLISHED).read_text()
    return next(csv.DictReader(io.StringIO(text)))["source"]


def read_run(path: Path) -> Run | None:
    """The run whose metrics.json is ``path``; None for a file that is not an evaluation's."""
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    summary = metrics.get("run") or {}
    if "all" not in metrics or "city" not in summary:
        return None
    label = model_label(summary)
    trained_on = (summary.get("trained_on") or {}).get("city")
    return Run(
        path.parent,
        label,
        trained_on,
        summary["city"],
        summary["img"],
        metrics,
        summary.get("split", "test"),
        summary.get("text", "mixed"),
    )


def model_label(summary: dict[str, Any]) -> str:
    """How the table names a run's model: the official ones by name, others by backbone and weights."""
    name = summary.get("backbone_name") or summary.get("backbone")
    if name in MODEL_LABELS and not summary.get("checkpoint"):
        return MODEL_LABELS[name]
    weights = summary.get("checkpoint") or summary.get("pretrained")
    return f"{name}, {weights}" if weights else f"{name}, random weights"


def gather(folders: Iterable[str | Path]) -> list[Run]:
    """The runs in ``folders``: each a run folder or a sweep folder of job folders, at any depth."""
    runs = []
    for folder in folders:
        for path in sorted(Path(folder).rglob("metrics.json")):
            run = read_run(path)
            if run is not None:
                runs.append(run)
    city_order = {city: i for i, city in enumerate(CITIES)}
    return sorted(runs, key=lambda r: (r.model, r.img != "sat", city_order.get(r.city, 9), r.city, r.trained_on or ""))


def cell(metrics: dict[str, Any], key: str, intervals: dict[str, Any] | None) -> str:
    """``43.6 [40.8, 46.4]``: a value and its interval where there is one."""
    if key not in metrics:
        return MISSING
    interval = interval_cell((intervals or {}).get(key), key)
    return f"{metrics[key]:.2f} {interval}" if interval else f"{metrics[key]:.2f}"


def paper_cell(run: Run, key: str, paper: dict[tuple[str, str], dict[str, float]]) -> str:
    if not run.as_published:
        return MISSING
    values = paper.get((run.city, run.img))
    return f"{values[key]:.2f}" if values else MISSING


def main_rows(runs: Sequence[Run]) -> tuple[list[str], list[list[str]]]:
    """The header and rows of the main table: each run on its own city."""
    paper = published()
    header = ["model", "city", "img", "queries"]
    header += [f"{key} ours" for key in OURS] + ["R@1 paper", "L@50 paper"]
    header += [f"whole gallery {key} ours" for key in WHOLE]
    rows = []
    for run in (run for run in runs if run.own_city and run.metrics.get("protocol") == "nearest100"):
        confidence = run.metrics.get("confidence") or {}
        ours = run.metrics["all"]
        whole = (run.metrics.get("full_city") or {}).get("all", {})
        rows.append(
            [run.model, run.city, run.img, str(ours.get("count", MISSING))]
            + [cell(ours, key, (confidence.get("intervals") or {}).get("all")) for key in OURS]
            + [paper_cell(run, "R@1", paper), paper_cell(run, "L@50", paper)]
            + [cell(whole, key, (confidence.get("full_city") or {}).get("all")) for key in WHOLE]
        )
    return header, rows


def cross_city_rows(runs: Sequence[Run], img: str) -> tuple[list[str], list[list[str]]]:
    """Official checkpoints (rows: trained on) against test cities (columns): R@1, 100 nearest / whole gallery."""
    official = [run for run in runs if run.trained_on is not None and run.img == img]
    tested = sorted({run.city for run in official}, key=lambda c: (CITIES.index(c) if c in CITIES else 9, c))
    trained = sorted({run.trained_on for run in official}, key=lambda c: (CITIES.index(c) if c in CITIES else 9, c))
    found = {(run.trained_on, run.city): run for run in official}
    rows = []
    for source_city in trained:
        row = [f"{source_city} {img}"]
        for city in tested:
            run = found.get((source_city, city))
            if run is None:
                row.append(MISSING)
                continue
            whole = (run.metrics.get("full_city") or {}).get("all", {})
            row.append(f"{cell(run.metrics['all'], 'R@1', None)} / {cell(whole, 'R@1', None)}")
        rows.append(row)
    return ["trained on \\ tested on", *tested], rows


def report(runs: Sequence[Run]) -> str:
    """The Markdown of the tables."""
    header, rows = main_rows(runs)
    splits = ", ".join(sorted({run.split for run in runs})).capitalize()
    texts = ", ".join(sorted({run.text for run in runs}))
    parts = [
        f"## {splits} split, {texts} texts (ours: this project's evaluation; paper: the published figures)",
        "",
        "R@k, L@50 and MRR in percent under the paper's protocol (each description ranks the 100 tiles "
        "nearest its true place), with 95 % bootstrap intervals over the queries in brackets; "
        "whole gallery: every test tile ranked. The official checkpoints were chosen on the test split "
        f"(their R@1 is in their file names). Paper: {source()}.",
        "",
        markdown_table(header, rows) if rows else "(no run on its own city under the paper's protocol)",
    ]
    for img in ("sat", "osm"):
        if not any(run.img == img and not run.own_city for run in runs):
            continue
        cross_header, cross = cross_city_rows(runs, img)
        parts += [
            "",
            f"## Across cities, {img}: R@1 of each official checkpoint, 100 nearest / whole gallery (ours)",
            "",
            markdown_table(cross_header, cross),
        ]
    return "\n".join(parts) + "\n"


def csv_rows(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """One row per run and metric: both protocols, the intervals, and the paper's value where published."""
    paper = published()
    rows = []
    for run in runs:
        confidence = run.metrics.get("confidence") or {}
        for protocol, metrics, intervals in (
            (run.metrics.get("protocol"), run.metrics["all"], (confidence.get("intervals") or {}).get("all", {})),
            (
                "full",
                (run.metrics.get("full_city") or {}).get("all", {}),
                (confidence.get("full_city") or {}).get("all", {}),
            ),
        ):
            for key, value in metrics.items():
                if key == "count":
                    continue
                bounds = intervals.get(key) or [None, None]
                published_value = (
                    paper_cell(run, key, paper) if protocol == "nearest100" and key in ("R@1", "L@50") else MISSING
                )
                rows.append(
                    {
                        "model": run.model,
                        "trained_on": run.trained_on or "",
                        "city": run.city,
                        "img": run.img,
                        "protocol": protocol,
                        "metric": key,
                        "ours": value,
                        "low": bounds[0],
                        "high": bounds[1],
                        "paper": "" if published_value == MISSING else float(published_value),
                        "queries": metrics.get("count"),
                        "run": str(run.folder),
                    }
                )
    return rows


def write_tables(runs: Sequence[Run], out: str | Path) -> tuple[Path, Path]:
    """``reproduce.md`` and ``reproduce.csv`` in ``out``, written atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "reproduce.md", out / "reproduce.csv"
    with atomic_write(paths[0]) as stream:
        stream.write(report(runs))
    rows = csv_rows(runs)
    with atomic_write(paths[1], newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]) if rows else ["model"])
        writer.writeheader()
        writer.writerows(rows)
    return paths


class ReproduceTable(Callback):
    """The table of a sweep (``experiment=reproduce``), in its folder: rebuilt as each job ends, so
    that a sweep stopped part-way keeps what it measured, and printed when the sweep ends."""

    def on_job_end(self, config: DictConfig, job_return: Any = None, **kwargs: Any) -> None:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized() and HydraConfig.get().mode.name == "MULTIRUN":
            self.write(config.hydra.sweep.dir)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        markdown_path, _ = self.write(config.hydra.sweep.dir)
        print(markdown_path.read_text())
        print(f"written to {markdown_path} and {markdown_path.with_suffix('.csv')}")

    @staticmethod
    def write(sweep_dir: str) -> tuple[Path, Path]:
        return write_tables(gather([sweep_dir]), sweep_dir)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cvgtext.reports.reproduce",
        description="Gather evaluation runs (run or sweep folders) into the reproduce table.",
    )
    parser.add_argument("folders", nargs="+", help="run folders or sweep folders holding metrics.json files")
    parser.add_argument("--out", help="where reproduce.md and reproduce.csv go (default: the first folder)")
    arguments = parser.parse_args(argv)
    runs = gather(arguments.folders)
    if not runs:
        print(f"error: no evaluation's metrics.json in {', '.join(arguments.folders)}", file=sys.stderr)
        return 1
    markdown_path, csv_path = write_tables(runs, arguments.out or arguments.folders[0])
    print(markdown_path.read_text())
    print(f"{len(runs)} runs; written to {markdown_path} and {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
