"""Gallery indexes for the query tool: build time, query latency, memory and recall; prints markdown tables.

(a) Text encoding: one description through the text tower of each backbone (random weights:
    the time does not depend on their values), at its context length.
(b) Search, for galleries of 10k, 100k and 1M tiles: ``exact`` (torch, the default of
    ``locate.py``) and the faiss indexes, on
    - embeddings of the synthetic city (its gallery and test captions embedded by the tiny
      backbone, or by ``--ckpt``), the tiles replicated with small noise up to the size;
    - random unit vectors (no structure: the hardest case for the approximate indexes).
    Build time, search latency of one query (median), index memory, and recall@10 of each
    index against exact search.

    python benchmarks/bench_index.py                       # 10k, 100k, 1M tiles
    python benchmarks/bench_index.py --quick               # small sizes, a smoke run
    python benchmarks/bench_index.py --sizes 10000 100000 --encoders tiny vit_b16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tables import print_table  # noqa: E402

from cvgtext.search.backends import SearchIndex, exact_search  # noqa: E402

ENCODERS = {  # name: (open_clip model, context length)
    "tiny": ("cvg-tiny", 77),
    "vit_b16": ("ViT-B-16", 77),
    "vit_l14_336": ("ViT-L-14-336", 300),
}
CAPTION = (
    "A red-brick church stands on a roundabout; a park with tall trees lies to the north-east, "
    "and a row of three-storey houses with grey roofs lines the road to the south."
)


def timed(function, repeats: int) -> float:
    """Median seconds of ``repeats`` calls, after one warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def text_encoding_latency(names: list[str], repeats: int) -> dict[str, float]:
    from cvgtext.model.encoder import build_encoder

    latency = {}
    for name in names:
        model_name, context = ENCODERS[name]
        encoder = build_encoder(model_name, context_length=context)
        model = encoder.model.eval()
        tokens = encoder.tokenizer([CAPTION])
        with torch.inference_mode():
            latency[name] = timed(lambda model=model, tokens=tokens: model.encode_text(tokens, normalize=True), repeats)
        del encoder, model
    return latency


