"""Getting a release, against the tests' fake hub on 127.0.0.1: what the machinery costs, not the network.

A repository of loose tiles holds tens of thousands of small files, so the cost per file (a
request each, the digest check, the rename) decides how long a city takes on a fast link;
an archive is one large file, where the digest check reads it a second time. Rows:
- loose tiles, ``workers`` at a time: files per second and MB/s (``fetch``, fake hub in-process),
  answered at once and after a round trip of ``--latency-ms`` (what parallel requests hide);
- one large file: MB/s of the transfer and of its digest check;
- the check of a city of that many tiles (counts, and byte-identical tiles found by size, then
  by digest of equal-sized files only).

    python benchmarks/bench_download.py            # 4,000 tiles of 40 kB (400 with a round trip), a 400 MB archive
    python benchmarks/bench_download.py --quick    # 400 tiles, 40 MB
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from tables import print_table  # noqa: E402


def tiles(count: int, size: int) -> dict[str, bytes]:
    """A city's hub layout with ``count`` satellite tiles of ``size`` random bytes each."""
    names = [f"-27.{4700000 + i:07d},153.{2000000 + i:07d}_2022-08_pano{i:06d}_d62_z3.jpg" for i in range(count)]
    files = {f"reference/Brisbane-satellite/{name}": os.urandom(size) for name in names}
    files["annotation/Brisbane/train.json"] = json.dumps({name: "a street" for name in names[1:]}).encode()
    files["annotation/Brisbane/test.json"] = json.dumps({names[0]: "a street"}).encode()
    return files


def fetch_rows(count: int, tile_bytes: int, latency_s: float, keep: Path | None = None) -> list[list[str]]:
    """Fetching ``count`` loose tiles with 1, 4, 8 and 16 workers from a hub answering after ``latency_s``."""
    from cvgtext.data.release.hub import list_repository
    from cvgtext.data.release.transfer import fetch
    from helpers.fake_hub import FakeHub

    rows = []
    with FakeHub(page_size=1000, latency_s=latency_s) as hub, tempfile.TemporaryDirectory() as scratch:
        hub.add("dataset", "bench/tiles", tiles(count, tile_bytes))
        listing = list_repository("bench/tiles", "dataset", endpoint=hub.url)
        megabytes = sum(file.size for file in listing.files) / 1e6
        for workers in (1, 4, 8, 16):
            folder = keep if keep is not None and workers == 8 else Path(scratch) / f"w{workers}"
            start = time.perf_counter()
            fetch(listing, list(listing.files), folder, workers=workers, endpoint=hub.url)
            seconds = time.perf_counter() - start
            rows.append(
                [
                    f"{len(listing.files):,} loose files, {latency_s * 1000:.0f} ms a request, workers={workers}",
                    f"{seconds:.2f}",
                    f"{len(listing.files) / seconds:,.0f} files/s",
                    f"{megabytes / seconds:,.0f} MB/s",
                ]
            )
    return rows


def check_row(data_dir: Path, count: int) -> list[str]:
    from cvgtext.data.release.check import check_release

    start = time.perf_counter()
    report = check_release(
        data_dir,
        "Brisbane",
        ["Brisbane"],
        "annotation/{version}/{split}.json",
        "reference/{version}-satellite",
        "satellite",
    )
    seconds = time.perf_counter() - start
    return [
        f"check of {count:,} tiles ({len(report.errors)} problems)",
        f"{seconds:.2f}",
        f"{count / seconds:,.0f} tiles/s",
        "",
    ]


def archive_rows(megabytes: int) -> list[list[str]]:
    """One large file: its transfer with the digest check, and the digest check alone."""
    from cvgtext.data.release.hub import list_repository
    from cvgtext.data.release.transfer import content_digest, fetch
    from helpers.fake_hub import FakeHub

    with FakeHub() as hub, tempfile.TemporaryDirectory() as scratch:
        hub.add("dataset", "bench/archive", {"city.zip": os.urandom(megabytes * 1_000_000)})
        listing = list_repository("bench/archive", "dataset", endpoint=hub.url)
        start = time.perf_counter()
        (path,) = fetch(listing, list(listing.files), Path(scratch), endpoint=hub.url)
        transfer = time.perf_counter() - start
        start = time.perf_counter()
        content_digest(path, listing.files[0])
        digest = time.perf_counter() - start
    return [
        [f"one {megabytes} MB file (transfer + digest)", f"{transfer:.2f}", "", f"{megabytes / transfer:,.0f} MB/s"],
        ["its digest check alone (sha256)", f"{digest:.2f}", "", f"{megabytes / digest:,.0f} MB/s"],
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiles", type=int, default=4000)
    parser.add_argument("--tile-kb", type=int, default=40)
    parser.add_argument("--archive-mb", type=int, default=400)
    parser.add_argument("--latency-ms", type=float, default=50, help="a far hub's round trip, for the second set")
    parser.add_argument("--quick", action="store_true", help="400 tiles, a 40 MB archive")
    args = parser.parse_args()
    if args.quick:
        args.tiles, args.archive_mb = 400, 40
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    import huggingface_hub.constants

    huggingface_hub.constants.HF_HUB_OFFLINE = False  # the fake hub is on 127.0.0.1
    with tempfile.TemporaryDirectory() as kept:
        rows = fetch_rows(args.tiles, args.tile_kb * 1000, 0.0, keep=Path(kept))
        check = check_row(Path(kept), args.tiles)
    # fewer files with a round trip: at 50 ms, one worker takes 0.1 s a file (the redirect, then the bytes)
    rows += fetch_rows(min(args.tiles, 400), args.tile_kb * 1000, args.latency_ms / 1000)
    rows += archive_rows(args.archive_mb) + [check]
    print_table(
        "Getting a release from a hub on 127.0.0.1 (the tests' fake)", ["what", "seconds", "rate", "throughput"], rows
    )


if __name__ == "__main__":
    main()
