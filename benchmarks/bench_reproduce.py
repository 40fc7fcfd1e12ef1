"""The reproduce table end to end on a fake release, and what each of its evaluations costs.

A fake CVG-Text release is written to a temporary folder: tiny cities named Brisbane, NewYork
and Tokyo in the release layout (36 places each, 9 test descriptions), an official-format
checkpoint for each city and gallery type (random weights of the project's ``cvg-tiny`` CLIP in
OpenAI's keys, 300 text positions, under the hub's file names), and a small random ViLT. The
reproduce sweep's evaluations then run in this process (each official checkpoint on its own
city, the satellite ones across cities, and ViLT), are gathered into the reproduce table
(printed: the table README.md and BENCHMARKS.md show, labelled as built from a fake release), and
timed. The weights are random, so the figures are near chance: they show the format, not a result.

    python benchmarks/bench_reproduce.py            # 18 evaluations, under a minute on 2 CPU cores
    python benchmarks/bench_reproduce.py --quick    # Brisbane only
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from tables import print_table  # noqa: E402

VILT = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128}


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        return hydra_compose("eval", overrides=overrides)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    arguments = parser.parse_args()

    from cvgtext.commands.evaluate import evaluate
    from cvgtext.reports.reproduce import ReproduceTable
    from helpers.hf_stand_ins import write_bert_like
    from helpers.official import CITIES, write_fake_release

    cities = ("Brisbane",) if arguments.quick else CITIES
    timings: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        started = time.perf_counter()
        data = write_fake_release(root / "data", "cvg-tiny", cities=cities)
        release_s = time.perf_counter() - started
        captions = [line for path in data.rglob("*.json") for line in path.read_text().split('"')]
        tokenizer = write_bert_like(root / "tokenizer", captions)
        common = [f"paths.data_dir={data}", f"paths.cache_dir={root}/cache", "trainer=cpu", "data.num_workers=0"]
        vilt = [
            "backbone=vilt",
            "backbone.pretrained=null",
            f"backbone.tokenizer={tokenizer}",
            "backbone.image_size=64",
            *(f"+backbone.config.{key}={value}" for key, value in VILT.items()),
        ]
        jobs = [
            (f"official, {'own city' if own == city else 'other city'}", [f"backbone.trained_on.city={own}"], city, img)
            for city in cities
            for img in ("sat", "osm")
            for own in (cities if img == "sat" else (city,))
        ]
        jobs += [("ViLT, 100 nearest", vilt, city, img) for city in cities for img in ("sat", "osm")]
        for number, (kind, overrides, city, img) in enumerate(jobs):
            cfg = compose(
                ["experiment=reproduce", f"city={city}", f"img={img}", f"paths.output_dir={root}/sweep/{number}"]
                + common
                + overrides
                + (["backbone.model_name=cvg-tiny"] if "official" in kind else [])
            )
            started = time.perf_counter()
            evaluate(cfg)
            timings.setdefault(kind, []).append(time.perf_counter() - started)
        markdown, _ = ReproduceTable.write(str(root / "sweep"))
        table = markdown.read_text()
    print("\nThe reproduce table of the fake release (random weights: the format, not a result)\n")
    print(table)
    print_table(
        f"Evaluations of the fake release (9 test descriptions per city; writing the release: {release_s:.1f} s)",
        ["evaluation", "runs", "median wall time", "total"],
        [[kind, f"{len(t)}", f"{statistics.median(t):.2f} s", f"{sum(t):.1f} s"] for kind, t in timings.items()],
    )


if __name__ == "__main__":
    main()
