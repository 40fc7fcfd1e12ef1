"""Kill-and-resume: SIGKILL a tiny training run at random moments, resume it, compare with an uninterrupted run.

Each trial starts ``train.py ... resume=auto`` in a fresh run folder and kills it with SIGKILL
after a random time, drawn uniformly from 80 % of the time the uninterrupted run took to write
its first ``last.ckpt`` (start-up is not worth killing in) to 90 % of its duration. It checks
that the ``last.ckpt`` left behind (if any) loads, then runs the same command again, which
resumes and finishes. A trial fails when a checkpoint does not load or when the finished run's
weights, optimizer state, best score or test metrics differ from the uninterrupted run's
(bitwise: no tolerance). The run writes ``last.ckpt`` after every optimizer step, so kills land
during checkpoint writes too; those are counted from the temporary files the kills leave. With
``--during-write`` every kill is aimed at a write: the run is killed as soon as the temporary
file of its k-th checkpoint write appears (k drawn from 1 to the number of steps).

    python benchmarks/bench_resume.py               # 20 kills
    python benchmarks/bench_resume.py --quick       # 3 kills
    python benchmarks/bench_resume.py --during-write --trials 10   # every kill mid-write
    python benchmarks/bench_resume.py --devices 2 --trials 5       # DDP, two CPU processes
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from cvgtext.data.synthetic import ensure_city

ROOT = Path(__file__).resolve().parents[1]
PLACES, TILE_SIZE = 200, 64


def overrides(data_dir: Path, run_dir: Path, devices: int) -> list[str]:
    """Two epochs of a 200-place synthetic city, last.ckpt after every step, W&B offline and CSV."""
    processes = ["strategy=ddp", f"trainer.devices={devices}"] if devices > 1 else []
    return processes + [
        f"paths.data_dir={data_dir}", f"hydra.run.dir={run_dir}", f"city.synthetic.places={PLACES}",
        f"city.synthetic.tile_size={TILE_SIZE}", "trainer=cpu", "trainer.max_epochs=2", "data.batch_size=16",
        "data.num_workers=0", "callbacks.last_checkpoint.every_n_train_steps=1", "resume=auto",
        "~callbacks.rich_progress_bar", "~callbacks.model_summary",
    ]


def start(data_dir: Path, run_dir: Path, devices: int) -> subprocess.Popen:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *overrides(data_dir, run_dir, devices)],
        cwd=ROOT, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # one process group: a kill reaches every DDP rank
    )


def finish(data_dir: Path, run_dir: Path, devices: int) -> float | None:
    """Run to the end; return how long the first last.ckpt took to appear (None if it never did)."""
    began = time.monotonic()
    process = start(data_dir, run_dir, devices)
    first_checkpoint = None
    while process.poll() is None:
        if first_checkpoint is None and (run_dir / "checkpoints" / "last.ckpt").exists():
            first_checkpoint = time.monotonic() - began
        time.sleep(0.05)
    _, errors = process.communicate()
    if process.returncode:
        raise RuntimeError(f"train.py failed in {run_dir}:\n{errors[-3000:]}")
    return first_checkpoint


def kill_during_a_write(process: subprocess.Popen, folder: Path, writes: int) -> float:
    """Wait until the run has written ``writes - 1`` checkpoints and is writing the next; return when."""
    began, seen, previous = time.monotonic(), 0, None
    while process.poll() is None:
        writing = {path.name for path in folder.glob(".*.tmp")} if folder.is_dir() else set()
        current = min(writing, default=None)
        if current is not None and current != previous:
            seen, previous = seen + 1, current
            if seen == writes:
                break
        time.sleep(0.002)
    return time.monotonic() - began


def outcome(run_dir: Path) -> dict:
    """What a finished run ended with: final checkpoint contents and test metrics."""
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    best = [state["best_model_score"] for name, state in checkpoint["callbacks"].items() if "val/R@1" in name]
    return {
        "step": checkpoint["global_step"],
        "weights": checkpoint["state_dict"],
        "optimizer": checkpoint["optimizer_states"][0]["state"],
        "best": best[0],
        "metrics": json.loads((run_dir / "metrics.json").read_text())["all"],
    }


def same(a: dict, b: dict) -> bool:
    tensors_equal = all(torch.equal(a["weights"][key], b["weights"][key]) for key in a["weights"])
    moments_equal = all(
        torch.equal(a["optimizer"][key][moment], b["optimizer"][key][moment])
        for key in a["optimizer"] for moment in ("exp_avg", "exp_avg_sq")
    )
    return (a["step"] == b["step"] and tensors_equal and moments_equal and bool(a["best"] == b["best"])
            and a["metrics"] == b["metrics"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20, help="how many kills")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    parser.add_argument("--quick", action="store_true", help="3 kills")
    parser.add_argument("--devices", type=int, default=1, help="more than 1: DDP on as many CPU processes")
    parser.add_argument(
        "--during-write", action="store_true",
        help="kill each run while it writes its k-th checkpoint (k random)",
    )
    args = parser.parse_args()
    if args.quick:
        args.trials = 3
    rng = random.Random(args.seed)

    with tempfile.TemporaryDirectory(prefix="cvgtext-resume-") as scratch:
        scratch = Path(scratch)
        data_dir = scratch / "data"
        ensure_city(data_dir, places=PLACES, tile_size=TILE_SIZE)
        began = time.monotonic()
        first_checkpoint = finish(data_dir, scratch / "uninterrupted", args.devices)
        duration = time.monotonic() - began
        reference = outcome(scratch / "uninterrupted")

        rows, failures, unloadable, during_write, no_checkpoint, missed = [], 0, 0, 0, 0, 0
        while len(rows) < args.trials:
            run_dir = scratch / f"trial-{len(rows) + missed}"
            delay = rng.uniform(0.8 * first_checkpoint, 0.9 * duration)
            process = start(data_dir, run_dir, args.devices)
            if args.during_write:
                delay = kill_during_a_write(process, run_dir / "checkpoints", rng.randint(1, reference["step"]))
            else:
                time.sleep(delay)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            if process.returncode != -signal.SIGKILL:
                missed += 1  # the run had ended already: draw another kill time
                continue
            last = run_dir / "checkpoints" / "last.ckpt"
            leftovers = list((run_dir / "checkpoints").glob(".*.tmp")) if last.parent.is_dir() else []
            during_write += bool(leftovers)
            step = None
            if last.is_file():
                try:
                    step = torch.load(last, weights_only=True, mmap=True)["global_step"]
                except Exception:  # any failure to load is what this benchmark counts
                    unloadable += 1
            else:
                no_checkpoint += 1
            finish(data_dir, run_dir, args.devices)
            ok = same(reference, outcome(run_dir))
            failures += not ok
            rows.append((delay, step, bool(leftovers), ok))
            print(f"kill {len(rows):2d}: after {delay:5.1f} s, last.ckpt at step {step}, "
                  f"during a write: {bool(leftovers)}, same result: {ok}", flush=True)

    print()
    print(f"Kill-and-resume, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, {args.devices} training process(es)"
          + (", kills aimed at checkpoint writes" if args.during_write else ""))
    aim = (f"kills during the k-th checkpoint write, k drawn from 1 to {reference['step']}" if args.during_write
           else f"kill times drawn from [{0.8 * first_checkpoint:.1f}, {0.9 * duration:.1f}] s")
    print(f"uninterrupted run: {reference['step']} steps, {duration:.1f} s, first last.ckpt after "
          f"{first_checkpoint:.1f} s; {aim}")
    print()
    print("| kills | before the first last.ckpt | during a checkpoint write | unloadable last.ckpt "
          "| result differs from the uninterrupted run |")
    print("|---|---|---|---|---|")
    print(f"| {len(rows)} | {no_checkpoint} | {during_write} | {unloadable} | {failures} |")
    print(f"({missed} kill times fell after the run had ended and were drawn again.)")


if __name__ == "__main__":
    main()
