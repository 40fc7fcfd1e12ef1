"""A town built with build_city.py from fake servers, its statistics, and the R@1 a tiny model
trained on it reaches; prints markdown tables.

What is real and what is not: the street views are the synthetic city's (``generate_city``);
the satellite and map tiles come from a fake XYZ server on 127.0.0.1 that pastes each place's
own synthetic tile at its coordinates, so that build_city.py's stitching and cropping must find
it again; the captions come from a fake "oracle" chat model (``tests/helpers/town_chat.py``)
that answers each producer request with the synthetic city's own caption of the street view it
is shown (looked up by the image) and whose inspector accepts everything. So the statistics
describe the synthetic captions passed through the pipeline, not a multimodal model's, and the
R@1 is that of a tiny model trained on a town that went through every step of the build (OCR
included; the synthetic street views have no text), beside the same model trained on the
synthetic city it came from (its own random split: test places among the training ones, where
the town's block split keeps them apart).

    python benchmarks/bench_town.py                        # 600 places, 12 epochs (about 10 minutes on 2 cores)
    python benchmarks/bench_town.py --places 300 --epochs 4 --out /tmp/town-bench
    python benchmarks/bench_town.py --quick                # 120 places, 2 epochs
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from tables import print_table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from cvgtext.data.names import is_panorama, parse_coordinates  # noqa: E402
from cvgtext.data.synthetic.city import generate_city  # noqa: E402
from helpers.tile_server import TileServer, world_pixel  # noqa: E402
from helpers.town_chat import TownChatServer  # noqa: E402

TOWN = "SynthTown"
# The build's tile layers: (zoom, source pixels across a place's crop), as in conf/build_city.yaml
LAYERS = {"sat": (20, 512), "osm": (19, 256)}


def synthetic_places(city: Path) -> list[dict]:
    """Each place of the synthetic city: its name, street view, tiles and caption."""
    places = []
    for version in ("Synthetic", "Synthetic-photos"):
        for split in ("train", "test"):
            captions = json.loads((city / "annotation" / version / f"{split}.json").read_text())
            for name, caption in captions.items():
                lat, lon = parse_coordinates(name)
                places.append(
                    {
                        "name": name,
                        "lat": lat,
                        "lon": lon,
                        "caption": caption,
                        "view": "panorama" if is_panorama(name) else "single",
                        "ground": city / "query" / f"{version}-ground" / name,
                        "sat": city / "reference" / f"{version}-satellite" / name,
                        "osm": city / "reference" / f"{version}-OSM" / name,
                    }
                )
    return places


def pasted_tiles(places: list[dict], tile_px: int = 256):
    """Tiles in which each place's own synthetic tile covers exactly the crop build_city takes."""
    footprints = {}
    for layer, (zoom, _) in LAYERS.items():
        footprints[layer] = [(*world_pixel(p["lat"], p["lon"], zoom, tile_px), p[layer]) for p in places]
    cache: dict[Path, Image.Image] = {}

    def draw(layer: str, z: int, x: int, y: int) -> Image.Image:
        zoom, crop = LAYERS[layer]
        tile = Image.new("RGB", (tile_px, tile_px), (128, 128, 128))
        if z != zoom:
            return tile
        left, top = x * tile_px, y * tile_px
        for px, py, path in footprints[layer]:
            if left - crop / 2 < px < left + tile_px + crop / 2 and top - crop / 2 < py < top + tile_px + crop / 2:
                if path not in cache:
                    with Image.open(path) as image:
                        cache[path] = image.convert("RGB").resize((crop, crop), Image.Resampling.LANCZOS)
                tile.paste(cache[path], (round(px - crop / 2 - left), round(py - crop / 2 - top)))
        return tile

    return draw


def oracle(places: list[dict]):
    """Image -> the synthetic caption of the street view whose thumbnail is nearest to it."""

    def thumbnail(image: Image.Image) -> np.ndarray:
        return np.asarray(image.convert("RGB").resize((64, 32), Image.Resampling.BILINEAR), dtype=np.float32)

    thumbnails = np.stack([thumbnail(Image.open(p["ground"])) for p in places])
    captions = [p["caption"] for p in places]

    def caption(image: Image.Image) -> str:
        return captions[int(((thumbnails - thumbnail(image)) ** 2).sum(axis=(1, 2, 3)).argmin())]

    return caption


