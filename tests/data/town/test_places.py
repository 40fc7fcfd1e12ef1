"""Places of a town: points files, streets of an OpenStreetMap extract, a minimum spacing."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cvgtext.data.town.places import Place, PointsFile, StreetsOf, StreetViewPoints, along, bearing_deg, thin
from cvgtext.data.town.splits import haversine_m
from cvgtext.utils.errors import ConfigError, DataError


def test_csv_points_with_their_optional_columns(tmp_path):
    path = tmp_path / "points.csv"
    path.write_text("\ufeffLatitude,Longitude,heading,date,id\n-27.5,153.0,370,2023-04,abc\n\n40.7,-73.9,,,\n")
    places = PointsFile(path).load()
    assert places == [Place(-27.5, 153.0, 10.0, "2023-04", "abc"), Place(40.7, -73.9)]


def test_geojson_points_and_multipoints(tmp_path):
    path = tmp_path / "points.geojson"
    features = [
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [153.0, -27.5]}, "properties": {"id": "a"}},
        {
            "type": "Feature",
            "geometry": {"type": "MultiPoint", "coordinates": [[1.0, 2.0], [3.0, 4.0]]},
            "properties": None,
        },
    ]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    assert [(p.lat, p.lon, p.ident) for p in PointsFile(path).load()] == [
        (-27.5, 153.0, "a"),
        (2.0, 1.0, None),
        (4.0, 3.0, None),
    ]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("p.csv", "lat,lon\n91,10\n", r"p.csv, line 2: coordinates \(91.0, 10.0\) are not a latitude"),
        ("p.csv", "lat,lon\nabc,10\n", r"p.csv, line 2: expected numbers in the lat and lon columns"),
        ("p.csv", "name,lon\nx,10\n", r"p.csv has no latitude column \(expected one of lat, latitude, y"),
        ("p.csv", "", "p.csv is empty"),
        (
            "p.geojson",
            '{"type": "FeatureCollection", "features": [{"geometry": {"type": "LineString"}}]}',
            "feature 0: a LineString geometry",
        ),
        ("p.geojson", "{not json", "p.geojson is not valid GeoJSON"),
        ("p.csv", "lat,lon,heading\n1,2,north\n", "heading 'north' is not a number of degrees"),
    ],
)
def test_a_bad_points_file_is_named_with_the_line(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=message):
        PointsFile(tmp_path / name).load()


def test_points_need_a_file():
    with pytest.raises(ConfigError, match="places=points needs places.file"):
        PointsFile(None)
    with pytest.raises(DataError, match="does not exist"):
        PointsFile("/nowhere/points.csv").load()


def test_street_view_places_need_a_folder():
    with pytest.raises(ConfigError, match="places=street_views takes its places from a folder"):
        StreetViewPoints().load(object())


@pytest.mark.parametrize("seed", range(5))
def test_thinning_keeps_the_spacing_and_drops_only_near_places(seed):
    rng = np.random.default_rng(seed)
    lat0, lon0 = (-33.87, 151.21) if seed % 2 else (59.33, 18.06)
    lat = lat0 + rng.uniform(0, 0.003, 300)
    lon = lon0 + rng.uniform(0, 0.003, 300)
    places = [Place(a, b, ident=str(i)) for i, (a, b) in enumerate(zip(lat, lon))]
    kept = thin(places, 20.0)
    k_lat, k_lon = np.array([p.lat for p in kept]), np.array([p.lon for p in kept])
    distance = haversine_m(k_lat[:, None], k_lon[:, None], k_lat[None], k_lon[None]) + np.eye(len(kept)) * 1e9
    assert distance.min() >= 20.0 * 0.999
    dropped = [p for p in places if p not in kept]
    assert dropped and all(haversine_m(p.lat, p.lon, k_lat, k_lon).min() < 20.0 * 1.001 for p in dropped)


def test_points_along_a_line_keep_their_spacing_and_heading():
    line = [(0.0, 0.0), (0.0, 0.001), (0.001, 0.001)]  # east about 111 m, then north about 111 m
    points = along(line, 25.0, 12.5)
    assert [p.heading for p in points[:4]] == [90.0] * 4 and points[-1].heading == 0.0
    steps = [haversine_m(a.lat, a.lon, b.lat, b.lon) for a, b in zip(points, points[1:])]
    straight = [s for (a, b), s in zip(zip(points, points[1:]), steps) if a.heading == b.heading]
    assert straight == pytest.approx([25.0] * len(straight), rel=1e-3)
    assert len(points) == math.floor((222.4 - 12.5) / 25) + 1
    assert bearing_deg(0, 0, -1, 0) == pytest.approx(180)


OSM_XML = """<?xml version='1.0' encoding='UTF-8'?>
<osm version="0.6" generator="test">
  <node id="1" lat="-27.4700" lon="153.0200" version="1"/>
  <node id="2" lat="-27.4700" lon="153.0220" version="1"/>
  <node id="3" lat="-27.4720" lon="153.0220" version="1"/>
  <node id="4" lat="-27.4800" lon="153.0300" version="1"/>
  <node id="5" lat="-27.4800" lon="153.0320" version="1"/>
  <way id="10" version="1"><nd ref="1"/><nd ref="2"/><tag k="highway" v="residential"/></way>
  <way id="11" version="1"><nd ref="2"/><nd ref="3"/><tag k="highway" v="footway"/></way>
  <way id="12" version="1"><nd ref="4"/><nd ref="5"/><tag k="highway" v="primary"/></way>
  <way id="13" version="1"><nd ref="1"/><nd ref="3"/><tag k="building" v="yes"/></way>
</osm>
"""


def test_streets_of_an_extract_are_sampled_inside_the_box(tmp_path):
    pytest.importorskip("osmium")
    path = tmp_path / "town.osm"
    path.write_text(OSM_XML)
    places = StreetsOf(path, spacing_m=40.0).load()
    # the residential street (about 197 m) and the primary road; not the footway, not the building
    assert len(places) == 5 + 5
    assert {p.heading for p in places} == {90.0}
    boxed = StreetsOf(path, spacing_m=40.0, bbox=[153.019, -27.475, 153.025, -27.465]).load()
    assert len(boxed) == 5 and all(p.lon < 153.025 for p in boxed)


def test_streets_settings_and_a_bad_extract_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"places.bbox=\[1, 2, 0, 3\] must be \[west, south, east, north\]"):
        StreetsOf("x.osm", 30, bbox=[1, 2, 0, 3])
    with pytest.raises(ConfigError, match="places=streets needs places.osm_file"):
        StreetsOf(None, 30)
    pytest.importorskip("osmium")
    (tmp_path / "bad.osm").write_text("<osm><node id=")
    with pytest.raises(DataError, match="bad.osm cannot be read"):
        StreetsOf(tmp_path / "bad.osm", 30).load()
