"""Shared fixtures and helpers: a tiny city written in the CVG-Text release layout, composed
configs, the real CLI in a subprocess, tiny checkpoints and the query tool run in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# Caches (gallery indexes) of the runs tests start go to a folder of their own, not the repository.
os.environ.setdefault("CVGTEXT_CACHE_DIR", tempfile.mkdtemp(prefix="cvgtext-test-cache-"))

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
CITY = "Testville"
FOLDERS = ("reference/{version}-satellite", "reference/{version}-OSM", "query/{version}-ground")


def panorama_name(i: int) -> str:
    return f"-27.{4700 + i:04d}1234,153.{200 + 3 * i:03d}45678_2022-08_pano{i:03d}abcdefghijklmn_d62_z3.jpg"


def photo_name(i: int) -> str:
    return f"-27.{4800 + i:04d}5678,153.{400 + 3 * i:03d}12345_photo{i:03d}.jpg"


def write_release(root: Path, city: str = CITY, panoramas: int = 24, photos: int = 12, test_every: int = 4) -> Path:
    """Write a small city in the release layout: panorama and ``-photos`` versions, train and test."""
    from PIL import Image

    for version, names in ((city, [panorama_name(i) for i in range(panoramas)]),
                           (f"{city}-photos", [photo_name(i) for i in range(photos)])):
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


@pytest.fixture(scope="session")
def test_backbone() -> str:
    """``cvg-test``: a CLIP of one layer per tower at width 32 and 32 px, for runs that only
    need the training machinery to work (``backbone.model_name=cvg-test``)."""
    import open_clip

    open_clip.add_model_config(Path(__file__).parent / "model_configs")
    return "cvg-test"


@pytest.fixture
def release_dir(tmp_path: Path) -> Path:
    """A tiny city, ``Testville``, in the release layout under ``tmp_path/data``."""
    return write_release(tmp_path / "data")


@pytest.fixture
def read_only_dir(tmp_path: Path):
    """An empty folder that this process cannot write to.

    Root ignores permission bits, so as root it is a read-only tmpfs mounted for the test;
    otherwise a folder of mode 0o555. Skips when neither stops a write.
    """
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() == 0:
        mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                               capture_output=True, text=True)
        if mount.returncode != 0:
            pytest.skip(f"running as root and cannot mount a read-only tmpfs: {mount.stderr.strip()}")
        yield folder
        subprocess.run(["umount", str(folder)], check=True)
        return
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("a folder of mode 0o555 is still writable here")
        yield folder
    finally:
        folder.chmod(0o755)


def two_layer_config(folder: Path, model_name: str) -> str:
    """Register ``model_name`` with two layers per tower and otherwise its own shapes (real
    widths, heads, patch grid and context, for checks where depth adds nothing)."""
    import open_clip

    config = open_clip.get_model_config(model_name)
    config["vision_cfg"]["layers"] = config["text_cfg"]["layers"] = 2
    name = f"{model_name}-2layers"
    path = folder / f"{name}.json"
    path.write_text(json.dumps(config))
    open_clip.add_model_config(path)
    return name


def compose_config(config_name: str, overrides: list[str], tmp_path: Path):
    """Compose a config of ``conf/`` as the CLI would, with outputs under ``tmp_path``."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose(
            config_name,
            overrides=[f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path}/run", *overrides],
        )


# The real CLI in a subprocess: for what only a process boundary shows (exit codes, stderr,
# Hydra's run folders, DDP launches, kills). Such tests are marked slow.

def run_cli(
    script: str, *overrides: str, cwd: Path = ROOT, env: dict | None = None, preexec_fn: Callable | None = None
) -> subprocess.CompletedProcess:
    """Run ``script`` (``train.py``, ``eval.py``, ``locate.py``) with Hydra ``overrides``, offline."""
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", **(env or {})}
    environment.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, str(ROOT / script), *overrides],
        cwd=cwd, env=environment, capture_output=True, text=True, timeout=600, preexec_fn=preexec_fn,
    )


