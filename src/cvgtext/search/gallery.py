"""A city's gallery as the query tool and evaluation see it: its tiles, their embeddings, and
the index of those embeddings cached under ``paths.cache_dir``.

``split=all`` is every coordinate-named image in the gallery folders of the configured text
versions, annotated or not; ``train``, ``val`` and ``test`` are the distinct tiles of that split,
in the order evaluation ranks them. Embedding a gallery is the slow part of a query, so the
embeddings are stored once per weights, city, image type, split and preprocessing, and reused
while the tile files stay as they were (names, sizes, modification times).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from cvgtext.commands.queries import GALLERY_SPLITS
from cvgtext.data.dataset import load_image
from cvgtext.data.names import parse_coordinates
from cvgtext.model.text_context import encode_text
from cvgtext.utils.atomic import atomic_write
from cvgtext.utils.errors import ConfigError, DataError, OutputError
from cvgtext.utils.fingerprint import changed_parts, digest, file_digest, files_signature, stable_repr

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
INDEX_FORMAT = 1  # bump when the stored layout changes


@dataclass(frozen=True)
class Tile:
    """One gallery image and the place its file name gives."""

    name: str
    path: Path
    lat: float
    lon: float


def gallery_tiles(datamodule: Any, split: str) -> list[Tile]:
    """The tiles of ``split`` (see :data:`GALLERY_SPLITS`) for a :class:`CVGTextDataModule`.

    A name found in several folders (or several times in a split) is one tile, the first.
    """
    if split not in GALLERY_SPLITS:
        raise ConfigError(f"split={split!r} is not one of {', '.join(GALLERY_SPLITS)}")
    source = datamodule.source
    if source.format != "folders":
        raise ConfigError(
            "the query tool and the web page read the city's folders (they show its tiles); set data.format=folders"
        )
    source.prepare()
    tiles: dict[str, Tile] = {}
    if split != "all":
        pairs = datamodule.pairs or source.read_splits()
        for pair in pairs[split]:
            tiles.setdefault(pair.name, Tile(pair.name, pair.image_path, pair.lat, pair.lon))
        return list(tiles.values())
    folders = [source.image_dir(version) for version in source.versions]
    for folder in folders:
        try:
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except FileNotFoundError:
            raise DataError(
                f"image folder {folder} does not exist; point paths.data_dir at the folder holding "
                "reference/ and query/"
            ) from None
        for entry in entries:
            if entry.name.startswith(".") or not entry.name.lower().endswith(IMAGE_SUFFIXES) or not entry.is_file():
                continue
            try:
                lat, lon = parse_coordinates(entry.name)
            except DataError:
                continue  # not a tile of the city: a file without a place
            tiles.setdefault(entry.name, Tile(entry.name, Path(entry.path), lat, lon))
    if not tiles:
        raise DataError(
            f"no image named 'lat,lon_...' in {', '.join(map(str, folders))}; expected the city's gallery tiles"
        )
    return list(tiles.values())


class _TileImages(Dataset):
    def __init__(self, tiles: Sequence[Tile], preprocess: Callable):
        self.tiles, self.preprocess = list(tiles), preprocess

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.preprocess(load_image(self.tiles[index].path))


@torch.inference_mode()
def embed_tiles(
    model: torch.nn.Module,
    preprocess: Callable,
    tiles: Sequence[Tile],
    batch_size: int = 128,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """L2-normalised image embeddings ``[tiles, embed_dim]``, float32 on the CPU."""
    model.eval().to(device)
    loader = DataLoader(_TileImages(tiles, preprocess), batch_size=batch_size, num_workers=num_workers)
    parts = [model.encode_image(images.to(device), normalize=True).float().cpu() for images in loader]
    return torch.cat(parts)


@torch.inference_mode()
def embed_captions(
    model: torch.nn.Module,
    tokenizer: Callable,
    captions: Sequence[str],
    batch_size: int = 128,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """L2-normalised text embeddings ``[captions, embed_dim]``, float32 on the CPU (each batch on
    the positions its longest caption uses, where that is exact: ``model/text_context.py``)."""
    model.eval().to(device)
    parts = []
    for start in range(0, len(captions), batch_size):
        tokens = tokenizer(list(captions[start : start + batch_size])).to(device)
        parts.append(encode_text(model, tokens, normalize=True).float().cpu())
    return torch.cat(parts)


def weights_identity(ckpt_path: str | None, backbone: dict[str, Any], seed: int | None = None) -> dict[str, Any]:
    """What decides the weights: the checkpoint's content, or the backbone and its pretrained tag
    (a local pretrained file by content), with the text length and image size the model is built at."""
    identity: dict[str, Any] = {
        "model_name": backbone.get("model_name"),
        "context_length": backbone.get("context_length"),
        "image_size": backbone.get("image_size"),
    }
    pretrained = backbone.get("pretrained")
    if ckpt_path:
        identity["checkpoint_sha256"] = file_digest(ckpt_path)
    elif pretrained and Path(str(pretrained)).is_file():
        identity["pretrained_sha256"] = file_digest(pretrained)
    else:
        identity["pretrained"] = pretrained
        if not pretrained:
            # Random initial weights: the same only for the same seed.
            identity["seed"] = seed
    return identity


@dataclass
class GalleryIndex:
    """The embeddings of a gallery's tiles, with their names and places."""

    names: list[str]
    lat: torch.Tensor  # [tiles] degrees, float64
    lon: torch.Tensor  # [tiles]
    embeddings: torch.Tensor  # [tiles, embed_dim] float32, L2-normalised
    key: dict[str, Any]  # what the embeddings were built from
    path: Path | None = None
    reused: bool = False


