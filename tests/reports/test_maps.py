"""The page's maps: the city drawn once, each answer's marks on a copy; the neighbourhood from
the city's own tiles at their coordinates; distances to scale."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cvgtext.reports.locations import Area, AreaPlace, Candidate, Location
from cvgtext.reports.maps import CityMap, LocalFrame, Neighbourhood, scale_bar_metres, tile_spacing_m

METRES_PER_DEGREE_LAT = 111_194.93


def grid(rows: int, columns: int, spacing_m: float, lat0: float = -27.47, lon0: float = 153.0):
    """A regular grid of places ``spacing_m`` apart."""
    lat, lon = [], []
    for r in range(rows):
        for c in range(columns):
            lat.append(lat0 + r * spacing_m / METRES_PER_DEGREE_LAT)
            lon.append(lon0 + c * spacing_m / (METRES_PER_DEGREE_LAT * np.cos(np.radians(lat0))))
    return np.array(lat), np.array(lon)


def answer(lat, lon, ranks=(12, 13, 30), area=(12, 13, 14, 30), radius_m=250.0) -> Location:
    candidates = [Candidate(r + 1, f"{i}.jpg", lat[i], lon[i], 0.5, 0.0) for r, i in enumerate(ranks)]
    members = [AreaPlace(f"{i}.jpg", lat[i], lon[i], 0.2) for i in area]
    return Location("a church", candidates, area=Area(0.8, len(members), radius_m, members))


def test_tile_spacing_is_the_grids():
    lat, lon = grid(20, 20, 100.0)
    assert tile_spacing_m(lat, lon) == pytest.approx(100.0, rel=0.06)


def test_the_city_is_drawn_once_and_each_answer_marks_a_copy():
    lat, lon = grid(10, 10, 100.0)
    city = CityMap(lat, lon, size=200)
    base = np.asarray(city.base).copy()
    drawn = np.asarray(city.draw(answer(lat, lon)))
    assert np.array_equal(np.asarray(city.base), base)  # the base is never drawn on
    assert city.draw(None) is None
    # tile 1 is a red disc at its place; a tile far from every mark keeps its grey dot
    x, y = (int(round(float(v))) for v in city.canvas.pixels(lat[12], lon[12]))
    assert tuple(drawn[y, x]) == (214, 39, 40)
    x, y = (int(round(float(v))) for v in city.canvas.pixels(lat[99], lon[99]))
    assert tuple(drawn[y, x]) == tuple(base[y, x]) == (185, 185, 185)
    # the area's circle: orange pixels about radius_m from tile 1, to scale
    cx, cy = city.canvas.pixels(lat[12], lon[12])
    ys, xs = np.nonzero((drawn == (255, 140, 0)).all(axis=2))
    far = np.hypot(xs - cx, ys - cy) * city.canvas.metres_per_pixel
    assert far.max() == pytest.approx(250, abs=3 * city.canvas.metres_per_pixel)


def test_a_city_across_the_antimeridian_is_drawn_whole():
    lat = np.array([-16.5, -16.501, -16.499])
    lon = np.array([179.999, -179.998, 179.996])
    city = CityMap(lat, lon, size=200)
    x, y = city.canvas.pixels(lat, lon)
    assert ((x > 0) & (x < 200) & (y > 0) & (y < 200)).all()
    assert city.canvas.metres_per_pixel * 200 < 2000  # metres, not the width of the world


def test_the_neighbourhood_is_the_citys_tiles_at_their_places():
    lat, lon = grid(10, 10, 100.0)
    names = [f"{i}.jpg" for i in range(100)]
    colours = {name: (i * 2, 255 - i * 2, (i * 37) % 256) for i, name in enumerate(names)}
    asked = []

    def thumbnail(name):
        asked.append(name)
        return Image.new("RGB", (16, 16), colours[name])

    around = Neighbourhood(names, lat, lon, thumbnail, tile_m=100.0, tiles_across=5, size=250)
    picture = np.asarray(around.draw(answer(lat, lon, ranks=(44,), area=(44,), radius_m=0.0)))
    canvas_m = 500 / 250  # metres per pixel: 5 tiles of 100 m across 250 px
    assert set(asked) < set(names) and "44.jpg" in asked and "0.jpg" not in asked  # only what is in view
    frame = LocalFrame(lat[44], lon[44])
    for i in (33, 35, 53, 55, 45):  # neighbours of tile 1, at their offsets
        east, north = frame.metres(lat[i], lon[i])
        x, y = round(125 + float(east) / canvas_m), round(125 - float(north) / canvas_m)
        assert tuple(picture[y, x]) == colours[names[i]], i


def test_scale_bars_are_round_lengths():
    assert [scale_bar_metres(span) for span in (90, 450, 2000, 9000)] == [20, 100, 500, 2000]
