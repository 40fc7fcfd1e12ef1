"""Where a town's places are: points from a file, points along the streets of an OpenStreetMap
extract, or the street views themselves; and a minimum spacing between places.

A :class:`Place` is a street-view point. Its heading (degrees clockwise from north) is that of
the street view's centre where known: the road's bearing for points sampled along a street.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvgtext.retrieval.geo import EARTH_RADIUS_KM
from cvgtext.utils.errors import ConfigError, DataError

EARTH_RADIUS_M = 1000 * EARTH_RADIUS_KM
# Road types sampled by default: those a street-view car drives along.
STREET_HIGHWAYS = (
    "motorway_link",
    "trunk",
    "primary",
    "secondary",
    "tertiary",
    "unclassified",
    "residential",
    "living_street",
    "pedestrian",
    "service",
)
LAT_NAMES, LON_NAMES = ("lat", "latitude", "y"), ("lon", "lng", "long", "longitude", "x")


class LeftOut(Exception):
    """A place is left out of the town; ``reason`` is what the build counts it under."""

    def __init__(self, reason: str, message: str, extra: dict | None = None):
        super().__init__(message)
        self.reason = reason
        self.extra = extra or {}  # what the record keeps of the attempt (the inspector's verdicts)


@dataclass(frozen=True)
class Place:
    """A street-view point, and what is known of its street view."""

    lat: float
    lon: float
    heading: float | None = None  # degrees clockwise from north of the view's centre
    date: str | None = None  # YYYY-MM of the street view
    ident: str | None = None  # the panorama's id, or the source file's own name
    street_view: Path | None = None  # the image, for street views from a folder

    @property
    def key(self) -> str:
        """A stable name of the place for the build's records."""
        return f"{self.lat:.7f},{self.lon:.7f}_{self.ident or ''}"


def check_coordinates(lat: float, lon: float, where: str) -> None:
    """Refuse coordinates that are not numbers of the globe, naming ``where`` they come from."""
    if not (math.isfinite(lat) and math.isfinite(lon) and -90 <= lat <= 90 and -180 <= lon <= 180):
        raise DataError(
            f"{where}: coordinates ({lat}, {lon}) are not a latitude in [-90, 90] and a longitude in [-180, 180]"
        )


def local_metres(lat: np.ndarray, lon: np.ndarray, lat0: float) -> np.ndarray:
    """``[n, 2]`` east and north metres of points in an equirectangular plane about latitude ``lat0``
    (exact enough within a town; longitudes are unwrapped across the antimeridian)."""
    lon = np.unwrap(np.radians(lon)) if len(lon) else np.radians(lon)
    east = EARTH_RADIUS_M * lon * math.cos(math.radians(lat0))
    return np.stack([east, EARTH_RADIUS_M * np.radians(lat)], 1)


