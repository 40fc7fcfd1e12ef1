"""The street views of a town: a folder of the user's panoramas and photos, or a service.

A folder's images may have any names: coordinates come from names that start with ``lat,lon``
(the release's ``lat,lon_YYYY-MM_<panoid>_d<heading>_z<zoom>.jpg`` gives the date, id and
heading too) or from a CSV with ``file``, ``lat``, ``lon`` (and optionally ``heading``,
``date``, ``id``, ``view``) columns. An image at least 1.8 times as wide as high is a panorama,
any other a single-view photo, unless the CSV's ``view`` says (panorama or single).

A service is reached through :class:`StreetViewService`, a small interface (one method,
:meth:`~StreetViewService.fetch`); :class:`TemplateService` asks any service that returns an
image for a URL with ``{lat} {lon} {heading}`` and ``{key}``, the key read at request time
from the environment variable named in config, so that it is never written anywhere.
"""

from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cvgtext.data.names import parse_coordinates
from cvgtext.data.town.http import PoliteClient
from cvgtext.data.town.places import LeftOut, Place, check_coordinates, local_metres, read_csv_points
from cvgtext.utils.atomic import atomic_write
from cvgtext.utils.errors import ConfigError, DataError
from cvgtext.utils.fingerprint import digest

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp")
PANORAMA_ASPECT = 1.8  # width / height from which an image is a panorama
VIEWS = ("panorama", "single")
# The release's names: lat,lon_YYYY-MM_<panoid>_d<heading>_z<zoom>.<ext>
_RELEASE_NAME = re.compile(r"^[^_]+_(\d{4}-\d{2})_(.+)_d(\d+(?:\.\d+)?)_z\d+\.[A-Za-z]+$")


@dataclass
class StreetView:
    """A street view as the build uses it."""

    image: Image.Image  # RGB
    view: str  # panorama or single
    date: str | None = None
    ident: str | None = None
    heading: float | None = None


def view_of(image: Image.Image) -> str:
    return "panorama" if image.width >= PANORAMA_ASPECT * image.height else "single"


def open_street_view(path: Path) -> Image.Image:
    """The RGB image at ``path``; LeftOut(street_view_unreadable) naming the file when it is none."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise LeftOut("street_view_unreadable", f"street view {path} cannot be read as an image: {error}") from None


def place_of_name(path: Path) -> Place:
    """The place an image's name gives: ``lat,lon`` first, date, id and heading if in the release's form."""
    lat, lon = parse_coordinates(path.name)
    match = _RELEASE_NAME.match(path.name)
    if match is None:
        return Place(lat, lon, ident=path.stem.split("_", 1)[-1] if "_" in path.stem else None, street_view=path)
    date, ident, heading = match.groups()
    return Place(lat, lon, float(heading), date, ident, path)


class StreetViewService:
    """A street-view service: subclass it and give :meth:`fetch` for another provider."""

    def fetch(self, place: Place) -> StreetView:
        """The street view at ``place`` (raise LeftOut when there is none)."""
        raise NotImplementedError

    def describe(self) -> dict:
        return {"kind": type(self).__name__}


class StreetViewFolder(StreetViewService):
    """``street_views=folder``: the user's images; places are the images themselves, or points
    matched to the nearest image within ``max_distance_m``."""

    def __init__(self, folder: str | Path | None, csv: str | Path | None = None, max_distance_m: float = 15.0):
        if not folder:
            raise ConfigError("street_views=folder needs street_views.folder: the folder of panoramas and photos")
        self.folder, self.csv = Path(folder), Path(csv) if csv else None
        self.max_distance_m = max_distance_m
        self._index: list[Place] | None = None
        self._views: dict[Path, str] = {}  # the CSV's view column, where it has one
        self._claims: dict[Path, str] = {}  # image -> the key of the place it serves

    def index(self) -> list[Place]:
        """A place for each image of the folder, in name order."""
        if self._index is not None:
            return self._index
        if not self.folder.is_dir():
            raise DataError(f"street-view folder {self.folder} does not exist (street_views.folder)")
        files = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if self.csv is not None:
            self._index = self._from_csv({p.name: p for p in files})
        else:
            self._index = []
            for path in files:
                try:
                    self._index.append(place_of_name(path))
                except DataError as error:
                    raise DataError(
                        f"street view {path}: {error}; name the images lat,lon_... or list them in "
                        "a CSV (street_views.csv with file, lat, lon columns)"
                    ) from None
        if not self._index:
            raise DataError(f"street-view folder {self.folder} holds no image ({', '.join(IMAGE_SUFFIXES)})")
        return self._index

    def _from_csv(self, files: dict[str, Path]) -> list[Place]:
        if not self.csv.is_file():
            raise DataError(f"street-view CSV {self.csv} does not exist (street_views.csv)")
        with open(self.csv, newline="", encoding="utf-8-sig") as stream:
            rows = list(csv.DictReader(stream))
        places = []
        for place, row in zip(
            read_csv_points(self.csv), (r for r in rows if any((v or "").strip() for v in r.values()))
        ):
            name = (row.get("file") or row.get("image") or "").strip()
            if name not in files:
                raise DataError(f"street-view CSV {self.csv} names {name!r}, which is not an image of {self.folder}")
            places.append(
                Place(place.lat, place.lon, place.heading, place.date, place.ident or Path(name).stem, files[name])
            )
            view = (row.get("view") or "").strip().lower()
            if view and view not in VIEWS:
                raise DataError(
                    f"street-view CSV {self.csv}: view {view!r} of {name!r} is not one of {', '.join(VIEWS)}"
                )
            if view:
                self._views[files[name]] = view
        return places

    def nearest(self, place: Place) -> Place:
        """The folder's image nearest to ``place``; LeftOut(no_street_view) beyond max_distance_m."""
        index = self.index()
        lat = np.array([p.lat for p in index] + [place.lat])
        xy = local_metres(lat, np.array([p.lon for p in index] + [place.lon]), place.lat)
        distance = np.linalg.norm(xy[:-1] - xy[-1], axis=1)
        best = int(distance.argmin())
        if distance[best] > self.max_distance_m:
            raise LeftOut(
                "no_street_view",
                f"no street view of {self.folder} lies within {self.max_distance_m} m of ({place.lat}, {place.lon})",
            )
        return index[best]

    def claim(self, places: list[Place]) -> None:
        """Give each image to the first of ``places`` it is nearest to (in order, so the same in
        every run); a later place whose nearest image is taken is left out when fetched, rather
        than described by another place's street view."""
        for place in places:
            if place.street_view is None:
                try:
                    self._claims.setdefault(self.nearest(place).street_view, place.key)
                except LeftOut:
                    pass

    def fetch(self, place: Place) -> StreetView:
        found = place if place.street_view is not None else self.nearest(place)
        owner = self._claims.get(found.street_view, place.key)
        if owner != place.key:
            raise LeftOut("street_view_taken", f"the street view {found.street_view} is nearer to place {owner}")
        image = open_street_view(found.street_view)
        view = self._views.get(found.street_view) or view_of(image)
        return StreetView(image, view, found.date, found.ident, found.heading)

    def describe(self) -> dict:
        return {"kind": "folder", "folder": str(self.folder), "csv": str(self.csv) if self.csv else None}


