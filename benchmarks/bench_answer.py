"""How sure the answers are, and what a second and a third description add (figures, not timings).

With a trained checkpoint on the synthetic city (``make train``), the validation and test splits
are embedded once (as ``eval.py`` does) and, under each protocol (the whole test gallery, and the
paper's 100 nearest tiles):

1. Models of confidence, each fitted on the validation split only: a softmax over the
   candidates at a fitted temperature (the project's), a logistic regression on the top-1 score
   and its margin over the second, the softmax at the model's own learnt temperature, and the
   top-1 cosine read as a probability. Validation figures are 5-fold cross-validated (fitted on
   four fifths, measured on the fifth); test figures come from the fit on all of validation.
2. The 80 % areas of the fitted softmax on test: how often they hold the true tile, their size.
3. Several descriptions of one place: each test place's annotated text and two single-view
   descriptions of it facing other ways (``cvgtext.data.synthetic.descriptions``: the synthetic
   city has one text per place), alone and combined by summing their scores at the fitted
   temperature: R@1, the area's size and coverage, with chance beside them.

    python benchmarks/bench_answer.py --ckpt outputs/train/runs/<run>/checkpoints/best.ckpt
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402
from tables import print_table  # noqa: E402

from cvgtext.retrieval.calibration import (  # noqa: E402
    candidate_scores,
    confidence,
    fit_temperature,
    log_probabilities,
    true_columns,
)
from cvgtext.retrieval.reliability import brier_score, expected_calibration_error  # noqa: E402

FOLDS = 5


def newest_checkpoint() -> str | None:
    found = sorted(ROOT.glob("outputs/train/runs/*/checkpoints/best.ckpt"), key=lambda path: path.stat().st_mtime)
    return str(found[-1]) if found else None


def split_scores(evaluation, query_emb=None):
    """``(scores [queries, candidates], true column [queries], candidate places)`` of a split under
    its protocol; ``query_emb`` other captions of the same places (rows as the evaluation's)."""
    query_emb = evaluation.queries if query_emb is None else query_emb
    parts, trues, places = [], [], []
    for start, stop, scores, columns in candidate_scores(
        query_emb, evaluation.gallery, evaluation.query_places, evaluation.gallery_places, evaluation.nearest
    ):
        parts.append(scores.double())
        trues.append(true_columns(evaluation.true_rows[start:stop], columns))
        gallery = evaluation.gallery_places
        places.append(gallery.expand(stop - start, -1, -1) if columns is None else gallery[columns])
    return torch.cat(parts), torch.cat(trues), torch.cat(places)


def features(scores: torch.Tensor) -> torch.Tensor:
    """``[queries, 3]``: top-1 score, its margin over the second, and 1."""
    top = scores.topk(2, dim=1).values
    return torch.stack([top[:, 0], top[:, 0] - top[:, 1], torch.ones(len(scores), dtype=scores.dtype)], 1)


def fit_logistic(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Logistic regression by Newton's method, with a small ridge so that separable data stays finite."""
    w = torch.zeros(x.shape[1], dtype=torch.float64)
    for _ in range(50):
        p = torch.sigmoid(x @ w)
        gradient = x.T @ (p - y) + 1e-3 * w
        hessian = (x * (p * (1 - p))[:, None]).T @ x + 1e-3 * torch.eye(x.shape[1], dtype=torch.float64)
        step = torch.linalg.solve(hessian, gradient)
        w -= step
        if step.abs().max() < 1e-10:
            break
    return w


def model_confidences(train: tuple, evaluate: tuple, learnt_scale: float) -> dict[str, torch.Tensor]:
    """Each model's confidence that the evaluated queries' top-1 is right, fitted on ``train``."""
    (train_scores, train_true, _), (scores, _, _) = train, evaluate
    right = (train_scores.argmax(1) == train_true).double()
    temperature = fit_temperature(train_scores, train_true).temperature
    w = fit_logistic(features(train_scores), right)
    return {
        "softmax, fitted temperature": log_probabilities(scores, temperature).exp().amax(1),
        "logistic on top-1 score and margin": torch.sigmoid(features(scores) @ w),
        "softmax, the model's own temperature": torch.softmax(scores * learnt_scale, 1).amax(1),
        "top-1 cosine as a probability": scores.amax(1).clamp(0, 1),
    }


def compare_models(val: tuple, test: tuple, learnt_scale: float, protocol: str) -> list[list[str]]:
    generator = torch.Generator().manual_seed(0)
    fold = torch.randperm(len(val[0]), generator=generator) % FOLDS
    held_out: dict[str, list[torch.Tensor]] = {}
    for k in range(FOLDS):
        train = tuple(part[fold != k] for part in val)
        part = tuple(piece[fold == k] for piece in val)
        for name, value in model_confidences(train, part, learnt_scale).items():
            held_out.setdefault(name, []).append(value)
    order = torch.cat([torch.nonzero(fold == k).squeeze(1) for k in range(FOLDS)])
    val_right = (val[0].argmax(1) == val[1])[order]
    test_right = test[0].argmax(1) == test[1]
    rows = []
    for name, value in model_confidences(val, test, learnt_scale).items():
        cross = torch.cat(held_out[name])
        rows.append(
            [
                protocol,
                name,
                f"{expected_calibration_error(cross, val_right):.3f}",
                f"{brier_score(cross, val_right):.3f}",
                f"{expected_calibration_error(value, test_right):.3f}",
                f"{brier_score(value, test_right):.3f}",
                f"{100 * float(value.mean()):.1f} / {100 * float(test_right.double().mean()):.1f}",
            ]
        )
    return rows


def area_row(scores, true, places, temperature, protocol: str, label: str, probability: float) -> list[str]:
    found = confidence(log_probabilities(scores, temperature), places, true, probability)
    right = scores.argmax(1) == true
    candidates = scores.shape[1]
    return [
        protocol,
        label,
        str(len(true)),
        f"{100 * float(right.double().mean()):.1f}",
        f"{100 / candidates:.1f}",
        f"{100 * float(found.top1.mean()):.1f}",
        f"{expected_calibration_error(found.top1, right):.3f}",
        f"{100 * float(found.in_area.double().mean()):.1f}",
        f"{float(found.area_size.double().median()):g} / {float(found.area_size.double().mean()):.1f}",
        f"{math.ceil(probability * candidates)}",
        f"{float(found.area_radius_m.median()):,.0f}",
    ]


def embed_further(cfg, module, evaluation, dataset, count: int) -> list[torch.Tensor]:
    """Embeddings ``[queries, dim]`` of each test caption's place's further descriptions, one tensor each."""
    from cvgtext.data.synthetic.descriptions import further_descriptions
    from cvgtext.search.gallery import embed_captions

    names = [dataset.pairs[i].name for i in evaluation.query_index]
    further = further_descriptions(cfg.paths.data_dir, names, count, cfg.city.name)
    return [
        embed_captions(module.model, module.tokenizer, [further[name][k] for name in names], 128) for k in range(count)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", default=newest_checkpoint(), help="default: the newest best.ckpt of outputs/")
    parser.add_argument("--data-dir", default=str(ROOT / "data"))
    parser.add_argument("--area", type=float, default=0.8)
    parser.add_argument("--quick", action="store_true", help="accepted for make bench; the figures need whole splits")
    args = parser.parse_args()
    if not args.ckpt:
        print("No make train checkpoint: the tiny backbone's random weights (figures near chance)", flush=True)
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from cvgtext.commands.evaluate import SplitRuns
    from cvgtext.model.build import build_module

    comparisons, areas = [], []
    for protocol in ("full", "nearest100"):
        with (
            tempfile.TemporaryDirectory() as tmp,
            initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")),
        ):
            cfg = compose(
                "eval",
                [
                    *([f"ckpt_path={args.ckpt}"] if args.ckpt else []),
                    f"protocol={protocol}",
                    "trainer=cpu",
                    f"paths.root_dir={tmp}",
                    f"paths.output_dir={tmp}/run",
                    f"paths.data_dir={args.data_dir}",
                    f"paths.cache_dir={ROOT / 'cache'}",
                    "data.num_workers=0",
                ],
            )
            module, backbone = build_module(cfg)
            trainer = instantiate(cfg.trainer, logger=False, callbacks=[], enable_progress_bar=False)
            runs = SplitRuns(cfg, module, backbone, trainer, ["test", "val"])
            val_evaluation, test_evaluation = runs.run("val"), runs.run("test")
            val, test = split_scores(val_evaluation), split_scores(test_evaluation)
            learnt_scale = float(module.model.logit_scale.exp())
            comparisons += compare_models(val, test, learnt_scale, protocol)
            temperature = fit_temperature(val[0], val[1]).temperature
            further = embed_further(cfg, module, test_evaluation, runs.datamodule.dataset("test"), 2)
            described = [test] + [split_scores(test_evaluation, emb) for emb in further]
            labels = ["annotated text", "single view, turned 120 degrees", "single view, turned 240 degrees"]
            for size in (1, 2, 3):
                for chosen in itertools.combinations(range(3), size):
                    scores = sum(described[k][0] for k in chosen)
                    label = " + ".join(labels[k] for k in chosen) if size < 3 else "all three"
                    areas.append(area_row(scores, test[1], test[2], temperature, protocol, label, args.area))
            print(f"{protocol}: temperature {temperature:.4g}, the model's own {1 / learnt_scale:.4g}", flush=True)
    print_table(
        "Models of confidence (fitted on the validation split; validation 5-fold cross-validated)",
        ["protocol", "model", "val ECE", "val Brier", "test ECE", "test Brier", "test stated % / right %"],
        comparisons,
    )
    print_table(
        f"Answers on the test split: one, two and three descriptions of each place ({100 * args.area:g} % areas)",
        [
            "protocol",
            "descriptions",
            "places",
            "R@1 %",
            "chance R@1 %",
            "confidence %",
            "ECE",
            "area holds the true tile %",
            "area tiles, median / mean",
            "area tiles at chance",
            "area radius m, median",
        ],
        areas,
    )


if __name__ == "__main__":
    main()
