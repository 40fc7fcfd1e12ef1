"""The web page's answer time, in-process (no browser): what a person waits for after asking.

On the synthetic city (2,000 places, its whole gallery) with the tiny backbone on the CPU:
- the ranking alone (text encoding and search in the gallery index, ``app.answer``);
- the page's first step (ranking, the tiles read and the map drawn, ``Page.ask``);
- the second step, the relevance overlays of the top-k tiles (``Page.explain``).
Medians over the test split's captions, after one warm-up.

    python benchmarks/bench_app.py                   # random weights (the time does not depend on them)
    python benchmarks/bench_app.py --ckpt CKPT --queries 20 --top-k 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tables import print_table  # noqa: E402


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        return hydra_compose("app", overrides=overrides)


def median_ms(function, inputs) -> float:
    function(inputs[0])
    times = []
    for item in inputs:
        start = time.perf_counter()
        function(item)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(ROOT / "data"), help="where the synthetic city is (or is generated)")
    parser.add_argument("--ckpt", default=None, help="a checkpoint; default: the tiny backbone's random weights")
    parser.add_argument("--queries", type=int, default=10)
    parser.add_argument("--top-k", type=int, default=5)
    args = parser.parse_args()

    import torch

    from cvgtext.commands.app import Page, answer
    from cvgtext.commands.locator import Locator

    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as scratch:
        overrides = [
            f"paths.data_dir={args.data_dir}",
            f"paths.cache_dir={scratch}",
            f"paths.root_dir={scratch}",
            f"paths.output_dir={scratch}/run",
            f"top_k={args.top_k}",
        ]
        if args.ckpt:
            overrides.append(f"ckpt_path={args.ckpt}")
        cfg = compose(overrides)
        started = time.perf_counter()
        locator = Locator(cfg)
        loaded = time.perf_counter() - started
        captions = list(
            json.loads((Path(args.data_dir) / "annotation" / "Synthetic" / "test.json").read_text()).values()
        )
        captions = captions[: args.queries]
        page = Page(locator)
        locations = [page.ask(caption)[-1] for caption in captions[:1]]
        rows = [
            ["ranking (text encoding + search)", f"{median_ms(lambda c: answer(locator, c), captions):.0f}"],
            ["page, first step (ranking + tiles + map)", f"{median_ms(page.ask, captions):.0f}"],
            [
                f"page, second step (overlays of {args.top_k} tiles)",
                f"{median_ms(page.explain, locations * len(captions)):.0f}",
            ],
        ]
    print_table(
        f"Answer time on the CPU ({torch.get_num_threads()} threads), tiny backbone, "
        f"{len(locator.gallery.names):,} tiles, median of {len(captions)} captions "
        f"(model loaded and gallery index built once, in {loaded:.1f} s)",
        ["step", "ms"],
        rows,
    )


if __name__ == "__main__":
    main()