def index_key(
    weights: dict[str, Any],
    city: str,
    img: str,
    text: str,
    split: str,
    preprocess: Callable,
    tiles: Sequence[Tile],
    decode: str = "cpu",
) -> dict[str, Any]:
    """The description a stored index must match to be reused. ``decode``: where the tiles were
    decoded (``data.decode``; the device's tensors are close to, not bitwise, the CPU's)."""
    key = {
        "format": INDEX_FORMAT,
        "weights": weights,
        "city": city,
        "img": img,
        "text": text,
        "split": split,
        "preprocess": stable_repr(preprocess),
        "tiles": files_signature(tile.path for tile in tiles),
        "count": len(tiles),
    }
    if decode != "cpu":  # indexes stored before the option existed were decoded on the CPU
        key["decode"] = decode
    return key


def config_index_key(
    cfg: Any,
    backbone: dict[str, Any],
    preprocess: Callable,
    split: str,
    tiles: Sequence[Tile],
    decode: str = "cpu",
) -> dict[str, Any]:
    """:func:`index_key` for a run's configuration (``eval.py``, ``locate.py``)."""
    weights = weights_identity(cfg.get("ckpt_path"), backbone, cfg.get("seed"))
    return index_key(weights, cfg.city.name, cfg.img.name, cfg.text.name, split, preprocess, tiles, decode)


def index_path(cache_dir: str | Path, key: dict[str, Any]) -> Path:
    """One file per city, image type, texts, split, weights, preprocessing and decoding; the
    tiles only decide whether it is current, so a changed folder replaces its index instead of
    adding one."""
    name = digest({part: key[part] for part in ("format", "weights", "preprocess", "decode") if part in key})[:16]
    return Path(cache_dir) / "gallery" / f"{key['city']}-{key['img']}-{key['text']}-{key['split']}-{name}.pt"


def read_index(path: Path) -> GalleryIndex | None:
    """A stored index, or None when there is none or it cannot be read (it is then rebuilt)."""
    if not path.is_file():
        return None
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
        return GalleryIndex(stored["names"], stored["lat"], stored["lon"], stored["embeddings"], stored["key"], path)
    except Exception as error:  # a damaged file is rebuilt, never trusted
        log.warning("the gallery index %s cannot be read (%s); rebuilding it", path, error)
        return None


def find_index(cache_dir: str | Path | None, key: dict[str, Any], tiles: Sequence[Tile]) -> GalleryIndex | None:
    """The stored index built from ``key`` and ``tiles``, or None (saying why it is not reused)."""
    if cache_dir is None:
        return None
    path = index_path(cache_dir, key)
    stored = read_index(path)
    if stored is not None and stored.key == key and stored.names == [tile.name for tile in tiles]:
        log.info("reusing the gallery index %s (%d tiles)", path, len(tiles))
        stored.reused = True
        return stored
    reason = "none stored" if stored is None else "changed: " + ", ".join(changed_parts(stored.key, key) or ["names"])
    log.info("building the gallery index %s (%d tiles; %s)", path, len(tiles), reason)
    return None


def store_index(
    cache_dir: str | Path | None, key: dict[str, Any], tiles: Sequence[Tile], embeddings: torch.Tensor
) -> GalleryIndex:
    """The index of ``tiles`` with their ``embeddings  # [tiles, embed_dim]``, written atomically
    under ``cache_dir`` (not written when it is None).

    The index is a cache: when it cannot be written (a full disk, a read-only folder) a warning
    says so and the run goes on; the next run embeds the gallery again.
    """
    index = GalleryIndex(
        names=[tile.name for tile in tiles],
        lat=torch.tensor([tile.lat for tile in tiles], dtype=torch.float64),
        lon=torch.tensor([tile.lon for tile in tiles], dtype=torch.float64),
        embeddings=embeddings.float().cpu().contiguous(),
        key=key,
    )
    if cache_dir is not None:
        path = index_path(cache_dir, key)
        content = {"key": key, "names": index.names, "lat": index.lat, "lon": index.lon, "embeddings": index.embeddings}
        try:
            with atomic_write(path, "wb") as stream:
                torch.save(content, stream)
        except OutputError as error:
            log.warning("The gallery index was not stored (%s); the next run embeds the gallery again", error)
            return index
        index.path = path
    return index


def load_or_build_index(
    cache_dir: str | Path | None,
    key: dict[str, Any],
    tiles: Sequence[Tile],
    embed: Callable[[Sequence[Tile]], torch.Tensor],
) -> GalleryIndex:
    """The stored index for ``key`` when it matches, or ``embed(tiles)`` stored for next time.

    ``cache_dir=None`` builds without storing.
    """
    return find_index(cache_dir, key, tiles) or store_index(cache_dir, key, tiles, embed(tiles))