class TemplateService(StreetViewService):
    """``street_views=service``: an image for each place from ``url``, a template with ``{lat}``,
    ``{lon}``, ``{heading}`` and ``{key}`` (read from the environment variable ``key_env``).
    Images are kept in ``cache_dir``: a rerun fetches none again."""

    def __init__(
        self,
        url: str | None,
        key_env: str | None,
        view: str,
        cache_dir: str | Path,
        user_agent: str,
        min_interval_s: float = 0.0,
        timeout_s: float = 30.0,
        retries: int = 3,
        backoff_s: float = 2.0,
        date: str | None = None,
    ):
        if not url or "{lat}" not in url or "{lon}" not in url:
            raise ConfigError(f"street_views.url={url!r} must be an http(s) template with {{lat}} and {{lon}}")
        if view not in VIEWS:
            raise ConfigError(f"street_views.view={view!r} is not one of {', '.join(VIEWS)}")
        self.url, self.key_env, self.view, self.date = url, key_env, view, date
        self.cache_dir = Path(cache_dir) / digest(url)[:16]
        self.client = PoliteClient(
            url, "the street-view service", user_agent, min_interval_s, timeout_s, retries, backoff_s
        )

    def _url(self, place: Place) -> str:
        fields = {"lat": f"{place.lat:.7f}", "lon": f"{place.lon:.7f}", "heading": f"{place.heading or 0:.0f}"}
        if "{key}" in self.url:
            key = os.environ.get(self.key_env or "")
            if not key:
                raise ConfigError(f"the street-view service needs its key in the environment variable {self.key_env}")
            fields["key"] = key
        return self.url.format(**fields)

    def fetch(self, place: Place) -> StreetView:
        check_coordinates(place.lat, place.lon, "a place")
        path = self.cache_dir / f"{place.lat:.7f},{place.lon:.7f}_{place.heading or 0:.0f}"
        if not path.is_file():
            data = self.client.get(
                self._url(place), f"the street view at {place.key}", "no_street_view", "street_view_failed"
            )
            try:
                Image.open(io.BytesIO(data)).verify()
            except Exception as error:  # PIL raises many kinds on bytes that are no image
                raise LeftOut(
                    "street_view_unreadable", f"the street-view service sent no image for {place.key}: {error}"
                ) from None
            with atomic_write(path, "wb") as stream:
                stream.write(data)
        image = open_street_view(path)
        return StreetView(image, self.view, self.date, digest(str(path.name))[:12], place.heading)

    def describe(self) -> dict:
        return {"kind": "service", "url": self.url, "view": self.view}