def tiny_overrides(data_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    """A short ``train.py`` run on the tiny city in ``data_dir``, written to ``run_dir``."""
    return [
        "city=Brisbane", f"city.name={CITY}", f"paths.data_dir={data_dir}", f"paths.log_dir={run_dir.parent}",
        f"hydra.run.dir={run_dir}", "trainer=cpu", "debug=fast", "logger=csv", "data.val_fraction=0.3",
        "data.batch_size=8", *extra,
    ]


def eval_overrides(data_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    """An ``eval.py`` run on the tiny city in ``data_dir``, written to ``run_dir``."""
    return [
        "city=Brisbane", f"city.name={CITY}", f"paths.data_dir={data_dir}", f"paths.log_dir={run_dir.parent}",
        f"hydra.run.dir={run_dir}", "trainer=cpu", "data.val_fraction=0.3", "data.num_workers=0", *extra,
    ]


DDP = ("strategy=ddp", "trainer.devices=2", "trainer.accelerator=cpu")


def ddp_overrides(data_dir: Path, log_dir: Path, *extra: str) -> list[str]:
    """A short ``train.py`` run on two CPU processes (gloo)."""
    # No hydra.run.dir: the dated default must be the one folder both ranks write to.
    return [
        "city=Brisbane", f"city.name={CITY}", f"paths.data_dir={data_dir}", f"paths.log_dir={log_dir}",
        "trainer=cpu", "debug=fast", "logger=csv", "data.val_fraction=0.3", "data.batch_size=8", *DDP, *extra,
    ]


def logged_metrics(run_dir: Path) -> dict[str, float]:
    """The last value of every metric of a run's CSV log."""
    import csv

    (metrics_file,) = run_dir.glob("csv/*/metrics.csv")
    values: dict[str, float] = {}
    with open(metrics_file) as handle:
        for row in csv.DictReader(handle):
            values.update({key: float(value) for key, value in row.items() if value not in ("", None)})
    return values


# Paths of the tiny city.

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
        data_dir=release_dir, city=CITY, versions=versions, val_fraction=val_fraction,
        preprocess=to_tensor, tokenizer=tokenize, **kwargs,
    )


# The query tool (locate.py) and eval.py in-process, on checkpoints of a random tiny model.

def tiny_checkpoint(path: Path, seed: int) -> Path:
    """A checkpoint of this project's layout holding a randomly initialised tiny model."""
    import torch

    from cvgtext.model.encoder import build_encoder

    torch.manual_seed(seed)
    model = build_encoder("cvg-tiny").model
    backbone = {"name": "tiny", "model_name": "cvg-tiny", "context_length": 77, "context_resize": "interpolate",
                "image_size": None}
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"backbone": backbone}}, path)
    return path


def locate_overrides(data_dir: Path, *extra: str) -> list[str]:
    """``locate.py`` (or ``eval.py``) on the tiny city in ``data_dir``, on the CPU."""
    return ["city=Brisbane", f"city.name={CITY}", f"paths.data_dir={data_dir}", "trainer=cpu",
            "data.val_fraction=0.3", "data.num_workers=0", *extra]


