"""Fixtures shared by the tests: the test backbone, a tiny city in the release layout, a
read-only folder, a split small enough to rank by hand. What tests import lives in
``tests/helpers/``."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from helpers.city import SMALL_COLOURS, SMALL_LAT, SMALL_LON, SMALL_TILES, write_release

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# Caches (gallery indexes) of the runs tests start go to a folder of their own, not the repository.
os.environ.setdefault("CVGTEXT_CACHE_DIR", tempfile.mkdtemp(prefix="cvgtext-test-cache-"))


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
def online(monkeypatch):
    """huggingface_hub allowed to make requests, as if HF_HUB_OFFLINE were unset: for the fake hub
    on 127.0.0.1 (``helpers.fake_hub``), reached in this process through ``endpoint=``."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


@pytest.fixture
def read_only_dir(tmp_path: Path):
    """An empty folder that this process cannot write to.

    Root ignores permission bits, so as root it is a read-only tmpfs mounted for the test;
    otherwise a folder of mode 0o555. Skips when neither stops a write.
    """
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() == 0:
        mount = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], capture_output=True, text=True
        )
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


# The real CLI in a subprocess: for what only a process boundary shows (exit codes, stderr,
# Hydra's run folders, DDP launches, kills). Such tests are marked slow.


# Paths of the tiny city.


# The query tool (locate.py) and eval.py in-process, on checkpoints of a random tiny model.


@pytest.fixture
def small_split(tmp_path):
    """``(embedded, dataset)``: dataset positions 0 A, 1 B, 2 C (a photo), 3 A again (a second
    caption of A); the embedded rows come in the order 2, 0, 3, 1.

    Text -> ranking over the whole gallery (scores up to a common factor): C's caption -> C 1.0,
    B 0.2, A 0.1 (correct); A's first -> A 1.0, B 0.3, C 0.2 (correct); A's second -> B 1.0, A
    0.2, C 0.1 (true rank 2, 30 m off); B's -> C 1.0, B 0.5, A 0.1 (true rank 2, 1 km off).
    Among each place's 2 nearest tiles, B's caption has only B and A to choose from and is
    right.
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
        name = (
            f"{lat:.8f},{SMALL_LON}_photo{tile}.jpg"
            if tile == "C"
            else f"{lat:.8f},{SMALL_LON}_2022-08_pano{tile}_d62_z3.jpg"
        )
        path = folder / name
        if not path.exists():
            Image.new("RGB", (32, 32), SMALL_COLOURS[tile]).save(path, format="PNG")
        pairs.append(Pair(name, caption, path, lat, SMALL_LON, tile != "C"))
    dataset = PairDataset(pairs, preprocess=None, tokenizer=None, split="test", images=False)

    unit = torch.eye(3)  # the tiles A, B, C
    tiles = {"A": unit[0], "B": unit[1], "C": unit[2]}
    texts = {
        0: torch.tensor([1.0, 0.3, 0.2]),
        1: torch.tensor([0.1, 0.5, 1.0]),
        2: torch.tensor([0.1, 0.2, 1.0]),
        3: torch.tensor([0.2, 1.0, 0.1]),
    }
    order = [2, 0, 3, 1]
    image = torch.stack([tiles[SMALL_TILES[i]] for i in order])
    text = torch.nn.functional.normalize(torch.stack([texts[i] for i in order]), dim=1)
    return EmbeddedSplit(image=image, text=text, index=torch.tensor(order)), dataset
