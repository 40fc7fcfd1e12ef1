"""The decoded-tile cache and decoding on the device, on 512 px JPEG tiles; prints markdown tables.

1. ``train.py`` end to end, the same command with the images decoded by the loader's workers
   every epoch (``data.cache=false``), decoded once into the cache (``data.cache=true``, built
   from nothing in the run: its build is part of the run's time) and, with ``--device-decode``,
   decoded where the model runs (``data.decode=device``), one after the other, in subprocesses;
   wall time of each and the ratio to the first.
2. Training samples/s of a Lightning ``Trainer`` reading batches from the datamodule's own loader
   (cache on, loader workers) against a plain PyTorch loop over the same model, batch and
   batches decoded beforehand and kept in memory: whether the data path keeps up with the model.

    python benchmarks/bench_tile_cache.py                         # 2,000 places, 2 epochs, CPU
    python benchmarks/bench_tile_cache.py --places 400 --epochs 3 --steps 5 --workers 0
    python benchmarks/bench_tile_cache.py --trainer gpu --device-decode --workers 8 \
        --batch-size 128 --override backbone=vit_b16 --override backbone.pretrained=null --skip-samples
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from bench_throughput import fresh_model, lightning_seconds, plain_seconds
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from tables import print_table
from torch.utils.data import DataLoader

from cvgtext.data.synthetic.city import ensure_city

ROOT = Path(__file__).resolve().parents[1]


def city_overrides(args: argparse.Namespace) -> list[str]:
    return [
        "city=synthetic",
        f"city.synthetic.places={args.places}",
        f"city.synthetic.tile_size={args.tile_size}",
        f"paths.data_dir={args.data_dir}",
        f"data.batch_size={args.batch_size}",
        f"data.num_workers={args.workers}",
    ]


VARIANTS = {  # name -> overrides
    "workers decode every epoch (data.cache=false)": ["data.cache=false"],
    "decoded once (data.cache=true)": ["data.cache=true"],
    "decoded on the device (data.decode=device)": ["data.decode=device"],
}


def train_seconds(args: argparse.Namespace, overrides: list[str], folder: Path) -> float:
    """Wall time of one ``train.py`` run (start-up included), with a cache folder of its own."""
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        *city_overrides(args),
        f"trainer={args.trainer}",
        "logger=csv",
        "test=false",
        f"trainer.max_epochs={args.epochs}",
        *overrides,
        f"paths.cache_dir={folder}/cache",
        f"hydra.run.dir={folder}/run",
        "~callbacks.rich_progress_bar",
        "~callbacks.model_summary",
        *args.override,
    ]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"train.py failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--places", type=int, default=2000)
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20, help="timed training steps for the samples/s comparison")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "cvgtext-bench-512")
    parser.add_argument("--trainer", default="cpu", help="the trainer config of the train.py runs: cpu or gpu")
    parser.add_argument("--device-decode", action="store_true", help="also time data.decode=device")
    parser.add_argument("--override", action="append", default=[], help="a further train.py override (repeatable)")
    parser.add_argument("--skip-samples", action="store_true", help="only the train.py wall times")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    ensure_city(args.data_dir, name="Synthetic", places=args.places, tile_size=args.tile_size)

    with tempfile.TemporaryDirectory() as scratch:
        names = list(VARIANTS)[: 3 if args.device_decode else 2]
        wall = {name: train_seconds(args, VARIANTS[name], Path(scratch) / str(i)) for i, name in enumerate(names)}
        first = wall[names[0]]
        print_table(
            f"train.py, {args.places}-place synthetic city, {args.tile_size} px JPEG tiles, {args.epochs} epochs, "
            f"batch {args.batch_size}, {args.workers} loader workers, trainer={args.trainer} "
            f"{' '.join(args.override) or '(tiny backbone, 64 px)'}",
            ["images", "train.py wall time", "speed-up"],
            [[name, f"{wall[name]:.1f} s", f"{first / wall[name]:.2f}x"] for name in names],
        )
        if args.skip_samples:
            return

        with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
            cfg = compose(
                "train",
                overrides=[
                    *city_overrides(args),
                    f"paths.root_dir={ROOT}",
                    f"paths.output_dir={scratch}/bench",
                    "data.cache=true",
                    f"paths.cache_dir={scratch}/1/cache",
                    "seed=0",
                ],
            )
        L.seed_everything(0, verbose=False)
        model = instantiate(cfg.model)
        datamodule = instantiate(cfg.data, preprocess=model.preprocess, tokenizer=model.tokenizer)
        datamodule.prepare_data()
        datamodule.setup("fit")
        batches_per_epoch = len(datamodule.train_dataloader())
        if args.warmup + args.steps > batches_per_epoch:
            sys.exit(f"--warmup + --steps must be at most the {batches_per_epoch} batches of an epoch")
        count = args.warmup + args.steps
        loader = iter(datamodule.train_dataloader())
        decoded = DataLoader([next(loader) for _ in range(count)], batch_size=None)  # in memory
        samples = args.steps * args.batch_size
        rates: dict[str, list[float]] = {"plain loop, batches in memory": [], "Lightning, cached loader": []}
        for _ in range(args.rounds):
            seconds = plain_seconds(fresh_model(cfg, 0), decoded, args.warmup)[0]
            rates["plain loop, batches in memory"].append(samples / seconds)
            live = datamodule.train_dataloader()
            seconds = lightning_seconds(fresh_model(cfg, 0), _first(live, count), args.warmup)[0]
            rates["Lightning, cached loader"].append(samples / seconds)
    plain = statistics.median(rates["plain loop, batches in memory"])
    print_table(
        f"Training samples/s, {args.steps} timed steps after {args.warmup}, median of {args.rounds} rounds, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        ["loop", "samples/s (median)", "vs plain", "by round"],
        [
            [
                name,
                f"{statistics.median(values):.1f}",
                f"{statistics.median(values) / plain:.2f}x",
                ", ".join(f"{value:.1f}" for value in values),
            ]
            for name, values in rates.items()
        ],
    )


class _first:
    """The first ``count`` batches of a loader, loaded as training goes (its workers included)."""

    def __init__(self, loader, count: int):
        self.loader, self.count = loader, count

    def __iter__(self):
        for step, batch in enumerate(self.loader):
            if step == self.count:
                return
            yield batch

    def __len__(self) -> int:
        return self.count


if __name__ == "__main__":
    main()
