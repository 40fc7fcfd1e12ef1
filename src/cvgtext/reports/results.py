"""What an evaluation leaves in the run directory: metrics.json, predictions.csv, examples.png
(and, calibrated, reliability.png and risk_coverage.png: ``reports/calibration.py``).

All files are written atomically; the printed table is the same as the one in the log.
"""

from __future__ import annotations

import csv
import json
import logging
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from PIL import Image, ImageDraw, ImageFont

from cvgtext.data.dataset import PairDataset, load_image
from cvgtext.model.relevance import Explanation
from cvgtext.reports.calibration import (
    CalibrationReport,
    calibration_content,
    calibration_table,
    draw_reliability,
    draw_risk_coverage,
    prediction_cells,
    prediction_header,
)
from cvgtext.reports.overlays import draw_shaded_words, heat_overlay, word_relevance
from cvgtext.reports.tables import metrics_table
from cvgtext.rerank.compare import SplitReranking, comparison_table
from cvgtext.retrieval.geo import haversine_km
from cvgtext.retrieval.ranking import NOT_RANKED
from cvgtext.retrieval.split import Evaluation
from cvgtext.utils.atomic import atomic_write

log = logging.getLogger(__name__)

TOP = 5  # candidates per query in predictions.csv and examples.png
EXAMPLES = 6  # queries in examples.png


def run_summary(cfg: DictConfig, backbone: dict[str, Any], split: str) -> dict[str, Any]:
    """What an evaluation was of, for metrics.json (``trained_on``: the city and gallery type of
    an official checkpoint, ``backbone=crosstext2loc``)."""
    summary = {
        "city": cfg.city.name,
        "img": cfg.img.name,
        "text": cfg.text.name,
        "split": split,
        "protocol": cfg.protocol.name,
        "backbone": backbone.get("model_name"),
        "backbone_name": backbone.get("name"),
        "pretrained": backbone.get("pretrained"),
        "context_length": backbone.get("context_length"),
        "checkpoint": cfg.get("ckpt_path"),
    }
    if backbone.get("trained_on"):
        summary["trained_on"] = dict(backbone["trained_on"])
    return summary


def write_metrics(
    path: Path,
    evaluation: Evaluation,
    summary: dict[str, Any],
    reranking: SplitReranking | None = None,
    confidence: dict[str, Any] | None = None,
    calibration: CalibrationReport | None = None,
) -> None:
    """``metrics.json``: the metrics of both protocols and what produced them; with
    ``confidence`` (:meth:`Evaluation.intervals`), the bootstrap interval of each metric of both;
    with a re-ranking, its settings, counts and the metrics of its queries without and with it;
    with a calibration, its figures (``reports/calibration.py``)."""
    content = {
        **evaluation.metrics,
        "protocol": protocol_name(evaluation.nearest),
        "full_city": evaluation.full_city_metrics,
        "run": summary,
    }
    if confidence:
        content["confidence"] = confidence
    if reranking is not None:
        content["reranking"] = reranking.metrics
    if calibration is not None:
        content["calibration"] = calibration_content(calibration)
    with atomic_write(path) as stream:
        json.dump(content, stream, indent=2)
        stream.write("\n")


def protocol_name(nearest: int | None) -> str:
    """``nearest100``, or ``full`` for the whole gallery: the protocol group's names."""
    return "full" if nearest is None else f"nearest{nearest}"


def _top_candidates(evaluation: Evaluation, dataset: PairDataset, query: int) -> list[tuple[int, float]]:
    """``(dataset index, score)`` of a query's top candidates, best first."""
    ranking = evaluation.ranking
    candidates = []
    for position, score in zip(ranking.indices[query, :TOP].tolist(), ranking.scores[query, :TOP].tolist()):
        if position >= 0:
            candidates.append((evaluation.gallery_index[position], score))
    return candidates


def reranked_columns(reranking: SplitReranking, evaluation: Evaluation, dataset: PairDataset) -> dict[int, list]:
    """The re-ranking's cells of each re-ranked query's row: its status, the true tile's new
    rank, and the new top candidates with the re-ranker's value and reason for each."""
    cells = {}
    for row, (query, result) in enumerate(zip(reranking.queries, reranking.results)):
        after = reranking.after
        values: list[Any] = [result.status, int(after.true_rank[row]) or ""]
        for rank, old in enumerate(result.order[:TOP]):
            position = int(after.indices[row, rank])
            judged = result.judged[old] if old < len(result.judged) else None
            values += [
                dataset.pairs[evaluation.gallery_index[position]].name,
                "" if judged is None or judged.value is None else round(judged.value, 4),
                "" if judged is None else judged.reason,
            ]
        cells[query] = values
    return cells


