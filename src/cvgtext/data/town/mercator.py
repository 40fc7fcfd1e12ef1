"""Web Mercator (EPSG:3857) pixel arithmetic: tiles stitched and cropped exactly on a point.

At zoom ``z`` the world is ``2**z`` tiles of ``tile_px`` pixels a side; a point's global pixel
position is fractional. :func:`crop_on_point` fetches the tiles around that position, stitches
them and resamples the square of ``crop_px`` source pixels centred on the point (a fractional
box: no rounding to whole pixels) to ``size`` pixels, so the point lies at the centre of the
output, ``(size / 2, size / 2)`` in continuous pixel coordinates. Tile indices and the
projection come from ``mercantile``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import mercantile
from PIL import Image

from cvgtext.utils.errors import DataError

# Web Mercator's latitude limit: the square world of the tile pyramid.
MAX_LAT = 85.0511287798066
_HALF_WORLD_M = math.pi * 6378137.0  # the projection's half circumference
# Extra source pixels on each side of a crop, for the resampling filter's support.
_MARGIN_PX = 4

Tile = Callable[[int, int, int], Image.Image]  # (z, x, y) -> the tile's image


class OutOfRange(DataError):
    """A point outside what a tile source covers (the Mercator square, its zooms or bounds)."""


def metres_per_pixel(lat: float, zoom: int, tile_px: int = 256) -> float:
    """Ground metres a pixel covers at ``lat`` and ``zoom`` (tiles of ``tile_px`` pixels)."""
    return 2 * _HALF_WORLD_M * math.cos(math.radians(lat)) / (tile_px * 2**zoom)


def check_in_mercator(lat: float, lon: float) -> None:
    """Refuse a point that Web Mercator cannot show."""
    if not (abs(lat) <= MAX_LAT and -180 <= lon <= 180):
        raise OutOfRange(
            f"the point ({lat}, {lon}) is outside the range of Web Mercator tiles "
            f"(latitudes within ±{MAX_LAT:.4f}, longitudes within ±180)"
        )


def global_pixel(lat: float, lon: float, zoom: int, tile_px: int) -> tuple[float, float]:
    """The point's position in the whole map at ``zoom``, in pixels from the north-west corner."""
    check_in_mercator(lat, lon)
    x_m, y_m = mercantile.xy(lon, lat)
    world_px = tile_px * 2**zoom
    return (x_m + _HALF_WORLD_M) / (2 * _HALF_WORLD_M) * world_px, (_HALF_WORLD_M - y_m) / (
        2 * _HALF_WORLD_M
    ) * world_px


def crop_on_point(
    tile: Tile, lat: float, lon: float, zoom: int, crop_px: float, size: int, tile_px: int = 256
) -> Image.Image:
    """``size`` x ``size`` RGB image of the ``crop_px`` source pixels centred on the point.

    ``tile(z, x, y)`` returns one tile of ``tile_px`` pixels. Beyond the poles the mosaic is
    black. The box is resampled with Lanczos from its exact fractional corners.
    """
    x, y = global_pixel(lat, lon, zoom, tile_px)
    half = crop_px / 2 + _MARGIN_PX
    first_column, first_row = math.floor((x - half) / tile_px), math.floor((y - half) / tile_px)
    columns = math.floor((x + half) / tile_px) - first_column + 1
    rows = math.floor((y + half) / tile_px) - first_row + 1
    mosaic = Image.new("RGB", (columns * tile_px, rows * tile_px))
    for row in range(rows):
        if not 0 <= first_row + row < 2**zoom:
            continue
        for column in range(columns):
            image = tile(zoom, (first_column + column) % 2**zoom, first_row + row)
            if image.size != (tile_px, tile_px):
                raise DataError(
                    f"tile {zoom}/{(first_column + column) % 2**zoom}/{first_row + row} is "
                    f"{image.width} x {image.height} pixels; the source's tile_px is {tile_px}"
                )
            mosaic.paste(image.convert("RGB"), (column * tile_px, row * tile_px))
    left, top = x - crop_px / 2 - first_column * tile_px, y - crop_px / 2 - first_row * tile_px
    return mosaic.resize((size, size), Image.Resampling.LANCZOS, box=(left, top, left + crop_px, top + crop_px))
