"""Street views from a folder (names or a CSV) and from a service behind a key that is never stored."""

from __future__ import annotations

import csv
import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from cvgtext.data.town.places import LeftOut, Place
from cvgtext.data.town.street_views import StreetViewFolder, TemplateService
from cvgtext.utils.errors import ConfigError, DataError
from helpers.town import street_view

PANORAMA = "-33.87000000,151.21000000_2024-03_abc-DEF_d62_z3.jpg"


def test_release_names_give_the_point_date_id_and_heading(tmp_path):
    street_view(["DELI"]).save(tmp_path / PANORAMA)
    street_view([], (300, 300)).save(tmp_path / "-33.8705,151.2105_my photo.png")
    places = StreetViewFolder(tmp_path).index()
    assert places[0] == Place(-33.87, 151.21, 62.0, "2024-03", "abc-DEF", tmp_path / PANORAMA)
    assert (places[1].lat, places[1].lon, places[1].ident, places[1].date) == (-33.8705, 151.2105, "my photo", None)
    views = [StreetViewFolder(tmp_path).fetch(place).view for place in places]
    assert views == ["panorama", "single"]


def test_a_csv_gives_coordinates_and_views_to_any_names(tmp_path):
    street_view([]).save(tmp_path / "IMG_0001.jpg")
    street_view([]).save(tmp_path / "a,b.jpg")
    with open(tmp_path / "views.csv", "w", newline="") as stream:
        table = csv.writer(stream)
        table.writerows([["file", "lat", "lon", "view", "date"], ["IMG_0001.jpg", -33.87, 151.21, "single", "2023-01"]])
        table.writerow(["a,b.jpg", -33.88, 151.22, "", ""])
    folder = StreetViewFolder(tmp_path, tmp_path / "views.csv")
    first, second = folder.index()
    assert (first.lat, first.ident, first.date, second.ident) == (-33.87, "IMG_0001", "2023-01", "a,b")
    assert folder.fetch(first).view == "single" and folder.fetch(second).view == "panorama"  # 2:1, no view given


@pytest.mark.parametrize(
    "rows, message",
    [
        ([["file", "lat", "lon"], ["gone.jpg", 1, 2]], "names 'gone.jpg', which is not an image of"),
        (
            [["file", "lat", "lon", "view"], ["x.jpg", 1, 2, "aerial"]],
            "view 'aerial' of 'x.jpg' is not one of panorama, single",
        ),
    ],
)
def test_a_bad_csv_is_named(tmp_path, rows, message):
    street_view([]).save(tmp_path / "x.jpg")
    with open(tmp_path / "views.csv", "w", newline="") as stream:
        csv.writer(stream).writerows(rows)
    with pytest.raises(DataError, match=message):
        StreetViewFolder(tmp_path, tmp_path / "views.csv").index()


def test_a_name_without_coordinates_says_what_to_do(tmp_path):
    street_view([]).save(tmp_path / "IMG_0001.jpg")
    with pytest.raises(DataError, match="IMG_0001.jpg.*name the images lat,lon_... or list them in a CSV"):
        StreetViewFolder(tmp_path).index()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no image"):
        StreetViewFolder(tmp_path / "empty").index()


def test_points_take_the_nearest_image_within_the_distance(tmp_path):
    street_view([]).save(tmp_path / PANORAMA)
    folder = StreetViewFolder(tmp_path, max_distance_m=15)
    assert folder.fetch(Place(-33.87005, 151.21005)).ident == "abc-DEF"  # about 7 m away
    with pytest.raises(LeftOut, match="no street view of .* lies within 15 m of") as far:
        folder.fetch(Place(-33.8705, 151.21))
    assert far.value.reason == "no_street_view"


def test_an_image_serves_the_first_place_it_is_nearest_to(tmp_path):
    street_view([]).save(tmp_path / PANORAMA)
    folder = StreetViewFolder(tmp_path, max_distance_m=15)
    first, second, far = Place(-33.87005, 151.21005), Place(-33.86995, 151.20995), Place(-33.9, 151.2)
    folder.claim([first, second, far])
    assert folder.fetch(first).ident == "abc-DEF"
    with pytest.raises(LeftOut, match=f"the street view {tmp_path / PANORAMA} is nearer to place") as taken:
        folder.fetch(second)
    assert taken.value.reason == "street_view_taken"


def test_an_unreadable_image_is_named(tmp_path):
    (tmp_path / PANORAMA).write_bytes(b"\xff\xd8 not really")
    with pytest.raises(LeftOut, match=f"street view {tmp_path / PANORAMA} cannot be read as an image") as bad:
        StreetViewFolder(tmp_path).fetch(StreetViewFolder(tmp_path).index()[0])
    assert bad.value.reason == "street_view_unreadable"


class StreetViewServer:
    """Answers /image?lat=..&lon=..&key=.. with a photo when the key is right, 404 at (0, 0)."""

    def __init__(self):
        self.requests = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                query = parse_qs(urlsplit(self.path).query)
                server.requests.append(self.path)
                status, body = 200, io.BytesIO()
                if query.get("key") != ["s3cret"]:
                    status = 403
                elif query["lat"] == ["0.0000000"]:
                    status = 404
                else:
                    street_view(["FLORIST"], (320, 240)).save(body, "JPEG")
                self.send_response(status)
                self.send_header("Content-Length", str(len(body.getvalue())))
                self.end_headers()
                self.wfile.write(body.getvalue())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.url = (
            f"http://127.0.0.1:{self.httpd.server_address[1]}/image?lat={{lat}}&lon={{lon}}&h={{heading}}&key={{key}}"
        )

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_a_service_is_asked_once_per_place_with_the_key_from_the_environment(tmp_path, monkeypatch):
    with StreetViewServer() as server:
        service = TemplateService(server.url, "SV_KEY", "single", tmp_path / "cache", "cvgtext-test/1.0", retries=0)
        with pytest.raises(ConfigError, match="needs its key in the environment variable SV_KEY"):
            service.fetch(Place(-33.87, 151.21, 90.0))
        monkeypatch.setenv("SV_KEY", "s3cret")
        first = service.fetch(Place(-33.87, 151.21, 90.0))
        again = TemplateService(server.url, "SV_KEY", "single", tmp_path / "cache", "x/1", retries=0).fetch(
            Place(-33.87, 151.21, 90.0)
        )
        with pytest.raises(LeftOut, match=r"the street view at .*: the service has none \(HTTP 404\)") as none:
            service.fetch(Place(0.0, 0.0))
    assert first.view == "single" and first.image.size == (320, 240) and again.image.tobytes() == first.image.tobytes()
    assert server.requests == [
        "/image?lat=-33.8700000&lon=151.2100000&h=90&key=s3cret",
        "/image?lat=0.0000000&lon=0.0000000&h=0&key=s3cret",
    ]
    assert none.value.reason == "no_street_view"
    stored = [p.name for p in (tmp_path / "cache").rglob("*")]
    assert stored and not any("s3cret" in name for name in stored) and "s3cret" not in str(service.describe())


def test_a_service_needs_a_template():
    with pytest.raises(
        ConfigError, match=r"street_views.url=None must be an http\(s\) template with \{lat\} and \{lon\}"
    ):
        TemplateService(None, None, "single", "/tmp", "x/1")
    with pytest.raises(ConfigError, match="street_views.view='fisheye' is not one of panorama, single"):
        TemplateService("http://x/{lat}/{lon}", None, "fisheye", "/tmp", "x/1")
