"""Kill-and-resume: SIGKILL a tiny training run at random moments, resume it, compare with an uninterrupted run.

Each trial starts ``train.py ... resume=auto`` in a fresh run folder and kills it with SIGKILL
after a random time, drawn uniformly from 80 % of the time the uninterrupted run took to write
its first ``last.ckpt`` (start-up is not worth killing in) to 90 % of its duration. It checks
that the ``last.ckpt`` left behind (if any) loads, then runs the same command again, which
resumes and finishes. A trial fails when a checkpoint does not load or when the finished run's
weights, optimizer state, best score or test metrics differ from the uninterrupted run's
(bitwise: no tolerance). The run writes ``last.ckpt`` after every optimizer step, so kills land
during checkpoint writes too; those are counted from the temporary files the kills leave.

    python benchmarks/bench_resume.py               # 20 kills
    python benchmarks/bench_resume.py --quick       # 3 kills
"""

from __future__ import annotations

import argparse
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


def overrides(data_dir: Path, run_dir: Path) -> list[str]:
    """Two epochs of a 200-place synthetic city, last.ckpt after every step, W&B offline and CSV."""
    return [
        f"paths.data_dir={data_dir}", f"hydra.run.dir={run_dir}", f"city.synthetic.places={PLACES}",
        f"city.synthetic.tile_size={TILE_SIZE}", "trainer=cpu", "trainer.max_epochs=2", "data.batch_size=16",
        "data.num_workers=0", "callbacks.step_checkpoint.every_n_train_steps=1", "resume=auto",
        "~callbacks.rich_progress_bar", "~callbacks.model_summary",
    ]


def start(data_dir: Path, run_dir: Path) -> subprocess.Popen:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *overrides(data_dir, run_dir)],
        cwd=ROOT, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def finish(data_dir: Path, run_dir: Path) -> float | None:
    """Run to the end; return how long the first last.ckpt took to appear (None if it never did)."""
    began = time.monotonic()
    process = start(data_dir, run_dir)
    first_checkpoint = None
    while process.poll() is None:
        if first_checkpoint is None and (run_dir / "checkpoints" / "last.ckpt").exists():
            first_checkpoint = time.monotonic() - began
        time.sleep(0.05)
    _, errors = process.communicate()
    if process.returncode:
        raise RuntimeError(f"train.py failed in {run_dir}:\n{errors[-3000:]}")
    return first_checkpoint


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
    args = parser.parse_args()
    if args.quick:
        args.trials = 3
    rng = random.Random(args.seed)

    with tempfile.TemporaryDirectory(prefix="cvgtext-resume-") as scratch:
        scratch = Path(scratch)
        data_dir = scratch / "data"
        ensure_city(data_dir, places=PLACES, tile_size=TILE_SIZE)
        began = time.monotonic()
        first_checkpoint = finish(data_dir, scratch / "uninterrupted")
        duration = time.monotonic() - began
        reference = outcome(scratch / "uninterrupted")

        rows, failures, unloadable, during_write, no_checkpoint, missed = [], 0, 0, 0, 0, 0
        while len(rows) < args.trials:
            run_dir = scratch / f"trial-{len(rows) + missed}"
            delay = rng.uniform(0.8 * first_checkpoint, 0.9 * duration)
            process = start(data_dir, run_dir)
            time.sleep(delay)
            process.send_signal(signal.SIGKILL)
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
            finish(data_dir, run_dir)
            ok = same(reference, outcome(run_dir))
            failures += not ok
            rows.append((delay, step, bool(leftovers), ok))
            print(f"kill {len(rows):2d}: after {delay:5.1f} s, last.ckpt at step {step}, "
                  f"during a write: {bool(leftovers)}, same result: {ok}", flush=True)

    print()
    print(f"Kill-and-resume, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    print(f"uninterrupted run: {reference['step']} steps, {duration:.1f} s, first last.ckpt after "
          f"{first_checkpoint:.1f} s; kill times drawn from [{0.8 * first_checkpoint:.1f}, {0.9 * duration:.1f}] s")
    print()
    print("| kills | before the first last.ckpt | during a checkpoint write | unloadable last.ckpt "
          "| result differs from the uninterrupted run |")
    print("|---|---|---|---|---|")
    print(f"| {len(rows)} | {no_checkpoint} | {during_write} | {unloadable} | {failures} |")
    print(f"({missed} kill times fell after the run had ended and were drawn again.)")


if __name__ == "__main__":
    main()