def street_view_folder(places: list[dict], folder: Path) -> Path:
    """The street views in one folder, with a CSV that says which are single-view photos."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "street_views.csv", "w", newline="") as stream:
        table = csv.writer(stream)  # the names hold commas: quoted
        table.writerow(["file", "lat", "lon", "view"])
        for place in places:
            link = folder / place["name"]
            if not link.exists():
                link.symlink_to(place["ground"])
            table.writerow([place["name"], place["lat"], place["lon"], place["view"]])
    return folder


def run(command: list[str], log: Path) -> float:
    start = time.perf_counter()
    with open(log, "w") as stream:
        result = subprocess.run(
            command, cwd=ROOT, stdout=stream, stderr=subprocess.STDOUT, env={**os.environ, "WANDB_MODE": "offline"}
        )
    if result.returncode:
        sys.exit(f"{' '.join(command[:2])} failed; see {log}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--places", type=int, default=600)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument(
        "--out", type=Path, default=None, help="folder for the city, the town and the run (default: a temporary one)"
    )
    parser.add_argument("--quick", action="store_true", help="120 places, 2 epochs (make bench ARGS=--quick)")
    args = parser.parse_args()
    if args.quick:
        args.places, args.epochs = 120, 2
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-town-"))
    city, data_dir = out / "synthetic", out / "data"
    if not (city / "annotation" / "Synthetic" / ".synthetic.json").exists():
        generate_city(city, places=args.places, seed=0, tile_size=256)
    places = synthetic_places(city)
    folder = street_view_folder(places, out / "views")
    with TileServer(pasted_tiles(places)) as tiles, TownChatServer(oracle=oracle(places)) as chat:
        build_s = run(
            [
                sys.executable,
                "build_city.py",
                f"city.name={TOWN}",
                f"paths.data_dir={data_dir}",
                f"hydra.run.dir={out / 'build'}",
                f"street_views.folder={folder}",
                f"street_views.csv={folder / 'street_views.csv'}",
                f"sat.url='{tiles.url('sat')}'",
                f"osm.url='{tiles.url('osm')}'",
                f"captioner.url={chat.url}",
                "captioner.model=oracle",
                "http.min_interval_s=0",
                "ocr.det_max_side=512",
                "test_fraction=0.15",
            ],
            out / "build.log",
        )
    manifest = json.loads((data_dir / "annotation" / TOWN / "manifest.json").read_text())
    counts, split = manifest["counts"], manifest["split"]
    truth = {(round(p["lat"], 6), round(p["lon"], 6)): p["caption"] for p in places}
    built = {}
    for version in (TOWN, f"{TOWN}-photos"):
        for name in ("train", "test"):
            built.update(json.loads((data_dir / "annotation" / version / f"{name}.json").read_text()))
    matched = sum(truth.get(tuple(round(v, 6) for v in parse_coordinates(n))) == c for n, c in built.items())
    print_table(
        f"build_city.py: {counts['places']} street views of the synthetic city, fake tile server and oracle model",
        [
            "places",
            "built",
            "left out",
            "train",
            "test",
            "left out by the gap",
            "closest test-train (m)",
            "oracle captions matched",
            "build s",
        ],
        [
            [
                str(counts["places"]),
                str(counts["built"]),
                json.dumps(counts["left_out"]),
                str(split["counts"].get("train", 0)),
                str(split["counts"].get("test", 0)),
                str(split["counts"].get("gap", 0)),
                str(split["closest_test_to_train_m"]),
                f"{matched}/{len(built)}",
                f"{build_s:.0f}",
            ]
        ],
    )
    print("\nStatistics (annotation/SynthTown/statistics.md):\n")
    print((data_dir / "annotation" / TOWN / "statistics.md").read_text().split("\n", 2)[2])
    cities = {
        "the town (block split)": ("city=town", f"city.name={TOWN}", f"paths.data_dir={data_dir}"),
        "the synthetic city itself (random split)": (
            "city=synthetic",
            f"city.synthetic.places={args.places}",
            "city.synthetic.tile_size=256",
            f"paths.data_dir={city}",
        ),
    }
    rows = []
    for label, settings in cities.items():
        root = data_dir if settings[0] == "city=town" else city
        versions = (TOWN, f"{TOWN}-photos") if settings[0] == "city=town" else ("Synthetic", "Synthetic-photos")
        tests = sum(len(json.loads((root / "annotation" / v / "test.json").read_text())) for v in versions)
        chance = 100 / min(100, tests)
        for img in ("sat", "osm"):
            run_dir = out / f"train-{settings[0].split('=')[1]}-{img}"
            command = [sys.executable, "train.py", *settings, f"img={img}", "trainer=cpu", "logger=csv"]
            command += [f"trainer.max_epochs={args.epochs}", f"hydra.run.dir={run_dir}"]
            train_s = run(command, out / f"{run_dir.name}.log")
            metrics = json.loads((run_dir / "metrics.json").read_text())["all"]  # the test split, both text versions
            rows.append([label, img, str(args.epochs), str(tests), f"{metrics['R@1']:.1f}", f"{chance:.1f}"])
            rows[-1] += [f"{metrics['R@5']:.1f}", f"{min(100, 5 * chance):.1f}", f"{train_s:.0f}"]
    print_table(
        "A tiny model (backbone=tiny, from scratch) trained on each; its test split, 100-nearest protocol",
        [
            "trained on",
            "gallery",
            "epochs",
            "test queries",
            "R@1 %",
            "chance R@1 %",
            "R@5 %",
            "chance R@5 %",
            "train s",
        ],
        rows,
    )
    print(f"\n(city, town and runs in {out}; chance: 1 / min(100, test tiles))")


if __name__ == "__main__":
    main()