def city_embeddings(data_dir: Path, places: int, ckpt: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(gallery, queries)`` embeddings of the synthetic city: its tiles and its test captions."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from cvgtext.commands.locator import build_gallery_index
    from cvgtext.model.build import build_module
    from cvgtext.search.gallery import embed_captions

    overrides = [
        f"paths.root_dir={ROOT}",
        f"paths.data_dir={data_dir}",
        f"paths.output_dir={data_dir}/run",
        f"city.synthetic.places={places}",
        "data.num_workers=0",
    ]
    if ckpt:
        overrides.append(f"ckpt_path={ckpt}")
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("locate", overrides=overrides)
    torch.manual_seed(cfg.seed)
    module, backbone = build_module(cfg)
    gallery, _ = build_gallery_index(cfg, module, backbone, "all")
    datamodule = instantiate(cfg.data, preprocess=module.preprocess, tokenizer=module.tokenizer)
    captions = [pair.caption for pair in datamodule.source.read_splits()["test"]]
    return gallery.embeddings, embed_captions(module.model, module.tokenizer, captions)


def replicate(base: torch.Tensor, size: int, noise: float, seed: int) -> torch.Tensor:
    """``size`` unit vectors: the rows of ``base`` in turn, each moved by noise of norm about ``noise``."""
    generator = torch.Generator().manual_seed(seed)
    rows = base[torch.arange(size) % base.shape[0]]
    jitter = torch.randn(rows.shape, generator=generator) * (noise / rows.shape[1] ** 0.5)
    return torch.nn.functional.normalize(rows + jitter, dim=1)


def random_unit(size: int, dim: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(size, dim, generator=generator), dim=1)


def index_bytes(index: SearchIndex) -> int:
    if index.faiss_index is None:
        return index.gallery.numel() * index.gallery.element_size()
    import faiss

    return int(faiss.serialize_index(index.faiss_index).nbytes)


def recall(found: torch.Tensor, expected: torch.Tensor) -> float:
    hits = sum(len(set(f.tolist()) & set(e.tolist())) for f, e in zip(found, expected))
    return hits / expected.numel()


def measure(gallery: torch.Tensor, queries: torch.Tensor, indexes: list[str], repeats: int) -> list[dict]:
    _, expected = exact_search(queries, gallery, 10)
    rows = []
    for name in indexes:
        start = time.perf_counter()
        index = SearchIndex(name, gallery)
        build_s = time.perf_counter() - start
        one = queries[:1]
        latency_s = (
            statistics.median(
                timed(lambda q=queries[i : i + 1], index=index: index.search(q, 10), 1)
                for i in range(min(repeats, len(queries)))
            )
            if name != "exact" or gallery.shape[0] <= 10**6
            else timed(lambda index=index, one=one: index.search(one, 10), 3)
        )
        _, found = index.search(queries, 10)
        rows.append(
            {
                "index": name,
                "build_s": build_s,
                "latency_s": latency_s,
                "bytes": index_bytes(index),
                "recall": recall(found, expected),
            }
        )
        del index
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, no large encoders (a smoke run)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--encoders", nargs="*", default=list(ENCODERS), choices=list(ENCODERS))
    parser.add_argument("--indexes", nargs="+", default=["exact", "faiss_flat", "faiss_hnsw", "faiss_ivfpq"])
    parser.add_argument("--places", type=int, default=1000, help="places of the synthetic city")
    parser.add_argument("--data-dir", default=None, help="where the synthetic city is (generated on first use)")
    parser.add_argument("--ckpt", default=None, help="a checkpoint to embed the city with (default: tiny, zero-shot)")
    parser.add_argument("--noise", type=float, default=0.1, help="norm of the noise added to replicated tiles")
    parser.add_argument("--queries", type=int, default=200, help="queries for recall@10")
    parser.add_argument("--repeats", type=int, default=30, help="single queries timed; the median is shown")
    parser.add_argument("--threads", type=int, default=None, help="torch and faiss CPU threads")
    parser.add_argument(
        "--hnsw-max",
        type=int,
        default=100_000,
        help="largest gallery given an HNSW index (its build takes minutes beyond)",
    )
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.encoders, args.places, args.queries, args.repeats = [2000, 10_000], ["tiny"], 200, 50, 5
    try:
        import faiss

        if args.threads:
            faiss.omp_set_num_threads(args.threads)
    except ImportError:
        args.indexes = [name for name in args.indexes if not name.startswith("faiss")]
        print("faiss is not installed (pip install 'cvgtext[faiss]'): measuring exact search only")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")

    if args.encoders:
        latency = text_encoding_latency(args.encoders, args.repeats)
        print_table(
            "(a) text encoding of one description",
            ["backbone", "context", "latency"],
            [[name, str(ENCODERS[name][1]), f"{1000 * s:.1f} ms"] for name, s in latency.items()],
        )

    with tempfile.TemporaryDirectory() as scratch:
        data_dir = Path(args.data_dir) if args.data_dir else Path(scratch) / "data"
        base, city_queries = city_embeddings(data_dir, args.places, args.ckpt)
    city_queries = city_queries[: args.queries]
    dim = base.shape[1]
    print(
        f"\nsynthetic city: {base.shape[0]} tiles, {len(city_queries)} test captions, dim {dim}; "
        f"replicated with noise {args.noise}"
    )
    for kind in ("synthetic city", "random unit vectors"):
        rows = []
        for size in args.sizes:
            if kind == "synthetic city":
                gallery, queries = replicate(base, size, args.noise, seed=size), city_queries
            else:
                gallery, queries = random_unit(size, dim, seed=size), random_unit(args.queries, dim, seed=-1 % 2**31)
            indexes = [i for i in args.indexes if i != "faiss_hnsw" or size <= args.hnsw_max]
            for row in measure(gallery, queries, indexes, args.repeats):
                rows.append(
                    [
                        f"{size:,}",
                        row["index"],
                        f"{row['build_s']:.2f} s",
                        f"{1000 * row['latency_s']:.2f} ms",
                        f"{row['bytes'] / 2**20:.0f} MiB",
                        f"{row['recall']:.3f}",
                    ]
                )
            del gallery
        print_table(
            f"(b) {kind}, dim {dim}: one query's search, recall@10 against exact",
            ["tiles", "index", "build", "search latency", "memory", "recall@10"],
            rows,
        )


if __name__ == "__main__":
    main()
