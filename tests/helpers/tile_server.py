"""A fake XYZ tile server on 127.0.0.1, with tiles the test draws, and where points fall on them.

``/<layer>/<z>/<x>/<y>.png`` is answered with ``draw(layer, z, x, y)`` (None: HTTP 404). The
server counts requests and keeps their headers; ``fail`` maps a tile path to a status it answers
instead (500: retried by the client), ``garbage`` lists paths answered with bytes that are no
image. :func:`world_pixel` is written from the Web Mercator formulas, apart from the project's
code, so that the crops can be checked against it.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from helpers.servers import LocalServer, QuietHandler

Draw = Callable[[str, int, int, int], "Image.Image | None"]


def world_pixel(lat: float, lon: float, zoom: int, tile_px: int = 256) -> tuple[float, float]:
    """A point's position in the whole Web Mercator map, pixels from the north-west corner."""
    world = tile_px * 2**zoom
    phi = math.radians(lat)
    return (lon + 180) / 360 * world, (1 - math.log(math.tan(phi) + 1 / math.cos(phi)) / math.pi) / 2 * world


def blob_tiles(markers: Sequence[tuple[float, float]], tile_px: int = 256, sigma_px: float = 2.0) -> Draw:
    """Tiles on a grey ground with a white Gaussian blob centred exactly (to the sub-pixel) on
    each marker ``(lat, lon)``, evaluated at the pixels' centres."""

    def draw(layer: str, z: int, x: int, y: int) -> Image.Image:
        grid = np.arange(tile_px) + 0.5
        value = np.zeros((tile_px, tile_px))
        for lat, lon in markers:
            mx, my = world_pixel(lat, lon, z, tile_px)
            mx, my = mx - x * tile_px, my - y * tile_px
            if -8 * sigma_px < mx < tile_px + 8 * sigma_px and -8 * sigma_px < my < tile_px + 8 * sigma_px:
                value += np.exp(-((grid[None] - mx) ** 2 + (grid[:, None] - my) ** 2) / (2 * sigma_px**2))
        grey = (60 + 190 * np.clip(value, 0, 1)).astype(np.uint8)
        return Image.fromarray(np.stack([grey] * 3, -1))

    return draw


def bright_centroid(image: Image.Image, threshold: int = 90) -> tuple[float, float]:
    """Intensity-weighted centre of the pixels brighter than the ground, in continuous pixel
    coordinates (a pixel's centre is at +0.5)."""
    grey = np.asarray(image.convert("L"), dtype=float)
    weight = np.clip(grey - 60, 0, None) * (grey > threshold)
    ys, xs = np.indices(grey.shape)
    return float((weight * (xs + 0.5)).sum() / weight.sum()), float((weight * (ys + 0.5)).sum() / weight.sum())


class TileServer(LocalServer):
    def __init__(self, draw: Draw, fail: dict[str, int] | None = None, garbage: Sequence[str] = ()):
        self.draw, self.fail, self.garbage = draw, dict(fail or {}), set(garbage)
        server = self

        class Handler(QuietHandler):
            def do_GET(self):
                server.record({"path": self.path, "headers": dict(self.headers)})
                status, body = server.answer(self.path)
                self.send_response(status)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        super().__init__(Handler)

    def url(self, layer: str) -> str:
        return f"{self.root}/{layer}/{{z}}/{{x}}/{{y}}.png"

    def answer(self, path: str) -> tuple[int, bytes]:
        if path in self.fail:
            return self.fail[path], b""
        if path in self.garbage:
            return 200, b"<html>not a tile</html>"
        try:
            layer, z, x, y = path.split("?")[0].strip("/").removesuffix(".png").split("/")
            image = self.draw(layer, int(z), int(x), int(y))
        except ValueError:
            return 400, b""
        if image is None:
            return 404, b""
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        return 200, buffer.getvalue()
