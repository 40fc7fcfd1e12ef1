"""Tile sources: an XYZ service asked politely (User-Agent, pace, cache, retries), MBTiles and
PMTiles files, and every failure named."""

from __future__ import annotations

import io
import sqlite3
import time

import pytest
from PIL import Image

from cvgtext.data.town.http import SourceUnreachable
from cvgtext.data.town.mercator import OutOfRange
from cvgtext.data.town.places import LeftOut
from cvgtext.data.town.tile_sources import MBTilesSource, PMTilesSource, XYZSource, open_tile_source
from cvgtext.utils.errors import ConfigError, DataError
from helpers.tile_server import TileServer, blob_tiles
from helpers.web import free_port

AGENT = "cvgtext-test/1.0 (+tests)"


def xyz(url, tmp_path, **settings):
    options = {"user_agent": AGENT, "min_interval_s": 0.0, "retries": 1, "backoff_s": 0.0, "timeout_s": 5.0}
    return XYZSource(url, tmp_path / "tiles", **{**options, **settings})


def png(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (256, 256), colour).save(buffer, "PNG")
    return buffer.getvalue()


def test_tiles_are_fetched_once_with_the_user_agent_and_cached(tmp_path):
    with TileServer(blob_tiles([])) as server:
        source = xyz(server.url("sat"), tmp_path)
        first = source.tile(5, 3, 7)
        again = xyz(server.url("sat"), tmp_path).tile(5, 3, 7)  # another run, the same cache
    assert len(server.requests) == 1
    assert server.requests[0]["path"] == "/sat/5/3/7.png" and server.requests[0]["headers"]["User-Agent"] == AGENT
    assert first.tobytes() == again.tobytes()


def test_the_cache_keeps_each_zoom_and_template_apart(tmp_path):
    markers = [(0.1, 0.1)]
    with TileServer(blob_tiles(markers)) as server:
        near = xyz(server.url("sat"), tmp_path).tile(19, 262289, 261998)
        far = xyz(server.url("sat"), tmp_path).tile(18, 262289, 261998)
        other = xyz(server.url("osm"), tmp_path).tile(19, 262289, 261998)
    assert [r["path"] for r in server.requests] == [
        "/sat/19/262289/261998.png",
        "/sat/18/262289/261998.png",
        "/osm/19/262289/261998.png",
    ]
    assert near.tobytes() != far.tobytes() and near.tobytes() == other.tobytes()


def test_requests_keep_the_minimum_interval(tmp_path):
    with TileServer(blob_tiles([])) as server:
        source = xyz(server.url("sat"), tmp_path, min_interval_s=0.2)
        starts = []
        for x in range(4):
            starts.append(time.monotonic())
            source.tile(4, x, 0)
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert all(gap >= 0.19 for gap in gaps[1:]), gaps


def test_a_missing_tile_an_error_and_garbage_are_named_and_not_cached(tmp_path):
    with TileServer(
        blob_tiles([]), fail={"/sat/3/1/1.png": 404, "/sat/3/1/2.png": 503}, garbage=["/sat/3/1/3.png"]
    ) as server:
        source = xyz(server.url("sat"), tmp_path)
        with pytest.raises(LeftOut, match=r"tile 3/1/1 of .*: the service has none \(HTTP 404\)") as missing:
            source.tile(3, 1, 1)
        with pytest.raises(LeftOut, match=r"tile 3/1/2 of .*: HTTP 503 after 2 tries") as failed:
            source.tile(3, 1, 2)
        with pytest.raises(LeftOut, match=r"tile 3/1/3 of .* is not an image") as garbage:
            source.tile(3, 1, 3)
        assert [missing.value.reason, failed.value.reason, garbage.value.reason] == [
            "tile_missing",
            "tile_failed",
            "tile_unreadable",
        ]
        paths = [r["path"] for r in server.requests]
        assert paths.count("/sat/3/1/2.png") == 2  # retried once
        server.garbage.clear()
        source.tile(3, 1, 3)  # nothing bad was cached: asked again, and now an image
    assert [p.relative_to(p.parents[2]).as_posix() for p in (tmp_path / "tiles").glob("*/3/1/*")] == ["3/1/3"]