def write_predictions(
    path: Path,
    evaluation: Evaluation,
    dataset: PairDataset,
    reranking: SplitReranking | None = None,
    calibration: CalibrationReport | None = None,
) -> None:
    """``predictions.csv``: per query, its top-5 tiles with scores and distances from the true
    place; calibrated, its confidence and area after ``top1_error_m``; with a re-ranking, also
    its new top-5 with the re-ranker's values and reasons."""
    header = ["query", "caption", "lat", "lon", "view", "correct", "true_rank", "top1_error_m"]
    if calibration is not None:
        header += prediction_header(calibration)
    fixed = len(header)
    for rank in range(1, TOP + 1):
        header += [f"top{rank}", f"top{rank}_score", f"top{rank}_distance_m"]
    reranked = reranked_columns(reranking, evaluation, dataset) if reranking is not None else {}
    if reranking is not None:
        header += ["reranking", "reranked_true_rank"]
        for rank in range(1, TOP + 1):
            header += [f"reranked_top{rank}", f"reranked_top{rank}_value", f"reranked_top{rank}_reason"]
    with atomic_write(path, newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        for query, index in enumerate(evaluation.query_index):
            pair = dataset.pairs[index]
            true_rank = int(evaluation.ranking.true_rank[query])
            row: list[Any] = [
                pair.name,
                pair.caption,
                pair.lat,
                pair.lon,
                "panorama" if pair.is_panorama else "single",
                int(true_rank == 1),
                true_rank or "",
                round(float(evaluation.ranking.top1_error_km[query]) * 1000, 1),
            ]
            if calibration is not None:
                row += prediction_cells(calibration, query)
            for candidate, score in _top_candidates(evaluation, dataset, query):
                tile = dataset.pairs[candidate]
                distance_km = haversine_km(
                    *(torch.tensor(value, dtype=torch.float64) for value in (pair.lat, pair.lon, tile.lat, tile.lon))
                )
                row += [tile.name, round(score, 5), round(float(distance_km) * 1000, 1)]
            if reranking is not None:
                row += [""] * (fixed + 3 * TOP - len(row))  # fewer than TOP candidates
                row += reranked.get(query, ["not asked"])
            writer.writerow(row)


def example_queries(evaluation: Evaluation, count: int = EXAMPLES) -> list[int]:
    """The queries examples.png shows: ``count`` spread evenly over the ranks of their true tile,
    from the best ranked to the worst (true tiles not ranked at all last), so that successes
    and failures both show; ties in query order, so the picture is the same for the same run."""
    ranks = evaluation.ranking.true_rank.tolist()
    order = sorted(range(len(ranks)), key=lambda query: (ranks[query] == NOT_RANKED, ranks[query], query))
    shown = min(count, len(order))
    return [
        order[position] for position in sorted({round(i * (len(order) - 1) / max(1, shown - 1)) for i in range(shown)})
    ]


def true_rank_label(rank: int) -> str:
    if rank == NOT_RANKED:
        return "true tile not ranked"
    return "true tile first" if rank == 1 else f"true tile at rank {rank:,}"


def draw_examples(
    path: Path,
    evaluation: Evaluation,
    dataset: PairDataset,
    count: int = EXAMPLES,
    tile: int = 128,
    explanations: Mapping[int, Explanation] | None = None,
) -> None:
    """``examples.png``: a few queries (:func:`example_queries`), caption wrapped on the left
    above the rank of its true tile, their top-5 tiles beside it.

    The true tile is outlined in green where it was retrieved; wrong candidates in red. A query
    with an explanation (of its top-1 tile) has that tile shaded by patch relevance and its
    caption's words shaded by theirs.
    """
    chosen = example_queries(evaluation, count)
    explanations = explanations or {}
    text_width, margin = 360, 8
    width = text_width + TOP * (tile + margin) + margin
    height = len(chosen) * (tile + 2 * margin) + margin
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for row, query in enumerate(chosen):
        top = margin + row * (tile + 2 * margin)
        pair = dataset.pairs[evaluation.query_index[query]]
        explanation = explanations.get(query)
        words = word_relevance(explanation) if explanation is not None else []
        if words:
            draw_shaded_words(
                draw, (margin, top), words, text_width - 2 * margin, font, max_lines=max(1, tile // 13 - 1)
            )
        else:
            lines = textwrap.wrap(pair.caption, width=58)[: max(1, tile // 12 - 1)]
            draw.multiline_text((margin, top), "\n".join(lines), fill="black", font=font, spacing=2)
        rank = int(evaluation.ranking.true_rank[query])
        draw.text(
            (margin, top + tile - 12), true_rank_label(rank), font=font, fill="green" if rank == 1 else "firebrick"
        )
        for column, (candidate, score) in enumerate(_top_candidates(evaluation, dataset, query)):
            left = text_width + column * (tile + margin)
            image = load_image(dataset.pairs[candidate].image_path)
            if column == 0 and explanation is not None:
                image = heat_overlay(image, explanation.image)
            image.thumbnail((tile, tile))
            canvas.paste(image, (left, top))
            correct = dataset.pairs[candidate].name == pair.name
            draw.rectangle(
                [left - 3, top - 3, left + image.width + 2, top + image.height + 2],
                outline="limegreen" if correct else "red",
                width=3 if correct else 1,
            )
            draw.text((left, top + image.height + 1), f"{column + 1}: {score:.3f}", fill="black", font=font)
    with atomic_write(path, "wb") as stream:
        canvas.save(stream, format="PNG")


def write_reports(
    output_dir: str | Path,
    evaluation: Evaluation,
    dataset: PairDataset,
    summary: dict[str, Any],
    loggers: list[Any] = (),
    explanations: Mapping[int, Explanation] | None = None,
    reranking: SplitReranking | None = None,
    confidence: dict[str, Any] | None = None,
    calibration: CalibrationReport | None = None,
) -> dict[str, Path]:
    """Write the report files, print the metrics tables and hand the reports to the loggers.

    ``explanations``: relevance maps of the example queries' top-1 tiles, overlaid on examples.png.
    ``reranking``: a re-ranking of some queries, reported beside the dual encoder's metrics.
    ``confidence``: the metrics' bootstrap intervals (:meth:`Evaluation.intervals`), in
    metrics.json and under each row of the tables.
    ``calibration``: the queries' calibrated confidence: its figures in metrics.json, its columns
    in predictions.csv, and reliability.png and risk_coverage.png.
    """
    output_dir = Path(output_dir)
    paths = {
        "metrics": output_dir / "metrics.json",
        "predictions": output_dir / "predictions.csv",
        "examples": output_dir / "examples.png",
    }
    if calibration is not None:
        paths.update(reliability=output_dir / "reliability.png", risk_coverage=output_dir / "risk_coverage.png")
    write_metrics(paths["metrics"], evaluation, summary, reranking, confidence, calibration)
    write_predictions(paths["predictions"], evaluation, dataset, reranking, calibration)
    draw_examples(paths["examples"], evaluation, dataset, explanations=explanations)
    if calibration is not None:
        draw_reliability(paths["reliability"], calibration)
        draw_risk_coverage(paths["risk_coverage"], calibration)
    confidence = confidence or {}
    where = f"{summary.get('city')} {summary.get('img')} {summary.get('split')}"
    level = f", {100 * confidence['level']:g}% intervals" if confidence else ""
    tables = [(evaluation.nearest, evaluation.metrics, confidence.get("intervals"))]
    if evaluation.nearest is not None and evaluation.full_city_metrics:
        tables.append((None, evaluation.full_city_metrics, confidence.get("full_city")))
    for nearest, metrics, intervals in tables:
        protocol = "whole gallery" if nearest is None else f"{nearest} nearest tiles"
        print(metrics_table(metrics, f"{where} ({protocol}), percent / km{level}", intervals))
    if reranking is not None:
        print(comparison_table(reranking))
    if calibration is not None:
        print(calibration_table(calibration))
    log.info("Reports written to %s", output_dir)
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            with open(paths["predictions"], newline="") as stream:
                rows = list(csv.reader(stream))
            logger.log_table(key=f"{summary.get('split')}/predictions", columns=rows[0], data=rows[1:])
            logger.log_image(key=f"{summary.get('split')}/examples", images=[str(paths["examples"])])
            for picture in ("reliability", "risk_coverage"):
                if picture in paths:
                    logger.log_image(key=f"{summary.get('split')}/{picture}", images=[str(paths[picture])])
    return paths