def repaint_tiles(data_dir: Path) -> None:
    """Give every satellite tile its own noise: the fixture's panorama and photo tiles share
    colours, and identical tiles tie, which either ranking may order either way."""
    import torch
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    for path in sorted((data_dir / "reference").glob("*-satellite/*.jpg")):
        pixels = torch.randint(0, 256, (32, 32, 3), generator=generator, dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(path, format="PNG")


def run_locate(tmp_path: Path, data_dir: Path, *extra: str, stdin: str | None = None):
    """``locate(cfg)`` in this process, its cache and outputs under ``tmp_path``."""
    import io

    from cvgtext.commands.locate import locate

    cfg = compose_config("locate", [f"paths.cache_dir={tmp_path}/cache", *locate_overrides(data_dir, *extra)], tmp_path)
    return locate(cfg, stdin=io.StringIO(stdin) if stdin is not None else None)


# Text a person might paste into the web page: markup that must be shown, never run.
HTML_TEXT = '<script>alert("x")</script><img src=x onerror=alert(1)> a <b>red</b> roof'


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class WritesMarker:
    """A pickle payload that creates the file ``marker`` when it is unpickled: a checkpoint
    holding one is refused by a safe reader, and its code never runs."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


# A split small enough to rank by hand: tiles A, B (30 m north of A) and C (1 km north of B),
# four captions, their embeddings chosen so that each query's ranking is known.
SMALL_COLOURS = {"A": (200, 30, 30), "B": (30, 200, 30), "C": (30, 30, 200)}
SMALL_LAT = {tile: round(-27.47 + km / 111.19493, 8) for tile, km in (("A", 0), ("B", 0.03), ("C", 1.03))}
SMALL_LON = 153.02
SMALL_TILES = ("A", "B", "C", "A")  # the tile of each dataset position


@pytest.fixture
def small_split(tmp_path):
    """``(embedded, dataset)``: dataset positions 0 A, 1 B, 2 C (a photo), 3 A again (a second
    caption of A); the embedded rows come in the order 2, 0, 3, 1.

    Text -> ranking over the whole gallery (scores up to a common factor): C's caption -> C 1.0,
    B 0.2, A 0.1 (correct); A's first -> A 1.0, B 0.3, C 0.2 (correct); A's second -> B 1.0, A 0.2,
    C 0.1 (true rank 2, 30 m off); B's -> C 1.0, B 0.5, A 0.1 (true rank 2, 1 km off). Among each place's 2 nearest tiles, B's
    caption has only B and A to choose from and is right.
    """
    import torch
    from PIL import Image

    from cvgtext.data.annotations import Pair
    from cvgtext.data.dataset import PairDataset
    from cvgtext.retrieval.split import EmbeddedSplit

    folder = tmp_path / "tiles"
    folder.mkdir()
    pairs = []
    for tile, caption in zip(SMALL_TILES, ("a red roof", "a green lawn", "a blue pool", "red tiles")):
        lat = SMALL_LAT[tile]
        name = (f"{lat:.8f},{SMALL_LON}_photo{tile}.jpg" if tile == "C"
                else f"{lat:.8f},{SMALL_LON}_2022-08_pano{tile}_d62_z3.jpg")
        path = folder / name
        if not path.exists():
            Image.new("RGB", (32, 32), SMALL_COLOURS[tile]).save(path, format="PNG")
        pairs.append(Pair(name, caption, path, lat, SMALL_LON, tile != "C"))
    dataset = PairDataset(pairs, preprocess=None, tokenizer=None, split="test", images=False)

    unit = torch.eye(3)  # the tiles A, B, C
    tiles = {"A": unit[0], "B": unit[1], "C": unit[2]}
    texts = {0: torch.tensor([1.0, 0.3, 0.2]), 1: torch.tensor([0.1, 0.5, 1.0]), 2: torch.tensor([0.1, 0.2, 1.0]),
             3: torch.tensor([0.2, 1.0, 0.1])}
    order = [2, 0, 3, 1]
    image = torch.stack([tiles[SMALL_TILES[i]] for i in order])
    text = torch.nn.functional.normalize(torch.stack([texts[i] for i in order]), dim=1)
    return EmbeddedSplit(image=image, text=text, index=torch.tensor(order)), dataset


def city_names(seed: int, tiles: int, duplicates: int = 0, strangers: int = 0,
               new_york: float = 0.0) -> tuple[list[str], list[str]]:
    """Query and gallery file names of a made-up city for the protocol tests: places around
    Brisbane (negative latitude) and a ``new_york`` share around New York (negative longitude),
    mixed views; the gallery repeats ``duplicates`` names and the last ``strangers`` queries have
    no tile."""
    import random

    from reference_protocol import synthetic_names

    rng = random.Random(seed)
    abroad = int(tiles * new_york)
    gallery = synthetic_names(rng, tiles - abroad) + synthetic_names(rng, abroad, center=(40.7529, -73.9796))
    gallery += rng.sample(gallery, duplicates)
    rng.shuffle(gallery)
    queries = rng.sample(sorted(set(gallery)), len(set(gallery)) // 2) + synthetic_names(rng, strangers)
    return queries, gallery
