"""A city packed into WebDataset shards: the tar files open_clip and webdataset read.

Each split (``train``, ``val`` held out from it as training does, ``test``) becomes
``<split>-000000.tar``, ``<split>-000001.tar``, ... of at most ``samples_per_shard`` samples,
in the split's order. A sample is three members sharing a key (the sample's position in its
split, ``000000042``):

- ``<key>.jpg`` / ``.png`` / ...: the tile file's bytes, unchanged (decoding a sample gives the
  pixels folder reading gives);
- ``<key>.txt``: the caption, UTF-8;
- ``<key>.json``: ``{"name", "lat", "lon", "panorama", "split"}``: the file name (the
  protocol's identity of a tile), its coordinates and whether the caption describes a panorama.

``<split>-pairs.json`` lists each sample's name, caption, coordinates and panorama flag (what a
reader needs of a split before it reads an image). ``manifest.json``, written last, lists every
shard with its sample count, size and SHA-256, and what was packed (city, image type, texts,
validation share). Shards are written to a temporary file and renamed; a pack stopped part-way
leaves no manifest, so nothing reads it as complete. Members carry fixed owners and times: the
same data packs to the same bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvgtext.data.annotations import Pair
from cvgtext.utils.atomic import atomic_write
from cvgtext.utils.errors import ConfigError, DataError

log = logging.getLogger(__name__)

FORMAT = "cvgtext-webdataset"
VERSION = 1
SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"
# Image extensions as webdataset names them (open_clip reads "jpg;png;jpeg;webp").
EXTENSIONS = {
    ".jpg": "jpg",
    ".jpeg": "jpg",
    ".png": "png",
    ".webp": "webp",
    ".bmp": "bmp",
    ".tif": "tif",
    ".tiff": "tif",
}


class _Hashing:
    """A binary stream that also hashes and counts what is written through it."""

    def __init__(self, stream):
        self.stream, self.sha256, self.size = stream, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.stream.write(data)

    def tell(self) -> int:
        return self.size


@dataclass
class ShardWriter:
    """Writes one split's samples into numbered tar shards in ``folder``, each straight to disk
    (a temporary file renamed when the shard is complete)."""

    folder: Path
    split: str
    samples_per_shard: int
    shards: list[dict[str, Any]] = field(default_factory=list)
    _open: contextlib.ExitStack | None = None
    _tar: tarfile.TarFile | None = None
    _stream: _Hashing | None = None
    _count: int = 0

    def _name(self) -> str:
        return f"{self.split}-{len(self.shards):06d}.tar"

    def add(self, key: str, members: Sequence[tuple[str, bytes]]) -> None:
        if self._tar is None:
            self._open = contextlib.ExitStack()
            self._stream = _Hashing(self._open.enter_context(atomic_write(self.folder / self._name(), "wb")))
            self._tar = tarfile.open(fileobj=self._stream, mode="w", format=tarfile.USTAR_FORMAT)
        for extension, data in members:
            info = tarfile.TarInfo(f"{key}.{extension}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            self._tar.addfile(info, io.BytesIO(data))
        self._count += 1
        if self._count == self.samples_per_shard:
            self.close_shard()

    def close_shard(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        name = self._name()
        self._open.close()  # renames the complete shard into place
        self.shards.append(
            {
                "file": name,
                "samples": self._count,
                "bytes": self._stream.size,
                "sha256": self._stream.sha256.hexdigest(),
            }
        )
        self._tar, self._stream, self._open, self._count = None, None, None, 0

    def abandon(self) -> None:
        """Remove the shard being written (an error stopped the pack)."""
        if self._open is not None:
            self._open.__exit__(RuntimeError, RuntimeError("pack stopped"), None)
            self._tar, self._stream, self._open = None, None, None


def sample_members(pair: Pair, split: str) -> list[tuple[str, bytes]]:
    """The members of one sample: the tile's bytes, the caption and the metadata."""
    extension = EXTENSIONS.get(Path(pair.name).suffix.lower())
    if extension is None:
        raise DataError(
            f"{pair.image_path}: cannot pack an image with extension {Path(pair.name).suffix!r} "
            f"(packed: {', '.join(sorted(set(EXTENSIONS)))})"
        )
    try:
        image = Path(pair.image_path).read_bytes()
    except OSError as error:
        raise DataError(f"{pair.image_path}: cannot be read ({error.strerror})") from None
    meta = {"name": pair.name, "lat": pair.lat, "lon": pair.lon, "panorama": pair.is_panorama, "split": split}
    return [
        (extension, image),
        ("txt", pair.caption.encode("utf-8")),
        ("json", json.dumps(meta, ensure_ascii=False).encode("utf-8")),
    ]


def pack_splits(
    splits: dict[str, Sequence[Pair]],
    out_dir: str | Path,
    samples_per_shard: int = 1000,
    description: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Pack ``splits`` (split -> its pairs, in order) into ``out_dir``; returns the manifest."""
    if isinstance(samples_per_shard, bool) or not isinstance(samples_per_shard, int) or samples_per_shard < 1:
        raise ConfigError(f"samples_per_shard={samples_per_shard!r}: expected a positive number of samples")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / MANIFEST
    if manifest_path.exists():
        manifest_path.unlink()  # the shards are about to change: no stale manifest may describe them
    for old in out_dir.glob("*-[0-9][0-9][0-9][0-9][0-9][0-9].tar"):
        if old.name.split("-")[0] in SPLITS:
            old.unlink()
    manifest: dict[str, Any] = {"format": FORMAT, "version": VERSION, **(description or {}), "splits": {}}
    for split, pairs in splits.items():
        writer = ShardWriter(out_dir, split, samples_per_shard)
        try:
            for position, pair in enumerate(pairs):
                writer.add(f"{position:09d}", sample_members(pair, split))
            writer.close_shard()
        except BaseException:
            writer.abandon()
            raise
        last = len(writer.shards) - 1
        pairs_file = f"{split}-pairs.json"
        with atomic_write(out_dir / pairs_file) as stream:
            json.dump([[p.name, p.caption, p.lat, p.lon, p.is_panorama] for p in pairs], stream, ensure_ascii=False)
        manifest["splits"][split] = {
            "samples": len(pairs),
            # each sample's name, caption, lat, lon and panorama flag, in order: what a reader
            # needs of a split without reading its images
            "pairs": pairs_file,
            # the brace pattern webdataset and open_clip's --train-data expand
            "pattern": f"{split}-{{000000..{last:06d}}}.tar" if writer.shards else None,
            "shards": writer.shards,
        }
        log.info("%s: %d samples in %d shards", split, len(pairs), len(writer.shards))
    with atomic_write(manifest_path) as stream:
        json.dump(manifest, stream, indent=2)
        stream.write("\n")
    return manifest
