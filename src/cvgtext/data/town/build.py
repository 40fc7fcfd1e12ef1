"""Building a town place by place, so that a build killed at any moment goes on where it stopped.

Each place goes through the same steps: its street view, each tile layer cropped on the point,
OCR (and a scene summary), the caption. Only when all succeeded are its three images written
(each atomically), and then its record (``<work_dir>/places/..json``, atomically, last). A
rerun skips every place whose record matches the build's settings; a place killed half way is
built again, and every tile and every model reply it had already got comes from the caches
(``<work_dir>/tiles``, ``<work_dir>/replies``; OCR results in ``<work_dir>/ocr``): nothing is
fetched or asked twice. A place
that fails (a tile the service lacks, an unreadable image, a point out of range, a caption the
format filter or the inspector refuses) is recorded as left out with its reason; failures that
may pass next time (timeouts, server errors) are tried again by a rerun.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from cvgtext.data.town.captions import Captioner
from cvgtext.data.town.mercator import OutOfRange, crop_on_point, metres_per_pixel
from cvgtext.data.town.ocr import SceneTextReader
from cvgtext.data.town.places import LeftOut, Place
from cvgtext.data.town.street_views import StreetView, StreetViewService
from cvgtext.utils.atomic import atomic_write
from cvgtext.utils.errors import ConfigError
from cvgtext.utils.fingerprint import digest
from cvgtext.utils.locks import KeyedLocks

log = logging.getLogger(__name__)

# Left-out reasons a rerun tries again: the service or the model may answer next time.
TRANSIENT = {"tile_failed", "street_view_failed", "model:timeout", "model:http_error", "model:bad_response"}
IMAGE_FORMATS = {"jpg": ("JPEG", {"quality": 95}), "png": ("PNG", {})}
GROUND, FOLDERS = "query/{version}-ground", {"sat": "reference/{version}-satellite", "osm": "reference/{version}-OSM"}


@dataclass
class Layer:
    """One kind of tile of the town (``sat`` or ``osm``): where from, at which zoom and size."""

    name: str
    source: object  # a tile source of tile_sources.py: check_point(), tile(), describe()
    zoom: int
    crop_px: float  # source pixels across the crop
    size: int  # pixels across the written tile
    tile_px: int = 256
    credits: dict = field(default_factory=dict)  # attribution, licence

    def describe(self, lat: float) -> dict:
        ground_m = self.crop_px * metres_per_pixel(lat, self.zoom, self.tile_px)
        return {
            "source": self.source.describe(),
            **{k: getattr(self, k) for k in ("zoom", "crop_px", "size", "tile_px")},
            "ground_m_at_town": round(ground_m, 2),
            **self.credits,
        }


def safe_part(text: str | None, fallback: str) -> str:
    """A part of a file name: letters, digits and dashes only (``_`` separates the name's parts)."""
    cleaned = re.sub(r"[^A-Za-z0-9-]+", "-", text or "").strip("-")
    return cleaned or fallback


def file_name(place: Place, view: StreetView, zoom: int, extension: str) -> str:
    """The release's name: ``lat,lon_YYYY-MM_<id>_d<heading>_z<zoom>`` for a panorama; a photo's
    has a single ``_`` (``lat,lon_YYYY-MM-<id>-d<heading>``), which is how the loaders tell them apart."""
    date = view.date or place.date or "0000-00"
    date = date if re.fullmatch(r"\d{4}-\d{2}", date) else "0000-00"
    ident = safe_part(view.ident or place.ident, hashlib.sha1(place.key.encode()).hexdigest()[:16])
    heading = round(view.heading if view.heading is not None else place.heading or 0) % 360
    point = f"{place.lat:.8f},{place.lon:.8f}"
    if view.view == "panorama":
        return f"{point}_{date}_{ident}_d{heading}_z{zoom}.{extension}"
    return f"{point}_{date}-{ident}-d{heading}.{extension}"


class TownBuilder:
    """Builds the places of a town into ``data_dir`` (see the module's docstring)."""

    def __init__(
        self,
        town: str,
        data_dir: str | Path,
        work_dir: str | Path,
        street_views: StreetViewService,
        layers: Sequence[Layer],
        captioner: Captioner,
        ocr: SceneTextReader | None = None,
        segmenter=None,
        image_format: str = "jpg",
        workers: int = 1,
    ):
        if image_format not in IMAGE_FORMATS:
            raise ConfigError(f"image_format={image_format!r} is not one of {', '.join(IMAGE_FORMATS)}")
        if not layers:
            raise ConfigError("a town needs tiles: give sat.url or osm.url (or both)")
        if workers < 1:
            raise ConfigError(f"workers={workers} must be at least 1")
        self.town, self.data_dir, self.work_dir = town, Path(data_dir), Path(work_dir)
        self.street_views, self.layers, self.captioner = street_views, list(layers), captioner
        self.ocr = ocr if ocr is not None and captioner.reads_scene_text else None
        self.segmenter, self.image_format, self.workers = segmenter, image_format, workers
        self.settings = digest(self.describe(0.0))
        self._reading = KeyedLocks()

    def describe(self, lat: float) -> dict:
        """Everything a place's result depends on (its records are rebuilt when this changes)."""
        return {
            "street_views": self.street_views.describe(),
            "tiles": {layer.name: layer.describe(lat) for layer in self.layers},
            "captions": self.captioner.describe(),
            "ocr": self.ocr.describe() if self.ocr else None,
            "segmentation": self.segmenter.describe() if self.segmenter else None,
            "image_format": self.image_format,
        }

    def version(self, view: str) -> str:
        return self.town if view == "panorama" else f"{self.town}-photos"

    def record_path(self, place: Place) -> Path:
        key = hashlib.sha1(place.key.encode()).hexdigest()
        return self.work_dir / "places" / key[:2] / f"{key}.json"

    def known(self, place: Place) -> dict | None:
        """The place's record from an earlier run, unless stale or worth trying again."""
        try:
            record = json.loads(self.record_path(place).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if record.get("settings") != self.settings or record.get("reason") in TRANSIENT:
            return None
        if record["status"] == "built" and not all(path.is_file() for path in self.image_paths(record)):
            return None  # an image was deleted since: built again (from the caches)
        return record

    def image_paths(self, record: dict) -> list[Path]:
        """Where a built place's street view and tiles are."""
        folders = [GROUND, *(FOLDERS[layer.name] for layer in self.layers)]
        return [self.data_dir / folder.format(version=record["version"]) / record["name"] for folder in folders]

    def build_all(self, places: Sequence[Place]) -> list[dict]:
        """The record of every place, built or read back, in the order of ``places``."""
        if self.workers == 1:
            return [self.build(place, number, len(places)) for number, place in enumerate(places)]
        with ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(self.build, places, range(len(places)), [len(places)] * len(places)))

    def build(self, place: Place, number: int = 0, total: int = 1) -> dict:
        """The record of one place: built now, or read back from an earlier run."""
        record = self.known(place)
        if record is not None:
            return record
        base = {"key": place.key, "settings": self.settings, "lat": place.lat, "lon": place.lon}
        try:
            record = {**base, "status": "built", **self.make(place)}
        except (LeftOut, OutOfRange) as error:
            reason = getattr(error, "reason", "out_of_range")
            log.warning("Place %s left out (%s): %s", place.key, reason, error)
            record = {
                **base,
                "status": "left_out",
                "reason": reason,
                "message": str(error),
                **getattr(error, "extra", {}),
            }
        with atomic_write(self.record_path(place)) as stream:
            json.dump(record, stream, ensure_ascii=False, indent=1)
        if (number + 1) % 25 == 0 or number + 1 == total:
            log.info("%d of %d places done", number + 1, total)
        return record

    def make(self, place: Place) -> dict:
        """Fetch, crop, read and caption one place, then write its images; raise LeftOut when it cannot."""
        for layer in self.layers:
            layer.source.check_point(place.lat, place.lon, layer.zoom)
        view = self.street_views.fetch(place)
        tiles = {
            layer.name: crop_on_point(
                layer.source.tile, place.lat, place.lon, layer.zoom, layer.crop_px, layer.size, layer.tile_px
            )
            for layer in self.layers
        }
        vehicles, objects = self.segmenter.summarise(view.image, view.view) if self.segmenter else ((), None)
        scene_text = self.read_text(view.image, vehicles) if self.ocr else []
        caption = self.captioner.caption(view.image, view.view, scene_text, objects)
        verdicts = {"verdicts": caption.verdicts, "notes": caption.notes, "scene_text": scene_text}
        if caption.text is None:
            why = f"; the inspector said: {caption.notes[-1]}" if caption.notes else ""
            raise LeftOut(caption.left_out or "caption", f"no caption ({caption.left_out}){why}", verdicts)
        name = file_name(place, view, self.layers[0].zoom, self.image_format)
        version = self.version(view.view)
        record = {"name": name, "version": version}
        for path, image in zip(self.image_paths(record), [view.image, *tiles.values()]):
            self.write_image(path, image)
        return {"name": name, "version": version, "view": view.view, "date": name.split("_")[1][:7],
                "caption": caption.text, **verdicts}  # fmt: skip

    def read_text(self, image: Image.Image, vehicles) -> list[str]:
        """The OCR lines of a street view, kept in ``<work_dir>/ocr`` by the image's pixels and the
        OCR settings, so that a build with other prompts or tiles does not read them again."""
        key = hashlib.sha256(image.tobytes() + repr((image.size, list(vehicles), self.ocr.describe())).encode())
        path = self.work_dir / "ocr" / key.hexdigest()[:2] / f"{key.hexdigest()}.json"
        with self._reading(key.hexdigest()):  # two places with one street view read it once
            try:
                return json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                pass
            lines = [line.text for line in self.ocr.read(image, vehicles)]
            with atomic_write(path) as stream:
                json.dump(lines, stream, ensure_ascii=False)
            return lines

    def write_image(self, path: Path, image: Image.Image) -> None:
        kind, options = IMAGE_FORMATS[self.image_format]
        with atomic_write(path, "wb") as stream:
            image.convert("RGB").save(stream, kind, **options)
