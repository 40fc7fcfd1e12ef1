"""The web page's answer time, in-process (no browser): what a person waits for after asking.

Three tables, medians after one warm-up, on the CPU with the threads torch is given:

1. ``page``: the synthetic city (2,000 places, its whole gallery) with the tiny backbone: the
   ranking alone (text encoding, search, confidence and area: ``app.answer``), the page's first
   step (that, the tiles read and the city's map marked: ``Page.ask``), and its second step (the
   relevance overlays of the top-k tiles and the neighbourhood map: ``Page.explain``).
2. ``text``: one description through the text towers of ViT-B/16 (77 positions) and
   ViT-L/14@336 (300 positions, EPE), random weights: the full context (open_clip's
   ``encode_text``) against the positions the description uses (``model/text_context.py``), for
   a typed description (27 tokens) and a long caption of the city.
3. ``large``: the page's first step with ViT-B/16 (random weights) on a gallery of 10,000 tiles
   (the city's 2,000, each five times at other places, random embeddings: the time does not
   depend on their values), for typed-length descriptions; the second step beside it.

    python benchmarks/bench_app.py                       # all three
    python benchmarks/bench_app.py --parts text --repeats 30
    python benchmarks/bench_app.py --parts page --ckpt CKPT --queries 20 --top-k 10
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

TYPED = "a red-brick church on a roundabout, a small park to the north-east and a bakery on the corner"  # 27 tokens
ENCODERS = {"vit_b16": ("ViT-B-16", 77), "vit_l14_336": ("ViT-L-14-336", 300)}


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


def test_captions(data_dir: str, city: str = "Synthetic") -> tuple[list[str], list[str]]:
    """The city's test captions: panorama texts (long) and single-view texts (typed length); the
    synthetic city is generated first where ``data_dir`` has none, with the page's own settings."""
    from omegaconf import OmegaConf

    from cvgtext.data.synthetic.city import ensure_city

    synthetic = compose([f"paths.data_dir={data_dir}"]).city.synthetic
    ensure_city(data_dir, name=city, **OmegaConf.to_container(synthetic))
    root = Path(data_dir) / "annotation"
    long = list(json.loads((root / city / "test.json").read_text()).values())
    short = list(json.loads((root / f"{city}-photos" / "test.json").read_text()).values())
    return long, short


def settings(args, scratch: str, *extra: str) -> list[str]:
    overrides = [
        f"paths.data_dir={args.data_dir}",
        f"paths.cache_dir={scratch}",
        f"paths.root_dir={scratch}",
        f"paths.output_dir={scratch}/run",
        f"top_k={args.top_k}",
        *extra,
    ]
    return overrides + ([f"ckpt_path={args.ckpt}"] if args.ckpt else [])


def page_times(args) -> list[list[str]]:
    from cvgtext.commands.app import Page, answer
    from cvgtext.commands.locator import Locator

    long, short = test_captions(args.data_dir)
    captions = (long + short)[: args.queries]
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        locator = Locator(compose(settings(args, scratch)))
        loaded = time.perf_counter() - started
        page = Page(locator)
        page.warm_up()
        places = [page.ask(caption)[-1] for caption in captions]
        return [
            [
                "tiny",
                f"{len(locator.gallery.names):,}",
                "ranking, confidence and area",
                f"{median_ms(lambda c: answer(locator, c), captions):.0f}",
            ],
            [
                "tiny",
                f"{len(locator.gallery.names):,}",
                "page, first step (+ tiles, city map)",
                f"{median_ms(page.ask, captions):.0f}",
            ],
            [
                "tiny",
                f"{len(locator.gallery.names):,}",
                f"page, second step (overlays of {args.top_k} tiles, neighbourhood map)",
                f"{median_ms(page.explain, places):.0f}",
            ],
            [
                "tiny",
                f"{len(locator.gallery.names):,}",
                "model loaded, gallery index built, calibration fitted",
                f"{1000 * loaded:.0f}",
            ],
        ]


def encoding_times(model, tokens, repeats: int) -> tuple[float, float, float]:
    """Milliseconds of the full context and of the used positions, and their largest difference."""
    import torch

    from cvgtext.model.text_context import encode_text

    with torch.inference_mode():
        full = median_ms(lambda _: model.encode_text(tokens, normalize=True), range(repeats))
        trimmed = median_ms(lambda _: encode_text(model, tokens, normalize=True), range(repeats))
        difference = model.encode_text(tokens, normalize=True) - encode_text(model, tokens, normalize=True)
    return full, trimmed, float(difference.abs().max())


