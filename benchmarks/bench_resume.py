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
file of its k-th checkpoint write appears (k drawn from 1 to the number of steps). With
``--at-epoch-end`` every kill is aimed at an epoch's end, half of them at each of two moments:
right after the checkpoint written at the end of epoch k (as soon as ``last.ckpt`` holds its
last step), and between the epoch's last batch and the end of its validation (a time drawn
uniformly from the moment the checkpoint of the epoch's second-to-last step appears to the
moment the epoch-end checkpoint did in the uninterrupted run), k drawn from the epochs but the
last.

    python benchmarks/bench_resume.py               # 20 kills
    python benchmarks/bench_resume.py --quick       # 3 kills
    python benchmarks/bench_resume.py --during-write --trials 10   # every kill mid-write
    python benchmarks/bench_resume.py --devices 2 --trials 5       # DDP, two CPU processes
    python benchmarks/bench_resume.py --at-epoch-end --trials 20   # every kill at an epoch's end
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

from cvgtext.data.synthetic.city import ensure_city

ROOT = Path(__file__).resolve().parents[1]
PLACES, TILE_SIZE = 200, 64


SETUP = {"devices": 1, "epochs": 3, "workers": 2, "places": PLACES}  # set from the command line


def overrides(data_dir: Path, run_dir: Path) -> list[str]:
    """A 200-place synthetic city, last.ckpt after every step, W&B offline and CSV."""
    devices = SETUP["devices"]
    processes = ["strategy=ddp", f"trainer.devices={devices}"] if devices > 1 else []
    return processes + [
        f"paths.data_dir={data_dir}",
        f"hydra.run.dir={run_dir}",
        f"city.synthetic.places={SETUP['places']}",
        f"city.synthetic.tile_size={TILE_SIZE}",
        "trainer=cpu",
        f"trainer.max_epochs={SETUP['epochs']}",
        "data.batch_size=16",
        f"data.num_workers={SETUP['workers']}",
        "callbacks.last_checkpoint.every_n_train_steps=1",
        "resume=auto",
        "~callbacks.rich_progress_bar",
        "~callbacks.model_summary",
    ]


def checkpoint_step(path: Path) -> int | None:
    """The global step of a checkpoint, or None while it cannot be read."""
    try:
        return torch.load(path, weights_only=True, mmap=True)["global_step"]
    except Exception:  # missing, or replaced while being read
        return None


def start(data_dir: Path, run_dir: Path, devices: int) -> subprocess.Popen:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *overrides(data_dir, run_dir)],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # one process group: a kill reaches every DDP rank
    )


def finish(data_dir: Path, run_dir: Path, devices: int, watch: bool = False) -> dict[int, float]:
    """Run to the end; return when (seconds from start) last.ckpt first held each step.

    Without ``watch`` only the first checkpoint is timed (under key -1).
    """
    began = time.monotonic()
    process = start(data_dir, run_dir, devices)
    seen: dict[int, float] = {}
    last, modified = run_dir / "checkpoints" / "last.ckpt", None
    while process.poll() is None:
        if last.exists() and -1 not in seen:
            seen[-1] = time.monotonic() - began
        if watch and last.exists() and last.stat().st_mtime_ns != modified:
            modified = last.stat().st_mtime_ns
            step = checkpoint_step(last)
            if step is not None:
                seen.setdefault(step, time.monotonic() - began)
        time.sleep(0.005 if watch else 0.05)
    _, errors = process.communicate()
    if process.returncode:
        raise RuntimeError(f"train.py failed in {run_dir}:\n{errors[-3000:]}")
    return seen


