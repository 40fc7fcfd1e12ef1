"""Training throughput of real-shape backbones on a GPU at 16-bit mixed precision; prints markdown tables.

For each backbone (random weights, nothing downloaded): training samples/s of the
LightningModule under a GPU ``Trainer`` (``precision=16-mixed``) against a plain PyTorch loop
(``torch.autocast`` and a gradient scaler) over the same model, optimizer and batches, which
are decoded beforehand and kept in pinned memory, so that the difference is the framework, not
the data; the GPU's utilisation while Lightning trains (NVML, where ``nvidia-ml-py`` is
installed); and the peak memory of a training step with and without activation checkpointing
(``model.grad_checkpointing``), with ``channels_last`` and ``compile`` as further rows on request.

    python benchmarks/bench_gpu.py                                  # ViT-B/16 and ViT-L/14@336
    python benchmarks/bench_gpu.py --models vit_b16 --steps 20 --compile
    python benchmarks/bench_gpu.py --device cpu --models tiny --batch-size 8 --steps 2   # a dry run

Without a CUDA device (and without ``--device cpu``) it says so and measures nothing.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from tables import print_table
from torch.utils.data import DataLoader

from cvgtext.model.module import MAX_LOGIT_SCALE, CrossViewRetrieval

ROOT = Path(__file__).resolve().parents[1]


def module_config(backbone: str, options: list[str]) -> Any:
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        return compose(
            "train",
            overrides=[
                f"paths.root_dir={ROOT}",
                f"backbone={backbone}",
                "backbone.pretrained=null",
                "optim=paper",
                *options,
            ],
        ).model


def fresh_module(cfg: Any) -> CrossViewRetrieval:
    L.seed_everything(0, verbose=False)
    return instantiate(cfg)


def random_batches(module: CrossViewRetrieval, batch_size: int, count: int, pin: bool) -> DataLoader:
    """``count`` batches of random images and tokens at the model's input shape (in pinned memory)."""
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    _, height, width = module.preprocess(Image.new("RGB", (512, 512))).shape  # the model's input size
    context = module.tokenizer(["a"]).shape[1]
    batches = [
        {
            "image": torch.randn(batch_size, 3, height, width, generator=generator),
            "tokens": torch.randint(1, 1000, (batch_size, context), generator=generator),
            "index": torch.arange(batch_size),
        }
        for _ in range(count)
    ]
    if pin:
        batches = [{key: value.pin_memory() for key, value in batch.items()} for batch in batches]
    return DataLoader(batches, batch_size=None, pin_memory=False)


class Utilisation:
    """Mean GPU utilisation (%) sampled by NVML every 50 ms between ``start`` and ``stop``."""

    def __init__(self, device: torch.device):
        self.samples: list[int] = []
        self.running = False
        try:
            import pynvml

            pynvml.nvmlInit()
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
            self.read = lambda: pynvml.nvmlDeviceGetUtilizationRates(self.handle).gpu
        except Exception:  # no NVML (pip install nvidia-ml-py), or no GPU: not measured
            self.read = None

    def start(self) -> None:
        if self.read is None:
            return
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while self.running:
            self.samples.append(self.read())
            time.sleep(0.05)

    def stop(self) -> str:
        if self.read is None:
            return "n/a (no NVML)"
        self.running = False
        self.thread.join()
        return f"{statistics.mean(self.samples):.0f} %" if self.samples else "n/a"


class StepTimer(L.Callback):
    """Wall time from the start of step ``warmup`` to the end of the last step, the GPU synchronised."""

    def __init__(self, warmup: int, utilisation: Utilisation):
        self.warmup, self.utilisation = warmup, utilisation
        self.start = self.end = 0.0
        self.busy = "n/a"

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            _synchronize(module.device)
            self.start = time.perf_counter()
            self.utilisation.start()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        _synchronize(module.device)
        self.end = time.perf_counter()

    def on_train_end(self, trainer, module) -> None:
        self.busy = self.utilisation.stop()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def lightning_run(
    module: CrossViewRetrieval, batches: DataLoader, warmup: int, device: torch.device, precision: str
) -> tuple[float, str]:
    timer = StepTimer(warmup, Utilisation(device))
    trainer = L.Trainer(
        accelerator=device.type,
        devices=1,
        precision=precision,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[timer],
    )
    trainer.fit(module, train_dataloaders=batches)
    return timer.end - timer.start, timer.busy


