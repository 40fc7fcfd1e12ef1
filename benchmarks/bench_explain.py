"""Faithfulness of the relevance maps: deletion and insertion curve areas; prints a markdown table.

For the first ``--pairs`` pairs of a split (each caption with its own tile), the patches of the
tile, then the tokens of the caption, are hidden (deletion) or revealed (insertion) in the order
each method ranks them, in ``--steps`` steps, and the mean cosine similarity of the pairs is
followed. Methods: the relevance rule through every block (``start_block=0``), through the last
block only (``start_block=-1``, the official CrossText2Loc script's choice), the raw last-block
attention of the pooled token (no gradients), and random orders (mean of ``--random`` draws).
Smaller deletion areas and larger insertion areas mean a more faithful order.

    python benchmarks/bench_explain.py ckpt_path=outputs/train/runs/<run>/checkpoints/best.ckpt
    python benchmarks/bench_explain.py --pairs 64 ckpt_path=PATH city=Tokyo img=osm

Arguments without ``--`` are Hydra overrides of ``conf/eval.yaml``, as for ``eval.py``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from cvgtext.model.build import build_module
from cvgtext.model.faithfulness import Curves, image_curves, text_curves
from cvgtext.model.relevance import explain_pairs

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def load_pairs(cfg, module, split: str, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``count`` pairs of ``split``: images ``[count, 3, H, W]`` and tokens ``[count, L]``."""
    datamodule = instantiate(cfg.data, preprocess=module.preprocess, tokenizer=module.tokenizer)
    datamodule.prepare_data()
    datamodule.setup("test" if split == "test" else "validate")
    dataset = datamodule.dataset(split)
    items = [dataset[i] for i in range(min(count, len(dataset)))]
    return torch.stack([item["image"] for item in items]), torch.stack([item["tokens"] for item in items])


def random_maps(explanations, generator: torch.Generator) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    return (
        [torch.rand(e.image.shape, generator=generator) for e in explanations],
        [torch.rand(e.text.shape, generator=generator) for e in explanations],
    )


def mean_curves(curves: list[Curves]) -> Curves:
    return Curves(torch.stack([c.deletion for c in curves]).mean(0), torch.stack([c.insertion for c in curves]).mean(0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=64, help="pairs of the split to explain")
    parser.add_argument("--steps", type=int, default=8, help="steps from nothing to everything hidden")
    parser.add_argument("--random", type=int, default=5, help="random orders averaged for the baseline")
    parser.add_argument("--batch", type=int, default=16, help="pairs explained at once")
    args, overrides = parser.parse_known_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("eval", overrides=[f"paths.root_dir={Path.cwd()}", "paths.output_dir=.", *overrides])
    torch.manual_seed(cfg.seed)
    module, _ = build_module(cfg)
    module.eval()
    images, tokens = load_pairs(cfg, module, cfg.split, args.pairs)

    started = time.perf_counter()
    maps: dict[str, tuple[list, list]] = {}
    for name, start_block, method in (
        ("relevance, all blocks", 0, "relevance"),
        ("relevance, last block", -1, "relevance"),
        ("raw last-block attention", -1, "attention"),
    ):
        explanations = []
        for first in range(0, len(images), args.batch):
            explanations += explain_pairs(
                module,
                images[first : first + args.batch],
                tokens[first : first + args.batch],
                start_block=start_block,
                method=method,
            )
        maps[name] = ([e.image for e in explanations], [e.text for e in explanations])
    seconds_per_pair = (time.perf_counter() - started) / (3 * len(images))

    rows = {}
    for name, (image_maps, text_maps) in maps.items():
        rows[name] = (
            image_curves(module, images, tokens, image_maps, args.steps),
            text_curves(module, images, tokens, text_maps, args.steps),
        )
    generator = torch.Generator().manual_seed(cfg.seed)
    draws = [random_maps(explanations, generator) for _ in range(args.random)]
    rows[f"random (mean of {args.random})"] = (
        mean_curves([image_curves(module, images, tokens, d[0], args.steps) for d in draws]),
        mean_curves([text_curves(module, images, tokens, d[1], args.steps) for d in draws]),
    )

    quarter = args.steps // 4
    print(
        f"{len(images)} {cfg.split} pairs of {cfg.city.name} {cfg.img.name}, checkpoint "
        f"{cfg.ckpt_path or 'none (random or pretrained weights)'}; cosine similarity before hiding: "
        f"{float(rows[next(iter(rows))][0].deletion[0]):.4f}; {args.steps} steps; "
        f"{seconds_per_pair * 1000:.0f} ms per pair explained\n"
    )
    print(
        "| order | patches: deletion area (lower better) | patches: insertion area (higher better) "
        "| patches: similarity after hiding top 25% | tokens: deletion area | tokens: insertion area "
        "| tokens: similarity after hiding top 25% |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, (image, text) in rows.items():
        print(
            f"| {name} | {image.deletion_area:.4f} | {image.insertion_area:.4f} "
            f"| {float(image.deletion[quarter]):.4f} "
            f"| {text.deletion_area:.4f} | {text.insertion_area:.4f} | {float(text.deletion[quarter]):.4f} |"
        )


if __name__ == "__main__":
    sys.exit(main())
