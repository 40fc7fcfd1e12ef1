"""Where tiles come from: an XYZ tile service by URL template, or a local MBTiles / PMTiles file.

An XYZ service is asked politely, as the OpenStreetMap tile usage policy asks of every client:
a User-Agent naming the application, at most one request per ``min_interval_s`` (a lock shared
by all threads), and a local cache so that no tile is ever fetched twice (a rerun fetches
nothing it has). Templates may hold ``{z} {x} {y}``, ``{-y}`` (TMS rows), ``{s}`` (one of the
subdomains) and ``{q}`` (a quadkey); ``{key}`` is filled at request time from the environment
variable named by ``key_env``, so no key reaches a file, a log or the manifest.

Failures: a tile the service does not have (HTTP 404) or cannot give after its retries, or an
image that does not decode, raises :class:`~cvgtext.data.town.places.LeftOut` (the place is left
out and counted); a service that nothing answers at raises
:class:`~cvgtext.data.town.http.SourceUnreachable`, which stops the build.
"""

from __future__ import annotations

import io
import os
import sqlite3
import threading
from pathlib import Path

import mercantile
from PIL import Image

from cvgtext.data.town.http import PoliteClient
from cvgtext.data.town.mercator import OutOfRange, check_in_mercator
from cvgtext.data.town.places import LeftOut
from cvgtext.utils.atomic import atomic_write
from cvgtext.utils.errors import ConfigError, DataError
from cvgtext.utils.fingerprint import digest
from cvgtext.utils.locks import KeyedLocks


def decode_tile(data: bytes, where: str) -> Image.Image:
    """The RGB image of a tile's bytes; LeftOut naming ``where`` when they are no image."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise LeftOut("tile_unreadable", f"{where} is not an image: {error}") from None


class ZoomRange:
    """What every source checks before it is asked: zooms and bounds it has."""

    min_zoom: int = 0
    max_zoom: int = 22
    bounds: tuple[float, float, float, float] | None = None  # west, south, east, north
    label: str = "tile source"

    def check_point(self, lat: float, lon: float, zoom: int) -> None:
        check_in_mercator(lat, lon)
        if not self.min_zoom <= zoom <= self.max_zoom:
            raise OutOfRange(f"{self.label} has zooms {self.min_zoom}-{self.max_zoom}; zoom {zoom} was asked for")
        if self.bounds is not None:
            west, south, east, north = self.bounds
            if not (west <= lon <= east and south <= lat <= north):
                raise OutOfRange(f"the point ({lat}, {lon}) is outside {self.label}'s bounds {list(self.bounds)}")


class XYZSource(ZoomRange):
    """Tiles of an XYZ service: ``https://tile.openstreetmap.org/{z}/{x}/{y}.png`` and the like."""

    def __init__(
        self,
        url: str,
        cache_dir: str | Path,
        user_agent: str,
        min_interval_s: float = 1.0,
        timeout_s: float = 30.0,
        retries: int = 3,
        backoff_s: float = 2.0,
        min_zoom: int = 0,
        max_zoom: int = 22,
        subdomains: str = "abc",
        key_env: str | None = None,
        label: str = "the tile service",
    ):
        if "{key}" in url and not key_env:
            raise ConfigError(f"{label} template {url} has {{key}}: name the environment variable holding it (key_env)")
        self.url, self.key_env, self.label = url, key_env, label
        self.min_zoom, self.max_zoom, self.subdomains = min_zoom, max_zoom, subdomains or "a"
        self.cache_dir = Path(cache_dir) / digest(url)[:16]
        self.client = PoliteClient(url, label, user_agent, min_interval_s, timeout_s, retries, backoff_s)
        self._fetching = KeyedLocks()

    def tile_url(self, z: int, x: int, y: int) -> str:
        fields = {"z": z, "x": x, "y": y, "-y": 2**z - 1 - y, "s": self.subdomains[(x + y) % len(self.subdomains)]}
        url = self.url.replace("{-y}", "{_tms_y}").replace("{q}", mercantile.quadkey(x, y, z))
        fields["_tms_y"] = fields.pop("-y")
        if "{key}" in url:
            key = os.environ.get(self.key_env or "")
            if not key:
                raise ConfigError(
                    f"{self.label} needs its key in the environment variable {self.key_env}, which is not set"
                )
            fields["key"] = key
        return url.format(**fields)

    def tile(self, z: int, x: int, y: int) -> Image.Image:
        path = self.cache_dir / str(z) / str(x) / str(y)
        with self._fetching((z, x, y)):  # places built at once that share a tile fetch it once
            if path.is_file():
                try:
                    return decode_tile(path.read_bytes(), f"cached tile {path}")
                except LeftOut:
                    pass  # a damaged cache entry is fetched again
            data = self.client.get(self.tile_url(z, x, y), f"tile {z}/{x}/{y}", "tile_missing", "tile_failed")
            image = decode_tile(data, f"tile {z}/{x}/{y} of {self.label} ({self.url})")
            with atomic_write(path, "wb") as stream:
                stream.write(data)
            return image

    def describe(self) -> dict:
        client = self.client
        return {
            "kind": "xyz",
            "url": self.url,
            "user_agent": client.user_agent,
            "min_interval_s": client.min_interval_s,
        }


