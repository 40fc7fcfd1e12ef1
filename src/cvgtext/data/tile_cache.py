"""Tiles decoded once: every image resized and cropped to the model's input, kept as uint8 on disk.

``data.cache=true`` decodes each image of the city once, applies the preprocessing up to its
``ToTensor`` (resize, crop: the geometric part) and stores the result as ``uint8`` in one
memory-mapped file under ``paths.cache_dir``; loading a batch then reads those bytes and applies
the rest (``ToTensor``'s scaling, the normalisation), which gives tensors bitwise equal to the
full preprocessing of the image file. The cache is described by the files (names, sizes,
modification times), the geometric transform and the input size (``utils/fingerprint.py``): a change
rebuilds it. It is written to a temporary file and renamed, its description last, so a killed
build leaves no cache that could be mistaken for a whole one. Loader workers open the file
themselves (a pickled cache carries its path, not its bytes).
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import socket
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

from cvgtext.data.dataset import load_image
from cvgtext.utils.atomic import atomic_write
from cvgtext.utils.errors import ConfigError, DataError
from cvgtext.utils.fingerprint import digest, files_signature, stable_repr

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the stored layout changes
FOLDER = "tiles"


def split_preprocess(
    preprocess: Callable,
) -> tuple[Callable[[Image.Image], Image.Image], Callable[[torch.Tensor], torch.Tensor]]:
    """The preprocessing before ``ToTensor`` (on PIL images) and after it (on ``[3, H, W]`` floats)."""
    steps = list(getattr(preprocess, "transforms", ()))
    at = next((i for i, step in enumerate(steps) if isinstance(step, T.ToTensor)), None)
    if at is None:
        raise ConfigError(
            "data.cache=true needs the backbone's preprocessing to be a torchvision Compose with a ToTensor step; "
            f"got {type(preprocess).__name__}: set data.cache=false"
        )
    return T.Compose(steps[:at]), T.Compose(steps[at + 1 :])


class TileCache:
    """The preprocessed images of ``paths``, read from a memory-mapped ``uint8`` file.

    :meth:`image` returns the model's input tensor of a path, or raises the DataError its file
    raised when it was decoded (an unreadable image is remembered, not stored).
    """

    def __init__(
        self,
        data_file: Path,
        paths: Sequence[str],
        shape: tuple[int, int, int],
        bad: dict[str, str],
        to_model: Callable[[torch.Tensor], torch.Tensor],
    ):
        self.data_file = Path(data_file)
        self.row = {path: row for row, path in enumerate(paths)}
        self.shape = tuple(shape)
        self.bad = dict(bad)
        self.to_model = to_model
        self._pixels: np.ndarray | None = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_pixels"] = None  # each process maps the file itself
        return state

    @property
    def pixels(self) -> np.ndarray:
        if self._pixels is None:
            self._pixels = np.memmap(self.data_file, dtype=np.uint8, mode="r", shape=(len(self.row), *self.shape))
        return self._pixels

    def image(self, path: str | Path) -> torch.Tensor:
        path = str(path)
        if path in self.bad:
            raise DataError(self.bad[path])
        pixels = torch.from_numpy(np.array(self.pixels[self.row[path]]))  # [H, W, 3] uint8, copied
        # As ToTensor: channels first, then scaled to [0, 1] in the default float type.
        return self.to_model(pixels.permute(2, 0, 1).contiguous().to(torch.get_default_dtype()).div(255))


def open_or_build(
    cache_dir: str | Path, paths: Sequence[str | Path], preprocess: Callable, build: bool = True
) -> TileCache:
    """The tile cache of ``paths`` under ``cache_dir``: reused when its description matches,
    else built (``build=False`` waits for nobody: it raises if the cache is missing)."""
    geometric, to_model = split_preprocess(preprocess)
    paths = sorted(dict.fromkeys(str(path) for path in paths))
    description = {
        "format": FORMAT,
        "count": len(paths),
        "files": files_signature(paths),
        "transform": stable_repr(geometric),
    }
    key = digest(description)[:24]
    folder = Path(cache_dir) / FOLDER
    data_file, meta_file = folder / f"{key}.u8", folder / f"{key}.json"
    stored = _read_meta(meta_file)
    if stored is not None and stored.get("description") == description and data_file.is_file():
        log.info("Reusing the decoded tiles in %s (%d images)", data_file, len(paths))
        return TileCache(data_file, paths, tuple(stored["shape"]), stored["bad"], to_model)
    if not build:
        raise DataError(f"the decoded-tile cache {data_file} was not built (data.cache=true)")
    shape, bad = _build(data_file, paths, geometric)
    with atomic_write(meta_file) as stream:  # last: its presence says the data file is whole
        json.dump({"description": description, "shape": list(shape), "bad": bad}, stream)
    return TileCache(data_file, paths, shape, bad, to_model)


def _read_meta(meta_file: Path) -> dict | None:
    try:
        return json.loads(meta_file.read_text())
    except (OSError, ValueError):
        return None


def remove_dead_builds(data_file: Path) -> None:
    """Delete the temporary files that killed builds of ``data_file`` left (a kill skips the
    clean-up; each is as large as the cache). A build of another process still running on
    this machine, or of another machine sharing the folder, is left alone."""
    host = socket.gethostname()
    for leftover in data_file.parent.glob(f".{glob.escape(data_file.name)}.*.tmp"):
        builder = leftover.name[len(data_file.name) + 2 : -len(".tmp")]
        builder_host, _, pid = builder.rpartition("-")
        if builder_host == host and pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
                log.info("Removed %s, left by a killed build of the tile cache", leftover)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _build(data_file: Path, paths: Sequence[str], geometric: Callable) -> tuple[tuple[int, int, int], dict[str, str]]:
    """Decode every image once into ``data_file`` (through a temporary file); returns the
    shape of one image and the messages of the images that could not be decoded."""
    from tqdm import tqdm

    data_file.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_builds(data_file)
    temporary = data_file.with_name(f".{data_file.name}.{socket.gethostname()}-{os.getpid()}.tmp")
    bad: dict[str, str] = {}
    pixels = None
    shape: tuple[int, int, int] | None = None
    log.info("Decoding %d images once into %s (data.cache=true)", len(paths), data_file)
    try:
        for row, path in enumerate(tqdm(paths, desc="Decoding tiles once", unit="image", mininterval=2.0)):
            try:
                array = np.asarray(geometric(load_image(path)), dtype=np.uint8)
            except DataError as error:
                bad[path] = str(error)
                continue
            if pixels is None:
                shape = tuple(array.shape)
                pixels = np.memmap(temporary, dtype=np.uint8, mode="w+", shape=(len(paths), *shape))
            if tuple(array.shape) != shape:
                raise ConfigError(
                    f"data.cache=true: image {path} becomes {array.shape[1]}x{array.shape[0]} after resizing, "
                    f"others {shape[1]}x{shape[0]}; the preprocessing must give every image one size"
                )
            pixels[row] = array
        if pixels is None:
            raise DataError(f"data.cache=true: none of the {len(paths)} images could be decoded")
        pixels.flush()
        del pixels
        os.replace(temporary, data_file)
    finally:
        if temporary.exists():
            temporary.unlink()
    return shape, bad