def kill_at_epoch_end(process: subprocess.Popen, last: Path, step: int, delay: float | None) -> float:
    """Wait until last.ckpt holds ``step``, then ``delay`` seconds more (None: none); return when."""
    began, modified = time.monotonic(), None
    while process.poll() is None:
        if last.exists() and last.stat().st_mtime_ns != modified:
            modified = last.stat().st_mtime_ns
            if checkpoint_step(last) == step:
                time.sleep(delay or 0.0)
                break
        time.sleep(0.002)
    return time.monotonic() - began


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
        for key in a["optimizer"]
        for moment in ("exp_avg", "exp_avg_sq")
    )
    return (
        a["step"] == b["step"]
        and tensors_equal
        and moments_equal
        and bool(a["best"] == b["best"])
        and a["metrics"] == b["metrics"]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20, help="how many kills")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    parser.add_argument("--quick", action="store_true", help="3 kills")
    parser.add_argument("--devices", type=int, default=1, help="more than 1: DDP on as many CPU processes")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of each run")
    parser.add_argument("--places", type=int, default=PLACES, help="places of the synthetic city")
    parser.add_argument("--workers", type=int, default=2, help="data.num_workers")
    aim = parser.add_mutually_exclusive_group()
    aim.add_argument(
        "--during-write",
        action="store_true",
        help="kill each run while it writes its k-th checkpoint (k random)",
    )
    aim.add_argument(
        "--at-epoch-end",
        action="store_true",
        help="kill each run right after an epoch-end checkpoint, or between the last batch and validation",
    )
    args = parser.parse_args()
    SETUP.update(devices=args.devices, epochs=args.epochs, workers=args.workers, places=args.places)
    if args.quick:
        args.trials = 3
    rng = random.Random(args.seed)

    with tempfile.TemporaryDirectory(prefix="cvgtext-resume-") as scratch:
        scratch = Path(scratch)
        data_dir = scratch / "data"
        ensure_city(data_dir, places=args.places, tile_size=TILE_SIZE)
        began = time.monotonic()
        times = finish(data_dir, scratch / "uninterrupted", args.devices, watch=args.at_epoch_end)
        first_checkpoint = times[-1]
        duration = time.monotonic() - began
        reference = outcome(scratch / "uninterrupted")
        steps_per_epoch = reference["step"] // args.epochs
        aimed = {"after the epoch-end checkpoint": 0, "between the last batch and the end of validation": 0}

        rows, failures, unloadable, during_write, no_checkpoint, missed = [], 0, 0, 0, 0, 0
        while len(rows) < args.trials:
            run_dir = scratch / f"trial-{len(rows) + missed}"
            delay = rng.uniform(0.8 * first_checkpoint, 0.9 * duration)
            process = start(data_dir, run_dir, args.devices)
            if args.during_write:
                delay = kill_during_a_write(process, run_dir / "checkpoints", rng.randint(1, reference["step"]))
            elif args.at_epoch_end:
                end = rng.randint(1, args.epochs - 1) * steps_per_epoch  # the last step of epoch k
                moment = list(aimed)[len(rows) % 2]
                if moment.startswith("after"):
                    delay = kill_at_epoch_end(process, run_dir / "checkpoints" / "last.ckpt", end, None)
                else:
                    window = times[end] - times[end - 1]
                    delay = kill_at_epoch_end(
                        process, run_dir / "checkpoints" / "last.ckpt", end - 1, rng.uniform(0, window)
                    )
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
            if args.at_epoch_end:
                aimed[moment] += 1
            rows.append((delay, step, bool(leftovers), ok))
            print(
                f"kill {len(rows):2d}: after {delay:5.1f} s, last.ckpt at step {step}, "
                f"during a write: {bool(leftovers)}, same result: {ok}",
                flush=True,
            )

    print()
    print(
        f"Kill-and-resume, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, {args.devices} training process(es)"
        + f", {args.places} places, {args.epochs} epochs, data.num_workers={args.workers}"
        + (", kills aimed at checkpoint writes" if args.during_write else "")
        + (", kills aimed at epoch ends" if args.at_epoch_end else "")
    )
    if args.during_write:
        aim = f"kills during the k-th checkpoint write, k drawn from 1 to {reference['step']}"
    elif args.at_epoch_end:
        aim = "kills " + ", ".join(f"{moment}: {count}" for moment, count in aimed.items())
    else:
        aim = f"kill times drawn from [{0.8 * first_checkpoint:.1f}, {0.9 * duration:.1f}] s"
    print(
        f"uninterrupted run: {reference['step']} steps, {duration:.1f} s, first last.ckpt after "
        f"{first_checkpoint:.1f} s; {aim}"
    )
    print()
    print(
        "| kills | before the first last.ckpt | during a checkpoint write | unloadable last.ckpt "
        "| result differs from the uninterrupted run |"
    )
    print("|---|---|---|---|---|")
    print(f"| {len(rows)} | {no_checkpoint} | {during_write} | {unloadable} | {failures} |")
    print(f"({missed} kill times fell after the run had ended and were drawn again.)")


if __name__ == "__main__":
    main()
