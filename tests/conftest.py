"""Shared fixtures: a tiny city written in the CVG-Text release layout, and composed configs."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

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