def test_an_unreachable_service_stops_with_its_url(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/{{z}}/{{x}}/{{y}}.png"
    source = xyz(url, tmp_path)
    with pytest.raises(
        SourceUnreachable, match=r"the tile service at http://127.0.0.1:\d+/\{z\}/\{x\}/\{y\}.png is unreachable"
    ):
        source.tile(1, 0, 0)
    sent = source.client.sent
    with pytest.raises(SourceUnreachable):
        source.tile(1, 1, 0)
    assert source.client.sent == sent  # known unreachable: not asked again


def test_a_key_comes_from_the_environment_and_goes_nowhere(tmp_path, monkeypatch):
    with TileServer(blob_tiles([])) as server:
        url = server.url("sat").replace(".png", ".png?key={key}")
        with pytest.raises(ConfigError, match="name the environment variable"):
            xyz(url, tmp_path)
        source = xyz(url, tmp_path, key_env="TILE_KEY")
        with pytest.raises(ConfigError, match="environment variable TILE_KEY, which is not set"):
            source.tile(2, 1, 1)
        monkeypatch.setenv("TILE_KEY", "s3cret")
        source.tile(2, 1, 1)
    assert server.requests[0]["path"] == "/sat/2/1/1.png?key=s3cret"
    stored = [str(p) for p in (tmp_path / "tiles").rglob("*")]
    assert stored and not any("s3cret" in p for p in stored) and "s3cret" not in str(source.describe())


def test_templates_with_tms_rows_subdomains_and_quadkeys(tmp_path):
    source = xyz("https://{s}.example.org/{z}/{x}/{-y}/{q}.png", tmp_path, subdomains="ab")
    assert source.tile_url(3, 1, 2) == "https://b.example.org/3/1/5/021.png"


def write_mbtiles(path, tiles: dict, **metadata):
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE metadata (name text, value text)")
    db.execute("CREATE TABLE tiles (zoom_level integer, tile_column integer, tile_row integer, tile_data blob)")
    db.executemany("INSERT INTO metadata VALUES (?, ?)", metadata.items())
    for (z, x, y), data in tiles.items():
        db.execute("INSERT INTO tiles VALUES (?, ?, ?, ?)", (z, x, 2**z - 1 - y, data))
    db.commit()
    db.close()


def test_mbtiles_rows_count_from_the_south_and_bounds_are_kept(tmp_path):
    path = tmp_path / "town.mbtiles"
    write_mbtiles(path, {(2, 1, 0): png("red"), (2, 1, 3): png("blue")}, minzoom="2", maxzoom="2", bounds="0,-10,20,10")
    source = open_tile_source(str(path), tmp_path, "the map tile source")
    assert isinstance(source, MBTilesSource)
    assert source.tile(2, 1, 0).getpixel((5, 5)) == (255, 0, 0)
    assert source.tile(2, 1, 3).getpixel((5, 5)) == (0, 0, 255)
    with pytest.raises(LeftOut, match="tile 2/2/2 is not in the map tile source"):
        source.tile(2, 2, 2)
    source.check_point(5.0, 10.0, 2)
    with pytest.raises(OutOfRange, match=r"the point \(30.0, 10.0\) is outside .*bounds \[0.0, -10.0, 20.0, 10.0\]"):
        source.check_point(30.0, 10.0, 2)
    with pytest.raises(OutOfRange, match="has zooms 2-2; zoom 19 was asked for"):
        source.check_point(5.0, 10.0, 19)


def test_pmtiles_are_read_with_their_zooms(tmp_path):
    from pmtiles.tile import Compression, TileType, zxy_to_tileid
    from pmtiles.writer import write

    path = tmp_path / "town.pmtiles"
    with write(str(path)) as writer:
        writer.write_tile(zxy_to_tileid(3, 4, 2), png("green"))
        writer.write_tile(zxy_to_tileid(4, 8, 5), png("white"))
        header = {"tile_type": TileType.PNG, "tile_compression": Compression.NONE}
        header.update({"min_lon_e7": 0, "min_lat_e7": 0, "max_lon_e7": 900000000, "max_lat_e7": 800000000})
        header.update({"center_zoom": 3, "center_lon_e7": 0, "center_lat_e7": 0})
        writer.finalize(header, {"attribution": "test"})
    source = open_tile_source(str(path), tmp_path, "the satellite tile source")
    assert isinstance(source, PMTilesSource) and (source.min_zoom, source.max_zoom) == (3, 4)
    assert source.tile(3, 4, 2).getpixel((0, 0)) == (0, 128, 0)
    with pytest.raises(LeftOut, match="tile 3/0/0 is not in the satellite tile source"):
        source.tile(3, 0, 0)
    with pytest.raises(OutOfRange, match="outside the satellite tile source .* bounds"):
        source.check_point(-5.0, 10.0, 3)


@pytest.mark.parametrize(
    "url, message",
    [
        ("ftp://example.org/{z}/{x}/{y}.png", "is neither an http"),
        ("https://example.org/tiles.png", "is neither an http"),
    ],
)
def test_a_url_that_names_no_source_is_refused(tmp_path, url, message):
    with pytest.raises(ConfigError, match=message):
        open_tile_source(url, tmp_path, "the map tile source", user_agent=AGENT)


def test_a_missing_tile_file_is_named(tmp_path):
    with pytest.raises(DataError, match=r"MBTiles file .*nowhere.mbtiles does not exist"):
        open_tile_source(str(tmp_path / "nowhere.mbtiles"), tmp_path, "x")
    (tmp_path / "bad.mbtiles").write_text("not sqlite")
    with pytest.raises(DataError, match="cannot be read"):
        open_tile_source(str(tmp_path / "bad.mbtiles"), tmp_path, "x")
