"""Training throughput of the LightningModule against a plain PyTorch loop; prints a markdown table.

Both train the same model (``cvgtext.model.module.CrossViewRetrieval``, the tiny backbone, same
initial weights) with the same optimizer on the same batches, taken once from the
datamodule's training loader and kept in memory, so the difference is the framework's
overhead, not data loading. Lightning runs a CPU ``Trainer`` without logger, checkpoints,
progress bar or validation; the plain loop embeds, computes the same loss, steps and clamps
the temperature as ``training_step`` and ``on_train_batch_end`` do. Warm-up steps are not
timed; the two loops alternate for several rounds and the median of each is reported, per
second of wall time and per second of this process's CPU time (steadier on a shared machine).

    python benchmarks/bench_throughput.py            # 3 rounds of 20 timed steps, batch 32
    python benchmarks/bench_throughput.py --quick    # 1 round of 5 timed steps, seconds
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch.utils.data import DataLoader

from cvgtext.model.module import MAX_LOGIT_SCALE, CrossViewRetrieval

ROOT = Path(__file__).resolve().parents[1]


def build(data_dir: Path, batch_size: int, seed: int = 0) -> tuple[Any, Any]:
    """The composed train config, and a datamodule of the synthetic city (generated if missing)."""
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose(
            "train",
            overrides=[
                f"paths.root_dir={ROOT}",
                f"paths.output_dir={ROOT}/outputs/bench",
                f"paths.data_dir={data_dir}",
                f"data.batch_size={batch_size}",
                "data.num_workers=0",
                f"seed={seed}",
            ],
        )
    L.seed_everything(seed, verbose=False)
    model = instantiate(cfg.model)
    datamodule = instantiate(cfg.data, preprocess=model.preprocess, tokenizer=model.tokenizer)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return cfg, datamodule


def fresh_model(cfg: Any, seed: int) -> CrossViewRetrieval:
    L.seed_everything(seed, verbose=False)
    return instantiate(cfg.model)


def clocks() -> tuple[float, float]:
    """(wall, CPU) seconds; the CPU clock counts all of this process's threads."""
    return time.perf_counter(), time.process_time()


class StepTimer(L.Callback):
    """Wall and CPU time from the start of step ``warmup`` to the end of the last step."""

    def __init__(self, warmup: int):
        self.warmup = warmup
        self.start = self.end = (0.0, 0.0)

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self.start = clocks()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.end = clocks()


def lightning_seconds(model: CrossViewRetrieval, batches: DataLoader, warmup: int) -> tuple[float, float]:
    timer = StepTimer(warmup)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[timer],
    )
    trainer.fit(model, train_dataloaders=batches)
    return timer.end[0] - timer.start[0], timer.end[1] - timer.start[1]


def plain_seconds(model: CrossViewRetrieval, batches: DataLoader, warmup: int) -> tuple[float, float]:
    optimizer = model.configure_optimizers()["optimizer"]
    model.train()
    for step, batch in enumerate(batches):
        if step == warmup:
            start = clocks()
        image_features, text_features = model.embed(batch)
        loss = model.criterion(image_features, text_features, model.model.logit_scale.exp())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
    end = clocks()
    return end[0] - start[0], end[1] - start[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 5 timed steps, batch 16")
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("CVGTEXT_DATA_DIR", ROOT / "data")))
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    batch_size = args.batch_size or (16 if args.quick else 32)
    steps = args.steps or (5 if args.quick else 20)
    rounds = args.rounds or (1 if args.quick else 3)
    warnings.filterwarnings("ignore")  # Lightning's advice on workers and logging, not relevant here

    seed = 0
    cfg, datamodule = build(args.data_dir, batch_size, seed)
    loader = iter(datamodule.train_dataloader())
    # In memory, handed out one by one by the same loader to both loops.
    batches = DataLoader([next(loader) for _ in range(args.warmup + steps)], batch_size=None)
    samples = steps * batch_size

    loops = {"plain PyTorch loop": plain_seconds, "Lightning Trainer": lightning_seconds}
    wall: dict[str, list[float]] = {name: [] for name in loops}  # samples per wall second, by round
    cpu: dict[str, list[float]] = {name: [] for name in loops}  # samples per CPU second
    for _ in range(rounds):
        for name, run in loops.items():
            wall_seconds, cpu_seconds = run(fresh_model(cfg, seed), batches, args.warmup)
            wall[name].append(samples / wall_seconds)
            cpu[name].append(samples / cpu_seconds)

    plain_wall, plain_cpu = (statistics.median(values["plain PyTorch loop"]) for values in (wall, cpu))
    print(
        f"\nTraining throughput, tiny backbone, batch {batch_size}, {steps} timed steps after {args.warmup} "
        f"warm-up steps, median of {rounds} alternating round(s)\n"
        f"torch {torch.__version__}, lightning {L.__version__}, {torch.get_num_threads()} CPU threads, "
        f"{platform.processor() or platform.machine()}\n"
    )
    print("| loop | samples/s wall (median) | vs plain | samples/CPU-s (median) | vs plain | wall, by round |")
    print("|---|---|---|---|---|---|")
    for name in loops:
        median_wall, median_cpu = statistics.median(wall[name]), statistics.median(cpu[name])
        rounds_text = ", ".join(f"{value:.1f}" for value in wall[name])
        print(
            f"| {name} | {median_wall:.1f} | {100 * (median_wall / plain_wall - 1):+.1f}% "
            f"| {median_cpu:.1f} | {100 * (median_cpu / plain_cpu - 1):+.1f}% | {rounds_text} |"
        )


if __name__ == "__main__":
    main()
