"""Speed and memory of the retrieval engine; prints a markdown table.

(a) The paper's protocol on a city-sized test split (1,200 queries x 1,200 tiles) and on a
    gallery ten times larger (12,000 tiles at the same density): ``geo_retrieval_metrics``
    against the plain per-query implementation of the protocol (``tests/helpers/reference_protocol.py``),
    with whether both give the same numbers.
(b) A large gallery (10,000 queries x 100,000 tiles, dim 512, float32): ``rank_gallery``
    against a bare ``torch.mm`` + ``topk(10)`` over the same query chunks, with peak extra
    resident memory.

    python benchmarks/bench_retrieval.py            # full sizes
    python benchmarks/bench_retrieval.py --quick    # small sizes, seconds
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from tables import print_table  # noqa: E402

from cvgtext.data.names import parse_places  # noqa: E402
from cvgtext.retrieval.metrics import geo_retrieval_metrics  # noqa: E402
from cvgtext.retrieval.ranking import default_chunk_size, rank_gallery  # noqa: E402
from helpers.reference_protocol import reference_metrics, synthetic_names  # noqa: E402

CITY_TILES = 1200
CITY_SPAN_DEG = 0.045  # about 5 km of latitude


def rss_bytes(field: str = "VmRSS") -> int:
    """Resident memory of this process from /proc (torch allocations included)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


class PeakRSS:
    """Peak resident memory above the level at entry, while the block runs.

    Uses the kernel's high-water mark (reset through /proc/self/clear_refs) where allowed,
    else samples VmRSS every millisecond.
    """

    def __enter__(self) -> PeakRSS:
        self.start = rss_bytes()
        try:
            with open("/proc/self/clear_refs", "w") as clear:
                clear.write("5")
            self.sampler = None
        except OSError:
            self.peak, self.running = self.start, True
            self.sampler = threading.Thread(target=self._sample, daemon=True)
            self.sampler.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.001)

    def __exit__(self, *exc) -> None:
        if self.sampler is None:
            self.peak = rss_bytes("VmHWM")
        else:
            self.running = False
            self.sampler.join()
        self.extra = max(0, self.peak - self.start)


def timed(run: Callable[[], object], repeats: int = 1) -> tuple[float, object, int]:
    """Best wall time in seconds over ``repeats``, the last result, and the largest peak extra RSS."""
    best, extra, result = math.inf, 0, None
    for _ in range(repeats):
        with PeakRSS() as memory:
            start = time.perf_counter()
            result = run()
            best = min(best, time.perf_counter() - start)
        extra = max(extra, memory.extra)
    return best, result, extra


def city(queries: int, tiles: int, seed: int) -> tuple[list[str], list[str]]:
    """Gallery names spread at the density of a CVG-Text city, and queries drawn from them."""
    rng = random.Random(seed)
    span = CITY_SPAN_DEG * math.sqrt(tiles / CITY_TILES)
    gallery = synthetic_names(rng, tiles, span_deg=span)
    return rng.sample(gallery, queries), gallery


def unit_rows(rows: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(rows, dim, generator=generator), dim=1)


def compare_metrics(ours: dict, reference: dict) -> str:
    if ours == reference:
        return "yes (bit-identical)"
    same_counts = (
        all(
            {key: value for key, value in ours[group].items() if key != "mean_error_km"}
            == {key: value for key, value in reference[group].items() if key != "mean_error_km"}
            for group in reference
        )
        and ours.keys() == reference.keys()
    )
    worst = max(abs(ours[group]["mean_error_km"] - reference[group]["mean_error_km"]) for group in reference)
    return f"{'recalls equal' if same_counts else 'NO'}, mean error differs by {worst:.1e} km"


def bench_protocol(queries: int, tiles: int, repeats: int) -> list[list[str]]:
    query_names, gallery_names = city(queries, tiles, seed=0)
    generator = torch.Generator().manual_seed(0)
    sim = unit_rows(queries, 512, generator) @ unit_rows(tiles, 512, generator).T  # [queries, gallery]
    rows = []
    for nearest in (100, None):
        ours_s, ours, _ = timed(
            lambda nearest=nearest: geo_retrieval_metrics(sim, query_names, gallery_names, nearest), repeats
        )
        rows_as_lists = sim.tolist()
        plain_s, plain, _ = timed(
            lambda rows=rows_as_lists, nearest=nearest: reference_metrics(rows, query_names, gallery_names, nearest)
        )
        rows.append(
            [
                f"{queries:,} x {tiles:,}, nearest={nearest}",
                f"{ours_s * 1000:.1f} ms",
                f"{plain_s:.2f} s",
                f"{plain_s / ours_s:.0f}x",
                compare_metrics(ours, plain),
            ]
        )
    return rows


def bench_large(queries: int, tiles: int, dim: int) -> list[list[str]]:
    query_names, gallery_names = city(queries, tiles, seed=1)
    generator = torch.Generator().manual_seed(1)
    query_emb, gallery_emb = unit_rows(queries, dim, generator), unit_rows(tiles, dim, generator)
    query_places, gallery_places = parse_places(query_names), parse_places(gallery_names)
    chunk = min(queries, default_chunk_size(tiles, query_emb.dtype))

    def bare_mm_topk() -> torch.Tensor:
        tops = [
            (query_emb[start : start + chunk] @ gallery_emb.T).topk(10, dim=1) for start in range(0, queries, chunk)
        ]
        return torch.cat([top.indices for top in tops])

    base_s, _, base_bytes = timed(bare_mm_topk)
    rows = [[f"bare mm + topk(10), chunks of {chunk}", f"{base_s:.2f} s", f"{base_bytes / 2**20:.0f} MiB", "1.00x"]]
    for nearest in (None, 100):
        ranked_s, _, ranked_bytes = timed(
            lambda nearest=nearest: rank_gallery(
                query_emb,
                gallery_emb,
                query_names,
                gallery_names,
                query_places,
                gallery_places,
                nearest=nearest,
                chunk_size=chunk,
            )
        )
        rows.append(
            [
                f"rank_gallery, nearest={nearest}",
                f"{ranked_s:.2f} s",
                f"{ranked_bytes / 2**20:.0f} MiB",
                f"{ranked_s / base_s:.2f}x",
            ]
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shrink every size (a smoke run)")
    parser.add_argument("--skip-large", action="store_true", help="run only the protocol comparison (a)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of the vectorised metrics; best is shown")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    sizes = [(300, 300), (300, 3000)] if args.quick else [(1200, 1200), (1200, 12000)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print_table(
        "(a) CVG-Text metrics: geo_retrieval_metrics vs the plain per-query protocol",
        ["queries x tiles, protocol", "geo_retrieval_metrics", "plain per-query", "speed-up", "same numbers"],
        [row for queries, tiles in sizes for row in bench_protocol(queries, tiles, repeats=args.repeats)],
    )
    if not args.skip_large:
        queries, tiles, dim = (500, 5_000, 128) if args.quick else (10_000, 100_000, 512)
        print_table(
            f"(b) {queries:,} queries x {tiles:,} tiles, dim {dim}, float32",
            ["ranking", "wall time", "peak extra RSS", "time vs bare mm + topk"],
            bench_large(queries, tiles, dim),
        )


if __name__ == "__main__":
    main()