def plain_run(
    module: CrossViewRetrieval, batches: DataLoader, warmup: int, device: torch.device, precision: str
) -> float:
    """The same steps as ``training_step``, by hand: autocast, a gradient scaler, AdamW."""
    module.to(device).train()
    module.setup("fit")
    optimizer = module.configure_optimizers()["optimizer"]
    half = precision == "16-mixed" and device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=half)
    for step, batch in enumerate(batches):
        if step == warmup:
            _synchronize(device)
            start = time.perf_counter()
        batch = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
        with torch.autocast(device.type, dtype=torch.float16, enabled=half):
            image_features, text_features = module.embed(batch)
            loss = module.criterion(image_features, text_features, module.model.logit_scale.exp())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        with torch.no_grad():
            module.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
    _synchronize(device)
    return time.perf_counter() - start


def peak_memory(cfg: Any, batches: DataLoader, device: torch.device, precision: str) -> str:
    """Peak memory allocated by three training steps of the plain loop, after the model is on the device."""
    if device.type != "cuda":
        return "n/a (CPU)"
    module = fresh_module(cfg)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    plain_run(module, _first(batches, 3), 0, device, precision)
    peak = torch.cuda.max_memory_allocated(device)
    del module
    torch.cuda.empty_cache()
    return f"{peak / 2**30:.1f} GiB"


def _first(batches: DataLoader, count: int) -> list:
    return [batch for _, batch in zip(range(count), batches)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vit_b16", "vit_l14_336"], help="backbone configs")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per loop")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--precision", default="16-mixed")
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for a dry run of the script")
    parser.add_argument("--compile", action="store_true", help="also time model.compile=true")
    parser.add_argument("--channels-last", action="store_true", help="also time model.channels_last=true")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_gpu.py: no CUDA device here, nothing measured (run it on a GPU, or with --device cpu)")
        return
    device = torch.device(args.device)
    precision = args.precision if device.type == "cuda" else "32-true"
    pin = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if pin else "CPU"
    variants = {"": []}
    if args.channels_last:
        variants["channels_last"] = ["model.channels_last=true"]
    if args.compile:
        variants["compile"] = ["model.compile=true"]

    rows, memory = [], []
    for backbone in args.models:
        for label, options in variants.items():
            cfg = module_config(backbone, options)
            batches = random_batches(fresh_module(cfg), args.batch_size, args.warmup + args.steps, pin)
            samples = args.steps * args.batch_size
            plain = samples / plain_run(fresh_module(cfg), batches, args.warmup, device, precision)
            seconds, busy = lightning_run(fresh_module(cfg), batches, args.warmup, device, precision)
            lightning = samples / seconds
            rows.append(
                [f"{backbone} {label}".strip(), f"{plain:.1f}", f"{lightning:.1f}", f"{lightning / plain:.2f}x", busy]
            )
        cfg = module_config(backbone, [])
        batches = random_batches(fresh_module(cfg), args.batch_size, 3, pin)
        memory.append(
            [
                backbone,
                peak_memory(cfg, batches, device, precision),
                peak_memory(module_config(backbone, ["model.grad_checkpointing=true"]), batches, device, precision),
            ]
        )

    print_table(
        f"Training samples/s on {name}, precision {precision}, batch {args.batch_size}, {args.steps} timed steps "
        f"after {args.warmup}, batches in {'pinned ' if pin else ''}memory, random weights; torch {torch.__version__}, "
        f"lightning {L.__version__}",
        ["backbone", "plain loop", "Lightning Trainer", "Lightning / plain", "GPU utilisation (Lightning)"],
        rows,
    )
    print_table(
        f"Peak memory of a training step, batch {args.batch_size}, precision {precision}",
        ["backbone", "peak memory", "with activation checkpointing"],
        memory,
    )


if __name__ == "__main__":
    main()