class MBTilesSource(ZoomRange):
    """Tiles of an MBTiles file (SQLite; rows counted from the south, as in TMS)."""

    def __init__(self, path: str | Path, label: str = "the MBTiles file"):
        self.path, self.label = Path(path), f"{label} {path}"
        if not self.path.is_file():
            raise DataError(f"MBTiles file {self.path} does not exist")
        try:
            self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
            self.metadata = dict(self.db.execute("SELECT name, value FROM metadata").fetchall())
        except sqlite3.DatabaseError as error:
            raise DataError(f"MBTiles file {self.path} cannot be read: {error}") from None
        self._lock = threading.Lock()
        self.min_zoom = int(self.metadata.get("minzoom", 0))
        self.max_zoom = int(self.metadata.get("maxzoom", 22))
        if self.metadata.get("bounds"):
            self.bounds = tuple(float(v) for v in self.metadata["bounds"].split(","))

    def tile(self, z: int, x: int, y: int) -> Image.Image:
        with self._lock:
            row = self.db.execute(
                "SELECT tile_data FROM tiles WHERE zoom_level=? AND tile_column=? AND tile_row=?", (z, x, 2**z - 1 - y)
            ).fetchone()
        if row is None:
            raise LeftOut("tile_missing", f"tile {z}/{x}/{y} is not in {self.label}")
        return decode_tile(bytes(row[0]), f"tile {z}/{x}/{y} of {self.label}")

    def describe(self) -> dict:
        keep = ("name", "attribution", "description", "version")
        return {"kind": "mbtiles", "file": str(self.path), **{k: self.metadata[k] for k in keep if k in self.metadata}}


class PMTilesSource(ZoomRange):
    """Tiles of a PMTiles archive (version 3), read with the ``pmtiles`` package."""

    def __init__(self, path: str | Path, label: str = "the PMTiles file"):
        from pmtiles.reader import MmapSource, Reader

        self.path, self.label = Path(path), f"{label} {path}"
        if not self.path.is_file():
            raise DataError(f"PMTiles file {self.path} does not exist")
        self.stream = open(self.path, "rb")  # noqa: SIM115  (kept open for the reader's memory map)
        try:
            self.reader = Reader(MmapSource(self.stream))
            header = self.reader.header()
        except Exception as error:  # the reader raises plain exceptions on a file of another kind
            raise DataError(f"PMTiles file {self.path} cannot be read: {error}") from None
        self._lock = threading.Lock()
        self.min_zoom, self.max_zoom = header["min_zoom"], header["max_zoom"]
        corners = ("min_lon_e7", "min_lat_e7", "max_lon_e7", "max_lat_e7")
        self.bounds = tuple(header[k] / 1e7 for k in corners)
        self.gzip = getattr(header.get("tile_compression"), "name", None) == "GZIP"
        self.metadata = {}

    def tile(self, z: int, x: int, y: int) -> Image.Image:
        with self._lock:
            data = self.reader.get(z, x, y)
        if not data:
            raise LeftOut("tile_missing", f"tile {z}/{x}/{y} is not in {self.label}")
        if self.gzip:
            import gzip

            data = gzip.decompress(data)
        return decode_tile(data, f"tile {z}/{x}/{y} of {self.label}")

    def describe(self) -> dict:
        return {"kind": "pmtiles", "file": str(self.path)}


def open_tile_source(url: str, cache_dir: str | Path, label: str, **http) -> ZoomRange:
    """The source a ``url`` names: a ``.mbtiles`` or ``.pmtiles`` file, or an http(s) XYZ template."""
    if url.lower().endswith(".mbtiles"):
        return MBTilesSource(url, label)
    if url.lower().endswith(".pmtiles"):
        return PMTilesSource(url, label)
    web = url.startswith(("http://", "https://"))
    if not web or not ("{q}" in url or ("{z}" in url and "{x}" in url and ("{y}" in url or "{-y}" in url))):
        raise ConfigError(
            f"{label} url {url!r} is neither an http(s) template with {{z}}, {{x}} and {{y}} (or {{q}}) "
            "nor an .mbtiles or .pmtiles file"
        )
    return XYZSource(url, cache_dir, label=label, **http)
