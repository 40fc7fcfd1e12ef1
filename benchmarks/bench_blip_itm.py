"""BLIP's image-text matching re-ranking against its contrastive ranking alone, on the synthetic city.

No BLIP weights are reachable here, so a small BLIP (random start, 64 px, width 128, two
layers per tower, a word-level stand-in for its tokenizer written from the city's captions) is
trained on the synthetic city with ``train.py backbone=blip_b``: the contrastive loss alone, and
the contrastive loss plus BLIP's matching loss on hard negatives (``model.loss.itm_weight=1``),
which trains the head that re-ranks. The re-ranking weight is chosen on the validation split
(``reranker.weight`` among WEIGHTS, best R@1) and then applied once to the test split (paper
protocol, 100 nearest tiles; chance R@1 is 1 %), so the test figures are not tuned on.

    python benchmarks/bench_blip_itm.py            # 15 epochs each: about 25 minutes on 2 CPU cores
    python benchmarks/bench_blip_itm.py --quick    # 2 epochs: checks that it runs
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from tables import print_table  # noqa: E402

WEIGHTS = (0.25, 0.5, 1.0, 2.0, 4.0)


def compose(config: str, overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        return hydra_compose(config, overrides=overrides)


def rerank_once(common: list[str], checkpoint: Path, run_dir: Path, split: str, weight: float) -> dict:
    from cvgtext.commands.evaluate import evaluate

    evaluate(
        compose(
            "eval",
            [
                *common,
                f"ckpt_path={checkpoint}",
                f"split={split}",
                "reranker=blip_itm",
                f"reranker.weight={weight}",
                f"paths.output_dir={run_dir}",
                "explain.overlays=false",
            ],
        )
    )
    return json.loads((run_dir / "metrics.json").read_text())["reranking"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(ROOT / "data"))
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="2 epochs")
    args = parser.parse_args()
    epochs = 2 if args.quick else args.epochs

    from cvgtext.commands.train import train
    from cvgtext.data.synthetic.city import ensure_city
    from helpers.hf_stand_ins import blip_overrides, small_blip, write_bert_like

    data_dir = Path(args.data_dir)
    ensure_city(data_dir, name="Synthetic")
    captions = [
        caption
        for path in (data_dir / "annotation").glob("Synthetic*/[!.]*.json")
        for caption in json.loads(path.read_text()).values()
    ]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        tokenizer = write_bert_like(scratch / "tokenizer", captions)
        common = [
            f"paths.root_dir={ROOT}",
            f"paths.data_dir={data_dir}",
            f"paths.cache_dir={scratch}/cache",
            "trainer=cpu",
            *blip_overrides(small_blip(width=128, layers=2, image_size=64, patch_size=8), tokenizer),
        ]
        for label, itm_weight in (("contrastive", 0), ("contrastive + matching", 1)):
            run = scratch / f"train-{itm_weight}"
            started = time.perf_counter()
            train(
                compose(
                    "train",
                    [
                        *common,
                        "optim=fast",
                        f"trainer.max_epochs={epochs}",
                        f"model.loss.itm_weight={itm_weight}",
                        "logger=csv",
                        "test=false",
                        f"paths.output_dir={run}",
                        "~callbacks.rich_progress_bar",
                        "++trainer.enable_progress_bar=false",
                    ],
                )
            )
            train_s = time.perf_counter() - started
            checkpoint = run / "checkpoints" / "best.ckpt"
            chosen = max(
                WEIGHTS,
                key=lambda w: (
                    rerank_once(common, checkpoint, scratch / f"val-{itm_weight}-{w}", "val", w)["with"]["all"]["R@1"],
                    -w,
                ),
            )
            started = time.perf_counter()
            report = rerank_once(common, checkpoint, scratch / f"test-{itm_weight}", "test", chosen)
            eval_s = time.perf_counter() - started
            difference = report["difference"]["R@1"]
            rows.append(
                [
                    label,
                    str(epochs),
                    f"{train_s:.0f}",
                    f"{chosen:g}",
                    str(report["queries"]),
                    f"{report['without']['all']['R@1']:.1f}",
                    f"{report['with']['all']['R@1']:.1f}",
                    f"{report['without']['all']['R@5']:.1f}",
                    f"{report['with']['all']['R@5']:.1f}",
                    f"{difference['difference']:+.1f} [{difference['low']:+.1f}, {difference['high']:+.1f}]",
                    f"{eval_s:.0f}",
                ]
            )
    print_table(
        "BLIP: contrastive ranking (ITC) and ITM re-ranking of its top 16 (synthetic city, test split, "
        "100 nearest tiles; weight chosen on val; chance R@1 1 %)",
        [
            "training loss",
            "epochs",
            "train s",
            "weight",
            "queries",
            "R@1 ITC",
            "R@1 +ITM",
            "R@5 ITC",
            "R@5 +ITM",
            "R@1 difference [95% CI]",
            "eval s",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
