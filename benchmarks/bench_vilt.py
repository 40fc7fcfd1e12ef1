"""What ViLT costs: (description, tile) pairs scored per second, and what that makes of a city's test split.

ViLT scores each pair with a forward pass of the whole model (``backbone=vilt``), so a
description ranked against its 100 nearest tiles costs 100 passes, and against the whole test
gallery one pass per tile. This scores pairs of ViLT-B/32 at its real size (12 layers, width 768,
384 px tiles, 40 text tokens; random weights, which cost what trained ones do) through
``ViltScorer.score`` at a few batch sizes, and derives the time of a CVG-Text test split of
1,200 descriptions and 1,200 tiles under both protocols.

    python benchmarks/bench_vilt.py                      # on the CPU
    python benchmarks/bench_vilt.py --device cuda --half # a GPU, fp16 autocast
    python benchmarks/bench_vilt.py --quick              # two layers, a few pairs: checks that it runs
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from tables import print_table  # noqa: E402

DESCRIPTION = (
    "Heading north, the road is a two-lane street with parked cars on the right; a red-brick church "
    "with a square tower stands at the corner, a bakery with a green awning beside it."
)
QUERIES = TILES = 1200  # a CVG-Text test split: about 1,200 descriptions and their tiles
NEAREST = 100


def pairs_per_second(scorer, images, tokens, batch: int, pairs: int, device: str, half: bool) -> float:
    import torch

    images, tokens = images.to(device), tokens.to(device)
    rows = torch.arange(batch) % len(images)

    def one() -> None:
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.float16, enabled=half):
            scorer.score(images[rows], tokens[:batch])
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    with torch.inference_mode():
        one()  # warm-up
        started = time.perf_counter()
        steps = max(1, pairs // batch)
        for _ in range(steps):
            one()
        return steps * batch / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--half", action="store_true", help="fp16 autocast (GPUs)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    arguments = parser.parse_args()

    import torch
    from PIL import Image

    from cvgtext.model.encoder import build_encoder
    from helpers.hf_stand_ins import write_bert_like

    if arguments.threads:
        torch.set_num_threads(arguments.threads)
    torch.manual_seed(0)
    layers = 2 if arguments.quick else 12
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = write_bert_like(Path(folder), [DESCRIPTION])
        encoder = build_encoder(
            "vilt-b32", family="vilt", tokenizer=str(tokenizer), config={"num_hidden_layers": layers}
        )
    scorer = encoder.model.eval().to(arguments.device)
    tiles = [
        Image.fromarray(torch.randint(0, 256, (512, 512, 3), dtype=torch.uint8).numpy()) for _ in range(4)
    ]  # release tiles are 512 x 512
    images = torch.stack([encoder.preprocess(tile) for tile in tiles])
    tokens = encoder.tokenizer([DESCRIPTION] * 64)
    rows = []
    for batch in (4, 16) if arguments.quick else (16, 64):
        rate = pairs_per_second(
            scorer, images, tokens, batch, batch * (1 if arguments.quick else 4), arguments.device, arguments.half
        )
        rows.append(
            [
                f"{arguments.device}{' fp16' if arguments.half else ''}",
                f"{layers}",
                f"{batch}",
                f"{rate:,.1f}",
                f"{NEAREST / rate:.2f} s",
                f"{QUERIES * NEAREST / rate / 3600:.2f} h",
                f"{QUERIES * TILES / rate / 3600:.1f} h",
            ]
        )
    print_table(
        f"ViLT-B/32 pairs scored ({tuple(images.shape[1:])} tiles, {tokens.shape[1]} tokens; "
        f"test split of {QUERIES:,} descriptions and {TILES:,} tiles)",
        [
            "device",
            "layers",
            "pairs per pass",
            "pairs / s",
            f"per description, {NEAREST} nearest",
            f"test split, {NEAREST} nearest ({QUERIES * NEAREST:,} pairs)",
            f"test split, whole gallery ({QUERIES * TILES:,} pairs)",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
