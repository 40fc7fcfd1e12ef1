"""Re-ranking against fake OpenAI-compatible servers: what the machinery does, not what a model can.

No multimodal model is reachable here, so the servers are the tests' fakes on 127.0.0.1
(``tests/helpers/chat_server.py``): an oracle that knows each description's true tile, a random judge,
one that answers prose instead of JSON, and a closed port. On the synthetic city's test split
(paper protocol, 100 nearest tiles) with a trained checkpoint, each row is one ``eval.py
reranker=lmm`` run in-process: R@1 without and with re-ranking on the same queries, the
paired bootstrap interval of the difference, requests sent and the wall time of the re-ranking
(tile encoding, HTTP, parsing; the fake answers at once). Each run has its own reply cache.

    python benchmarks/bench_rerank.py --ckpt outputs/train/runs/<run>/checkpoints/best.ckpt

A real model, served locally (see docs/reranking.md), measured the same way:
    python eval.py ckpt_path=CKPT reranker=lmm reranker.url=http://127.0.0.1:8000/v1 reranker.model=NAME
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from tables import print_table  # noqa: E402

SERVERS = (  # (server, mode, weight)
    ("oracle", "pointwise", 3.0),
    ("oracle", "pairwise", 3.0),
    ("random", "pointwise", 0.1),
    ("random", "pairwise", 0.1),
    ("garbage", "pointwise", 0.1),
    ("closed port", "pointwise", 0.1),
)


def newest_checkpoint() -> str | None:
    found = sorted(ROOT.glob("outputs/train/runs/*/checkpoints/best.ckpt"), key=lambda path: path.stat().st_mtime)
    return str(found[-1]) if found else None


def truth_of(data_dir: Path, city: str) -> dict[str, str]:
    """Each test caption of the city and the data URL of its true tile, as the re-ranker sends it."""
    from cvgtext.data.dataset import load_image
    from cvgtext.utils.chat import encode_image

    truth = {}
    for version in (city, f"{city}-photos"):
        annotations = json.loads((data_dir / "annotation" / version / "test.json").read_text())
        for name, caption in annotations.items():
            truth[caption] = encode_image(load_image(data_dir / "reference" / f"{version}-satellite" / name), 512)
    return truth


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", default=newest_checkpoint(), help="default: the newest best.ckpt of outputs/")
    parser.add_argument("--data-dir", default=str(ROOT / "data"))
    parser.add_argument("--max-queries", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="20 queries")
    args = parser.parse_args()
    if args.quick:
        args.max_queries = min(args.max_queries, 20)
    model = Path(args.ckpt).parent.parent.name if args.ckpt else "random weights (no make train checkpoint)"

    from hydra import compose, initialize_config_dir

    from cvgtext.commands.evaluate import evaluate
    from helpers.chat_server import ChatServer

    truth = truth_of(Path(args.data_dir), "Synthetic")
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for server_name, mode, weight in SERVERS:
            run_dir = Path(scratch) / f"{server_name}-{mode}".replace(" ", "_")
            server = None if server_name == "closed port" else ChatServer(server_name, truth, seed=0)
            url = server.__enter__().url if server else f"http://127.0.0.1:{free_port()}/v1"
            overrides = [
                f"paths.root_dir={ROOT}",
                f"paths.output_dir={run_dir}",
                f"paths.data_dir={args.data_dir}",
                f"paths.cache_dir={run_dir}/cache",
                "data.cache=false",
                "trainer=cpu",
                "explain.overlays=false",
                f"ckpt_path={args.ckpt or 'null'}",
                "reranker=lmm",
                f"reranker.url={url}",
                f"reranker.mode={mode}",
                f"reranker.weight={weight}",
                f"reranker.max_queries={args.max_queries}",
                "reranker.retries=1",
                "reranker.backoff_s=0.1",
            ]
            with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
                cfg = compose("eval", overrides=overrides)
            started = time.perf_counter()
            try:
                evaluate(cfg)
            finally:
                if server:
                    server.__exit__(None, None, None)
            seconds = time.perf_counter() - started
            report = json.loads((run_dir / "metrics.json").read_text())["reranking"]
            difference = report["difference"]["R@1"]
            requests = len(server.requests) if server else 0
            rows.append(
                [
                    server_name,
                    mode,
                    f"{weight:g}",
                    f"{report['reranked']} / {report['queries']}",
                    f"{report['without']['all']['R@1']:.1f}",
                    f"{report['without']['all']['R@5']:.1f}",
                    f"{report['with']['all']['R@1']:.1f}",
                    f"{difference['difference']:+.1f} [{difference['low']:+.1f}, {difference['high']:+.1f}]",
                    str(requests),
                    ", ".join(f"{k} {v}" for k, v in report["failed_requests"].items()) or "-",
                    f"{seconds:.1f}",
                ]
            )
    print_table(
        f"Re-ranking the top 5 with fake servers (synthetic city, test split, 100 nearest tiles; {model})",
        [
            "server",
            "mode",
            "weight",
            "re-ranked",
            "R@1 without",
            "R@5 without",
            "R@1 with",
            "difference [95% CI]",
            "requests",
            "failed requests",
            "eval s",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
