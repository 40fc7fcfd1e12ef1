"""Reading a city from shards against reading its folders; prints markdown tables.

The synthetic city (2,000 places, the default 256 px PNG tiles), packed with ``pack.py``'s
code into shards of 1,000 samples; the datamodule's own training loader (the tiny backbone's
preprocessing, batch 32, shuffled) iterated for one epoch from folders, from the local shards,
and from the same shards served over HTTP on 127.0.0.1, with 0 and 2 loader workers. Also the
packing time and the bytes per sample, from which BENCHMARKS.md estimates a 1M-image city.

    python benchmarks/bench_shards.py
    python benchmarks/bench_shards.py --quick        # 400 places
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tables import print_table  # noqa: E402


def compose(overrides: list[str], config: str = "train"):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        return hydra_compose(config, overrides=overrides)


def epoch_seconds(cfg, module) -> tuple[float, int]:
    """Wall time of one epoch of the training loader, and the samples it gave."""
    from hydra.utils import instantiate

    datamodule = instantiate(cfg.data, preprocess=module.preprocess, tokenizer=module.tokenizer)
    datamodule.prepare_data()
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    if hasattr(loader, "epoch_now"):
        loader.epoch_now = None
    start = time.perf_counter()
    samples = sum(len(batch["index"]) for batch in loader)
    return time.perf_counter() - start, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None, help="default: a fresh folder (the city is generated there)")
    parser.add_argument("--places", type=int, default=2000)
    parser.add_argument("--tile-size", type=int, default=256, help="512: tiles as large as the release's")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    places = 400 if args.quick else args.places

    from hydra.utils import instantiate

    from cvgtext.commands.pack import pack

    with tempfile.TemporaryDirectory() as scratch:
        data_dir = Path(args.data_dir or f"{scratch}/data")
        city = [
            f"paths.data_dir={data_dir}",
            f"city.synthetic.places={places}",
            "data.cache=false",
            f"city.synthetic.tile_size={args.tile_size}",
            f"paths.root_dir={scratch}",
            "data.batch_size=32",
        ]
        shards = f"{scratch}/shards"
        cfg = compose([*city, f"data.shards={shards}"])
        module = instantiate(cfg.model, _recursive_=False)
        pack_cfg = compose([*city, f"out={shards}", "samples_per_shard=1000"], "pack")
        instantiate(pack_cfg.data).prepare_data()  # the city generated before the clock starts
        started = time.perf_counter()
        manifest = pack(pack_cfg)
        pack_seconds = time.perf_counter() - started
        samples = sum(entry["samples"] for entry in manifest["splits"].values())
        size = sum(shard["bytes"] for entry in manifest["splits"].values() for shard in entry["shards"])

        handler = functools.partial(SimpleHTTPRequestHandler, directory=shards)
        handler.log_message = lambda *a: None
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}"
        rows = []
        try:
            for workers in (0, 2):
                base = None
                for source, location in (("folders", shards), ("shards, local", shards), ("shards, http", url)):
                    form = "folders" if source == "folders" else "shards"
                    run = compose(
                        [*city, f"data.format={form}", f"data.shards={location}", f"data.num_workers={workers}"]
                    )
                    seconds, count = epoch_seconds(run, module)
                    rate = count / seconds
                    base = base or rate
                    rows.append(
                        [source, str(workers), f"{count}", f"{seconds:.2f}", f"{rate:.0f}", f"{rate / base:.2f}x"]
                    )
        finally:
            server.shutdown()
    print_table(
        f"One training epoch of the loader ({places} places, {args.tile_size} px tiles, tiny backbone at "
        "64 px, batch 32)",
        ["source", "workers", "samples", "s", "samples/s", "vs folders"],
        rows,
    )
    print_table(
        "Packing",
        ["samples", "bytes per sample", "shards", "pack s (annotations read, tiles copied, shards written)"],
        [
            [
                f"{samples}",
                f"{size / samples:,.0f}",
                f"{sum(len(e['shards']) for e in manifest['splits'].values())}",
                f"{pack_seconds:.1f}",
            ]
        ],
    )


if __name__ == "__main__":
    main()
