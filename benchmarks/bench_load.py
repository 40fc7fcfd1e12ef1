"""Several people at once: the page served on 127.0.0.1 and asked by many clients together.

The page of ``app.py`` (the tiny backbone, or ``--ckpt``, on the synthetic city of 2,000 places)
is served in this process; each of ``--clients`` clients (Gradio's own client, one session
each) asks ``--descriptions`` test captions one after the other, each as the browser does: the
answer (``/ask``) and then its overlays and neighbourhood map (``/explain``). Per queue setting:
requests that failed, the answer's and the overlays' times as the clients saw them (p50, p95),
the wall time, and whether the server still serves afterwards.

Queue settings compared: answers and overlays in queues of their own (the page's default, one
at a time each), both in one queue (one at a time: a person's overlays hold back the next
person's answer), and two answers at a time beside one overlay step.

    python benchmarks/bench_load.py                        # 20 clients x 10 descriptions
    python benchmarks/bench_load.py --clients 5 --descriptions 4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from tables import print_table  # noqa: E402

SETTINGS = (  # (label, concurrency, queues apart)
    ("apart, 1 answer + 1 overlay step at a time (default)", {"answers": 1, "overlays": 1}, True),
    ("one queue, 1 step at a time", {"answers": 1, "overlays": 1}, False),
    ("apart, 2 answers + 1 overlay step at a time", {"answers": 2, "overlays": 1}, True),
)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))]


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_clients(url: str, captions: list[str], clients: int, descriptions: int) -> dict:
    """Every client's answers and overlays, timed; failures counted, not raised."""
    from gradio_client import Client

    connected = [Client(url, verbose=False) for _ in range(clients)]
    answers, overlays, failures = [], [], []
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def person(number: int) -> None:
        client = connected[number]
        start.wait()
        for k in range(descriptions):
            caption = captions[(number * descriptions + k) % len(captions)]
            try:
                began = time.perf_counter()
                status = client.predict(caption, api_name="/ask")[0]
                answered = time.perf_counter()
                client.predict(api_name="/explain")
                explained = time.perf_counter()
                if "Best match" not in status:
                    raise RuntimeError(f"no answer: {status[:120]}")
                with lock:
                    answers.append(answered - began)
                    overlays.append(explained - answered)
            except Exception as error:  # counted and reported
                with lock:
                    failures.append(f"{type(error).__name__}: {error}"[:200])

    threads = [threading.Thread(target=person, args=(number,)) for number in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    with urllib.request.urlopen(url + "config", timeout=30) as response:
        serving = response.status == 200
    return {"answers": answers, "overlays": overlays, "failures": failures, "wall": wall, "serving": serving}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(ROOT / "data"))
    parser.add_argument("--ckpt", default=None, help="a checkpoint; default: the tiny backbone's random weights")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--descriptions", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="4 clients x 3 descriptions")
    args = parser.parse_args()
    if args.quick:
        args.clients, args.descriptions = min(args.clients, 4), min(args.descriptions, 3)

    from hydra import compose, initialize_config_dir

    from cvgtext.commands.app import Page, build_page, page_theme
    from cvgtext.commands.locator import Locator
    from cvgtext.reports.answer_html import PAGE_CSS

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        overrides = [
            f"paths.data_dir={args.data_dir}",
            f"paths.cache_dir={scratch}",
            f"paths.root_dir={scratch}",
            f"paths.output_dir={scratch}/run",
        ]
        if args.ckpt:
            overrides.append(f"ckpt_path={args.ckpt}")
        with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
            cfg = compose("app", overrides=overrides)
        locator = Locator(cfg)
        page = Page(locator)
        page.warm_up()
        captions = list(
            json.loads((Path(args.data_dir) / "annotation" / "Synthetic" / "test.json").read_text()).values()
        )
        for label, concurrency, apart in SETTINGS:
            port = free_port()
            blocks = build_page(page, "load", concurrency, apart)
            blocks.queue().launch(
                server_name="127.0.0.1",
                server_port=port,
                prevent_thread_lock=True,
                quiet=True,
                theme=page_theme(),
                css=PAGE_CSS,
                footer_links=[],
            )
            try:
                found = run_clients(f"http://127.0.0.1:{port}/", captions, args.clients, args.descriptions)
            finally:
                blocks.close()
            asked = args.clients * args.descriptions
            answers, overlays = found["answers"], found["overlays"]
            rows.append(
                [
                    label,
                    f"{args.clients} x {args.descriptions}",
                    f"{len(found['failures'])} / {asked}",
                    f"{1000 * statistics.median(answers):.0f}" if answers else "-",
                    f"{1000 * percentile(answers, 0.95):.0f}" if answers else "-",
                    f"{1000 * statistics.median(overlays):.0f}" if overlays else "-",
                    f"{1000 * percentile(overlays, 0.95):.0f}" if overlays else "-",
                    f"{found['wall']:.1f}",
                    "yes" if found["serving"] else "no",
                ]
            )
            for failure in found["failures"][:5]:
                print(f"  {label}: {failure}", flush=True)
    print_table(
        f"{args.clients} clients at once on 127.0.0.1, {len(locator.gallery.names):,} tiles, "
        f"{'the checkpoint' if args.ckpt else 'tiny backbone, random weights'}; times as the clients saw them",
        [
            "queues",
            "clients x descriptions",
            "failed",
            "answer p50 ms",
            "answer p95 ms",
            "overlays p50 ms",
            "overlays p95 ms",
            "wall s",
            "still serving",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
