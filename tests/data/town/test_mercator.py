"""Tiles stitched and cropped on a point: the point at the crop's centre, to the pixel, north and
south of the equator, checked against Web Mercator written apart from the project's code."""

from __future__ import annotations

import math

import pytest

from cvgtext.data.town.mercator import OutOfRange, crop_on_point, global_pixel, metres_per_pixel
from helpers.tile_server import blob_tiles, bright_centroid, world_pixel

# (lat, lon): Manhattan, and Brisbane south of the equator
PLACES = [(40.75290377, -73.97958215), (-27.46981234, 153.02511111)]
# the release's satellite tiles (zoom 20, 512 px) and map tiles (zoom 19, 256 px resized to 512)
LAYERS = [(20, 512, 512), (19, 256, 512)]


def fetcher(markers):
    draw = blob_tiles(markers)
    return lambda z, x, y: draw("sat", z, x, y)


@pytest.mark.parametrize("lat, lon", PLACES)
def test_the_global_pixel_is_web_mercator(lat, lon):
    for zoom in (0, 12, 19, 20):
        assert global_pixel(lat, lon, zoom, 256) == pytest.approx(world_pixel(lat, lon, zoom), abs=1e-6)


@pytest.mark.parametrize("lat, lon", PLACES)
@pytest.mark.parametrize("zoom, crop_px, size", LAYERS)
def test_the_crop_is_centred_on_the_point_within_a_pixel(lat, lon, zoom, crop_px, size):
    crop = crop_on_point(fetcher([(lat, lon)]), lat, lon, zoom, crop_px, size)
    assert crop.size == (size, size)
    x, y = bright_centroid(crop)
    # within a pixel, as the release asks; a quarter, so that a half-pixel slip is caught too
    assert abs(x - size / 2) < 0.25 and abs(y - size / 2) < 0.25, (x, y)


@pytest.mark.parametrize("lat, lon", PLACES)
def test_north_is_up_east_is_right_at_the_ground_scale(lat, lon):
    """A marker 15 m east and 10 m north of the point lies where the ground scale puts it."""
    east_m, north_m = 15.0, 10.0
    marker = (lat + north_m / 111_195.0, lon + east_m / (111_195.0 * math.cos(math.radians(lat))))
    zoom, crop_px, size = LAYERS[1]
    crop = crop_on_point(fetcher([marker]), lat, lon, zoom, crop_px, size)
    metres_per_output_px = metres_per_pixel(lat, zoom) * crop_px / size
    x, y = bright_centroid(crop)
    assert x - size / 2 == pytest.approx(east_m / metres_per_output_px, abs=1.5)
    assert size / 2 - y == pytest.approx(north_m / metres_per_output_px, abs=1.5)


def test_a_crop_across_the_antimeridian_takes_tiles_from_both_ends():
    lat, lon = -16.5, 179.99999  # Fiji: a few pixels from the date line at zoom 20
    asked = []
    draw = fetcher([(lat, lon)])

    def tile(z, x, y):
        asked.append(x)
        return draw(z, x, y)

    crop = crop_on_point(tile, lat, lon, 20, 512, 512)
    assert {0, 2**20 - 1} <= set(asked)
    x, y = bright_centroid(crop)
    assert abs(x - 256) < 1 and abs(y - 256) < 1


@pytest.mark.parametrize("lat, lon", [(86.0, 10.0), (-89.9, 0.0), (10.0, 181.0)])
def test_a_point_outside_web_mercator_is_named(lat, lon):
    with pytest.raises(OutOfRange, match=rf"\({lat}, {lon}\) is outside the range of Web Mercator"):
        crop_on_point(fetcher([]), lat, lon, 20, 512, 512)


def test_a_tile_of_another_size_is_refused():
    from PIL import Image

    from cvgtext.utils.errors import DataError

    with pytest.raises(DataError, match="is 512 x 512 pixels; the source's tile_px is 256"):
        crop_on_point(lambda z, x, y: Image.new("RGB", (512, 512)), 0.0, 0.0, 3, 100, 100)
