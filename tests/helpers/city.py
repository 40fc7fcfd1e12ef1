"""Tiny cities in the CVG-Text release layout, and their paths, names and data modules."""

from __future__ import annotations

import json
from pathlib import Path

CITY = "Testville"


FOLDERS = ("reference/{version}-satellite", "reference/{version}-OSM", "query/{version}-ground")


def panorama_name(i: int) -> str:
    return f"-27.{4700 + i:04d}1234,153.{200 + 3 * i:03d}45678_2022-08_pano{i:03d}abcdefghijklmn_d62_z3.jpg"


def photo_name(i: int) -> str:
    return f"-27.{4800 + i:04d}5678,153.{400 + 3 * i:03d}12345_photo{i:03d}.jpg"


def write_release(root: Path, city: str = CITY, panoramas: int = 24, photos: int = 12, test_every: int = 4) -> Path:
    """Write a small city in the release layout: panorama and ``-photos`` versions, train and test."""
    from PIL import Image

    for version, names in (
        (city, [panorama_name(i) for i in range(panoramas)]),
        (f"{city}-photos", [photo_name(i) for i in range(photos)]),
    ):
        splits = {"train": {}, "test": {}}
        for i, name in enumerate(names):
            split = "test" if i % test_every == 0 else "train"
            splits[split][name] = f"A street with {i % 5} trees and a {['red', 'blue', 'green'][i % 3]} roof."
        annotation_dir = root / "annotation" / version
        annotation_dir.mkdir(parents=True, exist_ok=True)
        for split, content in splits.items():
            (annotation_dir / f"{split}.json").write_text(json.dumps(content))
        for folder in FOLDERS:
            image_dir = root / folder.format(version=version)
            image_dir.mkdir(parents=True, exist_ok=True)
            for i, name in enumerate(names):
                size = (64, 32) if folder.startswith("query") else (32, 32)
                Image.new("RGB", size, ((40 * i) % 256, (70 * i) % 256, 128)).save(image_dir / name)
    return root


def annotation_path(root: Path, version: str = CITY, split: str = "train") -> Path:
    return root / "annotation" / version / f"{split}.json"


def image_path(root: Path, name: str, version: str = CITY) -> Path:
    """The satellite tile ``name`` of ``version``."""
    return root / "reference" / f"{version}-satellite" / name


def training_names(root: Path, val_fraction: float = 0.3) -> list[str]:
    """The panorama names of the training split (not held out for validation), in file order."""
    from cvgtext.data.annotations import in_validation

    names = json.loads(annotation_path(root).read_text())
    return [name for name in names if not in_validation(name, val_fraction)]


def tiny_datamodule(release_dir: Path, versions=("{city}", "{city}-photos"), val_fraction: float = 0.3, **kwargs):
    """The data module of the tiny city with a stand-in preprocessing and tokenizer: an image
    is its first pixel's red value, a caption its length."""
    import torch

    from cvgtext.data.datamodule import CVGTextDataModule

    def to_tensor(image):
        return torch.zeros(3, 8, 8) + image.getpixel((0, 0))[0] / 255

    def tokenize(texts):
        return torch.tensor([[len(text), 0, 0] for text in texts])

    kwargs.setdefault("batch_size", 4)
    return CVGTextDataModule(
        data_dir=release_dir,
        city=CITY,
        versions=versions,
        val_fraction=val_fraction,
        preprocess=to_tensor,
        tokenizer=tokenize,
        **kwargs,
    )


def repaint_tiles(data_dir: Path) -> None:
    """Give every satellite tile its own noise: the fixture's panorama and photo tiles share
    colours, and identical tiles tie, which either ranking may order either way."""
    import torch
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    for path in sorted((data_dir / "reference").glob("*-satellite/*.jpg")):
        pixels = torch.randint(0, 256, (32, 32, 3), generator=generator, dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(path, format="PNG")


def city_names(
    seed: int, tiles: int, duplicates: int = 0, strangers: int = 0, new_york: float = 0.0
) -> tuple[list[str], list[str]]:
    """Query and gallery file names of a made-up city for the protocol tests: places around
    Brisbane (negative latitude) and a ``new_york`` share around New York (negative longitude),
    mixed views; the gallery repeats ``duplicates`` names and the last ``strangers`` queries have
    no tile."""
    import random

    from helpers.reference_protocol import synthetic_names

    rng = random.Random(seed)
    abroad = int(tiles * new_york)
    gallery = synthetic_names(rng, tiles - abroad) + synthetic_names(rng, abroad, center=(40.7529, -73.9796))
    gallery += rng.sample(gallery, duplicates)
    rng.shuffle(gallery)
    queries = rng.sample(sorted(set(gallery)), len(set(gallery)) // 2) + synthetic_names(rng, strangers)
    return queries, gallery


# A split small enough to rank by hand: tiles A, B (30 m north of A) and C (1 km north of B),
# four captions, their embeddings chosen so that each query's ranking is known.
SMALL_COLOURS = {"A": (200, 30, 30), "B": (30, 200, 30), "C": (30, 30, 200)}


SMALL_LAT = {tile: round(-27.47 + km / 111.19493, 8) for tile, km in (("A", 0), ("B", 0.03), ("C", 1.03))}


SMALL_LON = 153.02


SMALL_TILES = ("A", "B", "C", "A")  # the tile of each dataset position