def text_times(args) -> list[list[str]]:
    from cvgtext.model.encoder import build_encoder

    long, _ = test_captions(args.data_dir)
    rows = []
    for name, (model_name, context) in ENCODERS.items():
        encoder = build_encoder(model_name, context_length=context)
        model = encoder.model.eval()
        words = getattr(encoder.tokenizer, "tokenizer", encoder.tokenizer)  # open_clip's BPE

        def count(text: str, words=words) -> int:
            return len(words.encode(text)) + 2  # with the start and end tokens

        lengths = [count(text) for text in long]
        caption = long[sorted(range(len(long)), key=lambda i: lengths[i])[len(long) // 2]]  # the median length
        for label, text in (
            (f"typed ({count(TYPED)} tokens)", TYPED),
            ("caption", caption),
        ):
            tokens = encoder.tokenizer([text])
            used = int(tokens.argmax(-1)) + 1
            full, trimmed, difference = encoding_times(model, tokens, args.repeats)
            rows.append(
                [
                    name,
                    str(context),
                    f"{label}, {used} positions used",
                    f"{full:.1f}",
                    f"{trimmed:.1f}",
                    f"{full / trimmed:.2f}x",
                    f"{difference:.1e}",
                ]
            )
        del encoder, model
    return rows


def enlarge(locator, tiles: int) -> None:
    """Copies of the gallery at other places, with random embeddings, up to ``tiles`` entries."""
    import torch

    from cvgtext.search.backends import SearchIndex
    from cvgtext.search.gallery import GalleryIndex

    gallery, count = locator.gallery, len(locator.gallery.names)
    copies = -(-tiles // count)
    names = [name if k == 0 else f"{name}#{k}" for k in range(copies) for name in gallery.names][:tiles]
    lat = torch.cat([gallery.lat + 0.05 * k for k in range(copies)])[:tiles]
    lon = torch.cat([gallery.lon for _ in range(copies)])[:tiles]
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.nn.functional.normalize(
        torch.randn(tiles, gallery.embeddings.shape[1], generator=generator), dim=1
    )
    locator.gallery = GalleryIndex(names, lat, lon, embeddings, gallery.key)
    locator.paths = {name: locator.paths[name.split("#")[0]] for name in names}
    locator.rows = {name: row for row, name in enumerate(names)}
    locator.search = SearchIndex("exact", embeddings)


def large_times(args) -> list[list[str]]:
    import torch
    from hydra.utils import instantiate

    from cvgtext.commands.app import Page
    from cvgtext.commands.locator import Locator
    from cvgtext.model.build import build_module
    from cvgtext.search.gallery import config_index_key, gallery_tiles, store_index

    _, short = test_captions(args.data_dir)
    captions = short[: args.queries]
    with tempfile.TemporaryDirectory() as scratch:
        cfg = compose(settings(args, scratch, "backbone=vit_b16", "backbone.pretrained=null", "explain.overlays=false"))
        # The gallery index stored beforehand with random embeddings: the 2,000 tiles are not embedded.
        module, backbone = build_module(cfg)
        datamodule = instantiate(cfg.data, preprocess=module.preprocess, tokenizer=module.tokenizer)
        tiles = gallery_tiles(datamodule, "all")
        key = config_index_key(cfg, backbone, module.preprocess, "all", tiles)
        generator = torch.Generator().manual_seed(1)
        store_index(
            scratch, key, tiles, torch.nn.functional.normalize(torch.randn(len(tiles), 512, generator=generator), dim=1)
        )
        del module
        locator = Locator(cfg)
        enlarge(locator, args.tiles)
        page = Page(locator, overlays=False)
        page.warm_up()
        places = [page.ask(caption)[-1] for caption in captions]
        count = f"{len(locator.gallery.names):,}"
        return [
            [
                "vit_b16",
                count,
                "text encoding of the description",
                f"{median_ms(lambda c: locator.embed([c]), captions):.0f}",
            ],
            ["vit_b16", count, "page, first step (click to table, in-process)", f"{median_ms(page.ask, captions):.0f}"],
            [
                "vit_b16",
                count,
                "page, second step without overlays (neighbourhood map)",
                f"{median_ms(page.explain, places):.0f}",
            ],
        ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(ROOT / "data"), help="where the synthetic city is (or is generated)")
    parser.add_argument("--ckpt", default=None, help="a checkpoint for the page table; default: random weights")
    parser.add_argument("--parts", default="page,text,large")
    parser.add_argument("--queries", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=20, help="text encodings timed per row")
    parser.add_argument("--tiles", type=int, default=10_000)
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="3 descriptions, 3 repeats")
    args = parser.parse_args()
    if args.quick:
        args.queries, args.repeats = min(args.queries, 3), min(args.repeats, 3)

    import torch

    parts = set(args.parts.split(","))
    threads = torch.get_num_threads()
    if "page" in parts:
        print_table(
            f"The page's steps ({threads} threads), median of {args.queries} captions",
            ["backbone", "tiles", "step", "ms"],
            page_times(args),
        )
    if "text" in parts:
        print_table(
            f"One description through a text tower ({threads} threads), median of {args.repeats}",
            [
                "backbone",
                "context",
                "description",
                "full context ms",
                "used positions ms",
                "speed-up",
                "largest difference",
            ],
            text_times(args),
        )
    if "large" in parts:
        print_table(
            f"The page with ViT-B/16 ({threads} threads), median of {args.queries} typed-length descriptions",
            ["backbone", "tiles", "step", "ms"],
            large_times(args),
        )


if __name__ == "__main__":
    main()