def thin(places: Sequence[Place], min_spacing_m: float) -> list[Place]:
    """The places, in order, less each one closer than ``min_spacing_m`` to one kept before it."""
    if min_spacing_m <= 0 or len(places) < 2:
        return list(places)
    lat = np.array([p.lat for p in places])
    xy = local_metres(lat, np.array([p.lon for p in places]), float(lat.mean()))
    cells: dict[tuple[int, int], list[int]] = {}
    kept = []
    for i, (x, y) in enumerate(xy):
        cx, cy = int(x // min_spacing_m), int(y // min_spacing_m)
        near = (j for dx in (-1, 0, 1) for dy in (-1, 0, 1) for j in cells.get((cx + dx, cy + dy), ()))
        if all(math.dist(xy[j], (x, y)) >= min_spacing_m for j in near):
            cells.setdefault((cx, cy), []).append(i)
            kept.append(places[i])
    return kept


def _column(header: Sequence[str], names: Iterable[str], path: Path, what: str) -> int:
    lowered = [name.strip().lower() for name in header]
    for name in names:
        if name in lowered:
            return lowered.index(name)
    raise DataError(f"points file {path} has no {what} column (expected one of {', '.join(names)}; found {header})")


def _optional(row: dict, *names: str) -> str | None:
    for name in names:
        value = (row.get(name) or "").strip()
        if value:
            return value
    return None


def _place(lat: float, lon: float, properties: dict, where: str) -> Place:
    check_coordinates(lat, lon, where)
    heading = _optional(properties, "heading", "bearing")
    try:
        heading_deg = float(heading) % 360 if heading is not None else None
    except ValueError:
        raise DataError(f"{where}: heading {heading!r} is not a number of degrees") from None
    return Place(lat, lon, heading_deg, _optional(properties, "date"), _optional(properties, "id", "panoid", "name"))


def read_csv_points(path: Path) -> list[Place]:
    """Places of a CSV file with a header: ``lat``/``lon`` (or latitude/longitude, lng), and
    optionally ``heading``, ``date`` (YYYY-MM) and ``id``."""
    with open(path, newline="", encoding="utf-8-sig") as stream:
        rows = list(csv.reader(stream))
    if not rows:
        raise DataError(f"points file {path} is empty; expected a header with lat and lon columns")
    header = [name.strip().lower() for name in rows[0]]
    lat_at, lon_at = _column(header, LAT_NAMES, path, "latitude"), _column(header, LON_NAMES, path, "longitude")
    places = []
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        where = f"points file {path}, line {number}"
        try:
            lat, lon = float(row[lat_at]), float(row[lon_at])
        except (ValueError, IndexError):
            raise DataError(f"{where}: expected numbers in the lat and lon columns, got {row}") from None
        places.append(_place(lat, lon, dict(zip(header, row)), where))
    return places


def read_geojson_points(path: Path) -> list[Place]:
    """Places of a GeoJSON file: its Point and MultiPoint features (properties heading, date, id)."""
    try:
        content = json.loads(path.read_text(encoding="utf-8-sig"))
    except (ValueError, UnicodeDecodeError) as error:
        raise DataError(f"points file {path} is not valid GeoJSON: {error}") from None
    features = content.get("features", [content]) if isinstance(content, dict) else None
    if not isinstance(features, list):
        raise DataError(f"points file {path}: expected a GeoJSON FeatureCollection of points")
    places = []
    for number, feature in enumerate(features):
        geometry = (feature or {}).get("geometry") or {}
        properties = {k: str(v) for k, v in ((feature or {}).get("properties") or {}).items() if v is not None}
        kind, coordinates = geometry.get("type"), geometry.get("coordinates")
        points = [coordinates] if kind == "Point" else coordinates if kind == "MultiPoint" else None
        if points is None:
            raise DataError(f"points file {path}, feature {number}: a {kind} geometry; expected Point or MultiPoint")
        for point in points:
            try:
                lon, lat = float(point[0]), float(point[1])
            except (TypeError, ValueError, IndexError):
                raise DataError(
                    f"points file {path}, feature {number}: coordinates {point!r} are not [lon, lat]"
                ) from None
            places.append(_place(lat, lon, properties, f"points file {path}, feature {number}"))
    return places


class PointsFile:
    """``places=points``: a CSV or GeoJSON file of street-view points."""

    def __init__(self, file: str | Path | None):
        if not file:
            raise ConfigError("places=points needs places.file: a CSV (lat, lon columns) or GeoJSON file of points")
        self.file = Path(file)

    def load(self, street_views=None) -> list[Place]:
        if not self.file.is_file():
            raise DataError(f"points file {self.file} does not exist (places.file)")
        geojson = self.file.suffix.lower() in (".geojson", ".json")
        return read_geojson_points(self.file) if geojson else read_csv_points(self.file)

    def describe(self) -> dict:
        return {"kind": "points", "file": str(self.file)}


class StreetViewPoints:
    """``places=street_views``: every image of the street-view folder is a place."""

    def load(self, street_views) -> list[Place]:
        index = getattr(street_views, "index", None)
        if index is None:
            raise ConfigError(
                "places=street_views takes its places from a folder of street views (street_views=folder); "
                "with a street-view service choose places=points or places=streets"
            )
        return index()

    def describe(self) -> dict:
        return {"kind": "street_views"}


def bearing_deg(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Initial bearing from the first point to the second, degrees clockwise from north."""
    phi1, phi2, dlon = math.radians(lat1), math.radians(lat2), math.radians(lon2 - lon1)
    y = math.sin(dlon) * math.cos(phi2)
    x = math.cos(phi1) * math.sin(phi2) - math.sin(phi1) * math.cos(phi2) * math.cos(dlon)
    return math.degrees(math.atan2(y, x)) % 360


def along(line: Sequence[tuple[float, float]], spacing_m: float, offset_m: float = 0.0) -> list[Place]:
    """Points every ``spacing_m`` along a polyline of ``(lat, lon)``, headed along it."""
    points, position = [], offset_m
    for (lat1, lon1), (lat2, lon2) in zip(line, line[1:]):
        east = math.radians(lon2 - lon1) * math.cos(math.radians((lat1 + lat2) / 2)) * EARTH_RADIUS_M
        length = math.hypot(east, math.radians(lat2 - lat1) * EARTH_RADIUS_M)
        heading = bearing_deg(lat1, lon1, lat2, lon2)
        while length > 0 and position <= length:
            t = position / length
            points.append(Place(lat1 + t * (lat2 - lat1), lon1 + t * (lon2 - lon1), round(heading, 1)))
            position += spacing_m
        position -= length
    return points


class StreetsOf:
    """``places=streets``: points along the streets of an OpenStreetMap extract (``.osm.pbf``,
    ``.osm``), read with osmium, inside ``bbox`` = [west, south, east, north] when given."""

    def __init__(
        self, osm_file: str | Path | None, spacing_m: float, bbox: Sequence[float] | None = None, highways=None
    ):
        if not osm_file:
            raise ConfigError("places=streets needs places.osm_file: an OpenStreetMap extract (.osm.pbf or .osm)")
        if spacing_m <= 0:
            raise ConfigError(f"places.spacing_m={spacing_m} must be a positive number of metres")
        if bbox is not None and (len(bbox) != 4 or not (bbox[0] < bbox[2] and bbox[1] < bbox[3])):
            raise ConfigError(f"places.bbox={list(bbox)} must be [west, south, east, north] in degrees")
        self.osm_file, self.spacing_m = Path(osm_file), spacing_m
        self.bbox = [float(v) for v in bbox] if bbox is not None else None
        self.highways = set(highways or STREET_HIGHWAYS)

    def inside(self, lat: float, lon: float) -> bool:
        west, south, east, north = self.bbox or (-180, -90, 180, 90)
        return west <= lon <= east and south <= lat <= north

    def load(self, street_views=None) -> list[Place]:
        try:
            import osmium
        except ImportError:
            raise ConfigError(
                "places=streets reads OpenStreetMap extracts with osmium: pip install 'cvgtext[town]'"
            ) from None
        if not self.osm_file.is_file():
            raise DataError(f"OpenStreetMap extract {self.osm_file} does not exist (places.osm_file)")
        places = []
        try:
            processor = osmium.FileProcessor(str(self.osm_file)).with_locations()
            for way in processor.with_filter(osmium.filter.KeyFilter("highway")):
                if not way.is_way() or way.tags.get("highway") not in self.highways:
                    continue
                line = [(n.location.lat, n.location.lon) for n in way.nodes if n.location.valid()]
                places += [p for p in along(line, self.spacing_m, self.spacing_m / 2) if self.inside(p.lat, p.lon)]
        except RuntimeError as error:
            raise DataError(f"OpenStreetMap extract {self.osm_file} cannot be read: {error}") from None
        return places

    def describe(self) -> dict:
        return {"kind": "streets", "osm_file": str(self.osm_file), "spacing_m": self.spacing_m, "bbox": self.bbox}
