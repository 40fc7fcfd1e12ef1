"""Maps of an answer, drawn on this machine from the city's own data (no web tiles: nothing
outside is reached).

- :func:`draw_map`: the candidates on a plain lat/lon canvas with a scale bar (matplotlib;
  ``locations.png``), the answer's area beneath them.
- :class:`CityMap`: the same for the web page, in Pillow: every tile of the city as a grey dot,
  drawn once when the page starts; each answer only adds its area and candidates.
- :class:`Neighbourhood`: the streets around the best candidate, from the city's own tiles
  pasted at their coordinates at their ground size, with the candidates and the area over them.

Positions are local metres east and north of a reference point (an equirectangular projection,
exact enough over a city), so that equal distances look equal; longitudes are taken as seen from
the reference, so a city across the antimeridian is drawn whole.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cvgtext.retrieval.geo import EARTH_RADIUS_KM

# What is drawn is a reports.locations.Location (``Answer`` below): its candidates and area. It is
# not imported, because locations.py draws its pictures with this module.
Answer = Any

METRES_PER_DEGREE = math.radians(1) * EARTH_RADIUS_KM * 1000
AREA_COLOUR = (255, 140, 0)  # the answer's area: orange
TOP1_COLOUR = (214, 39, 40)
CANDIDATE_COLOUR = (31, 119, 180)


def scale_bar_metres(span_m: float) -> float:
    """A round length (1, 2 or 5 times a power of ten) of about a quarter of ``span_m``."""
    target = max(span_m / 4, 1.0)
    power = 10 ** math.floor(math.log10(target))
    return max(step * power for step in (1, 2, 5) if step * power <= target)


def scale_label(metres: float) -> str:
    return f"{metres / 1000:g} km" if metres >= 1000 else f"{metres:g} m"


@dataclass(frozen=True)
class LocalFrame:
    """Metres east and north of a reference point."""

    lat: float
    lon: float

    def metres(self, lat: Any, lon: Any) -> tuple[np.ndarray, np.ndarray]:
        lat, lon = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
        east = ((lon - self.lon + 180) % 360 - 180) * METRES_PER_DEGREE * math.cos(math.radians(self.lat))
        return east, (lat - self.lat) * METRES_PER_DEGREE


def tile_spacing_m(lat: np.ndarray, lon: np.ndarray, sample: int = 500) -> float:
    """The ground a tile stands for when the city's tiles are drawn side by side: the side of the
    square each would cover if they were spread evenly over the city's extent, at most 1.5 times
    the median distance from a tile to its nearest neighbour (over evenly spaced tiles)."""
    if len(lat) < 2:
        return 100.0
    frame = LocalFrame(float(np.median(lat)), float(lon[0]))
    east, north = frame.metres(lat, lon)
    chosen = np.unique(np.linspace(0, len(lat) - 1, min(sample, len(lat))).round().astype(int))
    nearest = []
    for i in chosen:
        distance = np.hypot(east - east[i], north - north[i])
        distance[i] = np.inf
        nearest.append(distance.min())
    even = math.sqrt((east.max() - east.min()) * (north.max() - north.min()) / len(lat))
    spacing = min(even, 1.5 * float(np.median(nearest)))
    return spacing if spacing > 0 else 100.0


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _draw_scale_bar(draw: ImageDraw.ImageDraw, size: int, metres_per_pixel: float, colour=(0, 0, 0)) -> None:
    bar_m = scale_bar_metres(size * metres_per_pixel)
    length = bar_m / metres_per_pixel
    left, bottom = 12, size - 14
    draw.rectangle([left - 4, bottom - 20, left + length + 8, bottom + 6], fill=(255, 255, 255))
    draw.line([left, bottom, left + length, bottom], fill=colour, width=3)
    draw.text((left, bottom - 18), scale_label(bar_m), fill=colour, font=_font(12))


class _Canvas:
    """A square picture of ``span_m`` metres centred on a frame's reference point."""

    def __init__(self, frame: LocalFrame, span_m: float, size: int):
        self.frame, self.size = frame, size
        self.metres_per_pixel = max(span_m, 1.0) / size

    def pixels(self, lat: Any, lon: Any) -> tuple[np.ndarray, np.ndarray]:
        east, north = self.frame.metres(lat, lon)
        return self.size / 2 + east / self.metres_per_pixel, self.size / 2 - north / self.metres_per_pixel

    def mark(self, draw: ImageDraw.ImageDraw, location: Answer, font_size: int = 13) -> None:
        """The area (its tiles and circle) and the candidates, numbered by rank, the first a star."""
        area = location.area
        if area is not None and area.members:
            x, y = self.pixels([m.lat for m in area.members], [m.lon for m in area.members])
            for px, py in zip(x, y):
                draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=AREA_COLOUR)
        if area is not None and location.candidates:
            best = location.candidates[0]
            cx, cy = self.pixels(best.lat, best.lon)
            r = area.radius_m / self.metres_per_pixel
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=AREA_COLOUR, width=2)
        font = _font(font_size)
        for c in reversed(location.candidates):
            x, y = (float(v) for v in self.pixels(c.lat, c.lon))
            colour = TOP1_COLOUR if c.rank == 1 else CANDIDATE_COLOUR
            radius = 7 if c.rank == 1 else 5
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour, outline=(255, 255, 255))
            draw.text(
                (x + radius + 1, y - radius - 4),
                str(c.rank),
                fill=colour,
                font=font,
                stroke_width=2,
                stroke_fill=(255, 255, 255),
            )


class CityMap:
    """The whole city for the page: the tiles drawn once as grey dots; :meth:`draw` adds an answer."""

    def __init__(self, lat: Sequence[float], lon: Sequence[float], size: int = 440):
        lat, lon = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
        reference = LocalFrame(float(np.median(lat)), float(lon[0]))
        east, north = reference.metres(lat, lon)
        centre_east, centre_north = (east.max() + east.min()) / 2, (north.max() + north.min()) / 2
        centre_lat = reference.lat + centre_north / METRES_PER_DEGREE
        centre_lon = reference.lon + centre_east / (METRES_PER_DEGREE * math.cos(math.radians(reference.lat)))
        span = 1.15 * max(east.max() - east.min(), north.max() - north.min(), 200.0)
        self.canvas = _Canvas(LocalFrame(centre_lat, (centre_lon + 180) % 360 - 180), span, size)
        base = np.full((size, size, 3), 255, dtype=np.uint8)
        x, y = self.canvas.pixels(lat, lon)
        # Dots of 3, 2 or 1 pixels across, the more tiles the smaller.
        dot = 3 if len(lat) <= 5_000 else 2 if len(lat) <= 50_000 else 1
        for dx in range(dot):
            for dy in range(dot):
                column, row = (x - dot // 2 + dx).astype(int), (y - dot // 2 + dy).astype(int)
                inside = (column >= 0) & (column < size) & (row >= 0) & (row < size)
                base[row[inside], column[inside]] = (185, 185, 185)
        self.base = Image.fromarray(base)
        _draw_scale_bar(ImageDraw.Draw(self.base), size, self.canvas.metres_per_pixel)

    def draw(self, location: Answer | None) -> Image.Image | None:
        """The city with the answer's area (orange) and candidates (tile 1 red) over it."""
        if location is None or not location.candidates:
            return None
        picture = self.base.copy()
        self.canvas.mark(ImageDraw.Draw(picture), location)
        return picture


class Neighbourhood:
    """The ground around the best candidate, from the city's own tiles at their coordinates.

    ``thumbnail(name)`` gives a tile's picture (cached by the caller); every tile whose square of
    ``tile_m`` metres falls in the ``span_m`` window is pasted at its place, nearer ones last.
    """

    def __init__(
        self,
        names: Sequence[str],
        lat: Sequence[float],
        lon: Sequence[float],
        thumbnail: Callable[[str], Image.Image | None],
        tile_m: float | None = None,
        tiles_across: float = 9,
        size: int = 440,
    ):
        self.names = list(names)
        self.lat, self.lon = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
        self.thumbnail = thumbnail
        self.tile_m = tile_m or tile_spacing_m(self.lat, self.lon)
        self.span_m = tiles_across * self.tile_m
        self.size = size

    def draw(self, location: Answer | None) -> Image.Image | None:
        if location is None or not location.candidates:
            return None
        best = location.candidates[0]
        canvas = _Canvas(LocalFrame(best.lat, best.lon), self.span_m, self.size)
        picture = Image.new("RGB", (self.size, self.size), (235, 235, 235))
        x, y = canvas.pixels(self.lat, self.lon)
        side = self.tile_m / canvas.metres_per_pixel
        inside = np.flatnonzero((x > -side) & (x < self.size + side) & (y > -side) & (y < self.size + side))
        pixels = max(1, round(side))
        for i in inside[np.argsort(-np.hypot(x[inside] - self.size / 2, y[inside] - self.size / 2))]:
            tile = self.thumbnail(self.names[i])
            if tile is not None:
                picture.paste(tile.resize((pixels, pixels)), (round(x[i] - side / 2), round(y[i] - side / 2)))
        draw = ImageDraw.Draw(picture)
        canvas.mark(draw, location)
        _draw_scale_bar(draw, self.size, canvas.metres_per_pixel)
        return picture


def draw_map(axes, location: Answer, city: tuple[Sequence[float], Sequence[float]] | None = None) -> None:
    """The candidates at their coordinates, numbered by rank, with a scale bar in metres; with
    ``city`` (the gallery's latitudes and longitudes), every tile in grey beneath, all in view;
    with an area (a calibrated answer), its tiles in orange and its circle around tile 1."""
    axes.set_xticks([])
    axes.set_yticks([])
    if not location.candidates:
        return
    # Longitudes as seen from the best candidate, so that a city across the antimeridian
    # (179.99 and -179.99) is drawn whole rather than at both ends of the world.
    reference = location.candidates[0].lon

    def near(longitude: float) -> float:
        return reference + (longitude - reference + 180) % 360 - 180

    lat = [c.lat for c in location.candidates]
    lon = candidate_lon = [near(c.lon) for c in location.candidates]
    middle = math.radians(sum(lat) / len(lat))
    metres_per_degree = METRES_PER_DEGREE
    # Equal distances look equal: a degree of longitude is cos(lat) of a degree of latitude.
    axes.set_aspect(1 / max(math.cos(middle), 1e-6))
    if city is not None:
        city_lon = [near(value) for value in city[1]]
        axes.scatter(city_lon, city[0], s=3, c="lightgrey", linewidths=0)
        lat, lon = [*lat, *city[0]], [*lon, *city_lon]
    area = location.area
    if area is not None:
        from matplotlib.patches import Ellipse

        area_lon = [near(m.lon) for m in area.members]
        axes.scatter(area_lon, [m.lat for m in area.members], s=6, c="darkorange")
        lat, lon = [*lat, *(m.lat for m in area.members)], [*lon, *area_lon]
        radius_deg = area.radius_m / metres_per_degree
        axes.add_patch(
            Ellipse(
                (candidate_lon[0], location.candidates[0].lat),
                2 * radius_deg / max(math.cos(middle), 1e-6),
                2 * radius_deg,
                fill=False,
                edgecolor="darkorange",
                linewidth=1,
            )
        )
    axes.scatter(candidate_lon[1:], [c.lat for c in location.candidates[1:]], s=14, c="tab:blue")
    axes.scatter(candidate_lon[:1], [location.candidates[0].lat], s=30, c="tab:red", marker="*")
    for c, x in zip(location.candidates, candidate_lon):
        axes.annotate(str(c.rank), (x, c.lat), fontsize=6, xytext=(2, 2), textcoords="offset points")
    pad = max(max(lat) - min(lat), (max(lon) - min(lon)) * math.cos(middle), 100 / metres_per_degree) * 0.25
    axes.set_ylim(min(lat) - pad, max(lat) + pad)
    lon_pad = pad / max(math.cos(middle), 1e-6)
    axes.set_xlim(min(lon) - lon_pad, max(lon) + lon_pad)
    x0, x1 = axes.get_xlim()
    y0, y1 = axes.get_ylim()
    span_m = (x1 - x0) * metres_per_degree * math.cos(middle)
    bar_m = scale_bar_metres(span_m)
    bar_degrees = bar_m / (metres_per_degree * math.cos(middle))
    left, bottom = x0 + 0.06 * (x1 - x0), y0 + 0.08 * (y1 - y0)
    axes.plot([left, left + bar_degrees], [bottom, bottom], color="black", linewidth=2)
    axes.text(left, bottom + 0.03 * (y1 - y0), scale_label(bar_m), fontsize=6)
    axes.set_title("candidates", fontsize=7)
    axes.set_xlabel(f"{location.candidates[0].lat:.5f}, {location.candidates[0].lon:.5f}", fontsize=6)
