"""Drawing one synthetic place three ways: satellite-like tile, map-like tile and street view.

All three are drawn from the same :class:`~cvgtext.data.synthetic.scene.Scene`. Roads, corner features
(landmark, park, pitch, parking) and water appear in all three; the building colour only in the
satellite tile and the street view (a map does not show it); shop signs and weather only in the
street view. Tile geometry is in tile units: ``u`` points east and ``v`` south, both in ``[-0.5, 0.5]``,
so north is up as in the real tiles. Shapes are large and colours strong on purpose: the default
model sees the images at 64x64 pixels.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from cvgtext.data.synthetic.scene import Scene

# Quadrants and sides of a tile: unit offsets (u east, v south) and compass bearings.
CORNERS = {"north-west": (-1, -1), "north-east": (1, -1), "south-east": (1, 1), "south-west": (-1, 1)}
CORNER_BEARING = {"north-east": 45, "south-east": 135, "south-west": 225, "north-west": 315}
SIDE_BEARING = {"north": 0, "east": 90, "south": 180, "west": 270}

BUILDING_RGB = {
    "red": (170, 72, 55),
    "grey": (128, 128, 134),
    "white": (226, 224, 216),
    "yellow": (214, 180, 90),
    "brown": (112, 78, 56),
}
LANDMARK_RGB = {
    "blue": (30, 80, 220),
    "purple": (140, 40, 180),
    "orange": (250, 130, 20),
    "pink": (245, 110, 190),
    "teal": (20, 170, 160),
}
SHOP_RGB = {
    "cafe": (120, 70, 40),
    "pharmacy": (30, 160, 60),
    "bank": (30, 60, 170),
    "bakery": (235, 200, 40),
    "convenience store": (210, 30, 30),
    "hotel": (90, 30, 120),
}
SKY_RGB = {"sunny": (110, 165, 230), "overcast": (168, 172, 178), "hazy": (200, 205, 200), "evening": (235, 170, 120)}

_CORNER_HALF = 0.19  # half-size of the square a corner feature occupies; its centre is at (+-0.25, +-0.25)
_WATER_DEPTH = 0.22  # how far the river reaches into the tile from its side
_OSM = {
    "land": (242, 239, 233),
    "building": (217, 208, 201),
    "building_edge": (196, 182, 171),
    "road": (255, 255, 255),
    "road_edge": (187, 187, 187),
    "avenue": (247, 250, 191),
    "avenue_edge": (160, 160, 90),
    "park": (200, 250, 204),
    "water": (170, 211, 223),
    "pitch": (170, 224, 203),
    "parking": (222, 222, 226),  # darker than OpenStreetMap's own, which would vanish at 64 pixels
    "tree": (160, 210, 150),
}


def road_bearings(scene: Scene) -> list[int]:
    """Compass bearings in which a road leaves the place (street-view openings)."""
    if scene.road in ("crossroads", "roundabout"):
        return [0, 90, 180, 270]
    if scene.road == "straight":
        return [0, 180] if scene.road_dir == "north-south" else [90, 270]
    if scene.road == "tjunction":
        stem = SIDE_BEARING[scene.road_dir]
        return [stem, (stem + 90) % 360, (stem + 270) % 360]
    if scene.road == "diagonal":
        return [45, 225] if scene.road_dir == "north-east" else [135, 315]
    first, second = scene.road_dir.split("-")  # curve: the corner it bends around, e.g. "south-west"
    return [SIDE_BEARING[first], SIDE_BEARING[second]]


def free_corners(road: str, road_dir: str) -> list[str]:
    """Quadrants that a road pattern leaves free for a park, landmark, pitch or parking lot."""
    if road == "diagonal":
        crossed = {"north-east", "south-west"} if road_dir == "north-east" else {"north-west", "south-east"}
        return [c for c in CORNERS if c not in crossed]
    if road == "curve":
        return [c for c in CORNERS if c != road_dir]
    return list(CORNERS)


def _road_lines(scene: Scene) -> list[tuple[np.ndarray, float]]:
    """Centre lines ``[points, 2]`` in tile units with their half-widths."""
    half = 0.065 if scene.wide_road else 0.04
    north, south, west, east = (0.0, -0.5), (0.0, 0.5), (-0.5, 0.0), (0.5, 0.0)
    ends = {"north": north, "south": south, "west": west, "east": east}
    if scene.road in ("crossroads", "roundabout"):
        lines = [([north, south], half), ([west, east], half)]
        if scene.road == "roundabout":
            angles = np.linspace(0, 2 * np.pi, 33)
            lines.append((np.stack([0.13 * np.cos(angles), 0.13 * np.sin(angles)], 1), half * 0.8))
    elif scene.road == "straight":
        lines = [([north, south] if scene.road_dir == "north-south" else [west, east], half)]
    elif scene.road == "tjunction":
        main = [west, east] if scene.road_dir in ("north", "south") else [north, south]
        lines = [(main, half), ([(0.0, 0.0), ends[scene.road_dir]], half * 0.75)]
    elif scene.road == "diagonal":
        ends = [(0.55, -0.55), (-0.55, 0.55)] if scene.road_dir == "north-east" else [(-0.55, -0.55), (0.55, 0.55)]
        lines = [(ends, half)]
    else:
        cu, cv = (0.5 * c for c in CORNERS[scene.road_dir])
        start = math.atan2(-cv, -cu) - math.pi / 4  # the arc around the corner spans the quarter facing the centre
        angles = np.linspace(start, start + math.pi / 2, 17)
        lines = [(np.stack([cu + 0.5 * np.cos(angles), cv + 0.5 * np.sin(angles)], 1), half)]
    return [(np.asarray(points, dtype=float), w) for points, w in lines]


def _distance_to_roads(points: np.ndarray, lines: list[tuple[np.ndarray, float]]) -> np.ndarray:
    """Distance ``[points]`` from each point to the nearest road edge (negative on the road)."""
    best = np.full(len(points), np.inf)
    for line, half in lines:
        a, b = line[:-1], line[1:]  # segments [m, 2]
        ab = b - a
        t = ((points[:, None] - a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12)
        nearest = a + np.clip(t, 0, 1)[..., None] * ab
        best = np.minimum(best, np.linalg.norm(points[:, None] - nearest, axis=-1).min(1) - half)
    return best


def _in_water(u: np.ndarray, v: np.ndarray, side: str | None) -> np.ndarray:
    edge = 0.5 - _WATER_DEPTH
    inside = {"north": v < -edge, "south": v > edge, "west": u < -edge, "east": u > edge}
    return inside.get(side, np.zeros_like(u, bool))


def _water_box(side: str) -> tuple[float, float, float, float]:
    edge = 0.5 - _WATER_DEPTH
    return {
        "north": (-0.5, -0.5, 0.5, -edge),
        "south": (-0.5, edge, 0.5, 0.5),
        "west": (-0.5, -0.5, -edge, 0.5),
        "east": (edge, -0.5, 0.5, 0.5),
    }[side]


def _corner_box(corner: str) -> tuple[float, float, float, float]:
    du, dv = CORNERS[corner]
    return (0.25 * du - _CORNER_HALF, 0.25 * dv - _CORNER_HALF, 0.25 * du + _CORNER_HALF, 0.25 * dv + _CORNER_HALF)


class TilePlan:
    """Where roads, buildings, trees and cars lie on the tile; shared by the satellite and map tiles."""

    def __init__(self, scene: Scene, rng: np.random.Generator):
        self.lines = _road_lines(scene)
        self.buildings = _buildings(scene, self.lines, rng)  # boxes (u0, v0, u1, v1)
        self.trees = _street_trees(scene, self.lines) if scene.trees else []  # centres (u, v)
        self.cars = _cars(scene, self.lines[0], rng)  # centres and headings (u, v, radians)


def _buildings(scene: Scene, lines: list, rng: np.random.Generator) -> list[tuple[float, float, float, float]]:
    """A jittered grid of footprints, less what roads, water and corner features take."""
    cell = 0.125 if scene.dense else 1 / 6
    centres = (np.arange(round(1 / cell)) + 0.5) * cell - 0.5
    u, v = (g.ravel() + rng.uniform(-0.1, 0.1, g.size) * cell for g in np.meshgrid(centres, centres))
    size = cell * (0.78 if scene.dense else 0.55) * rng.uniform(0.8, 1.0, u.size)
    keep = _distance_to_roads(np.stack([u, v], 1), lines) > 0.6 * size + 0.015
    keep &= ~_in_water(u, v, scene.water) & (rng.random(u.size) < (1.0 if scene.dense else 0.75))
    for corner in scene.corners:
        u0, v0, u1, v1 = _corner_box(corner)
        keep &= ~((u + size / 2 > u0) & (u - size / 2 < u1) & (v + size / 2 > v0) & (v - size / 2 < v1))
    return [(a - h / 2, b - h / 2, a + h / 2, b + h / 2) for a, b, h in zip(u[keep], v[keep], size[keep])]


def _street_trees(scene: Scene, lines: list) -> list[tuple[float, float]]:
    """Trees on both sides of the straight roads (not a roundabout's ring), off roads and water."""
    trees = []
    for line, half in lines[:2]:
        points = _resample(line, 0.085)[1:]
        step = np.gradient(points, axis=0) if len(points) > 1 else np.diff(line[:2], axis=0)
        normal = np.stack([-step[:, 1], step[:, 0]], 1) / np.linalg.norm(step, axis=1, keepdims=True)
        trees += [points + normal * (half + 0.03), points - normal * (half + 0.03)]
    trees = np.concatenate(trees)
    keep = (np.abs(trees).max(1) < 0.48) & ~_in_water(trees[:, 0], trees[:, 1], scene.water)
    keep &= _distance_to_roads(trees, lines) > 0.015
    return [(u, v) for u, v in trees[keep].tolist()]


def _cars(scene: Scene, main: tuple[np.ndarray, float], rng: np.random.Generator) -> list[tuple[float, float, float]]:
    """``scene.cars`` cars in either lane of the main road."""
    line, half = main
    cars = []
    for _ in range(scene.cars):
        i = int(rng.integers(len(line) - 1))
        t = rng.uniform(0.15, 0.85) if len(line) == 2 else rng.uniform(0, 1)  # keep off the tile's edge
        direction = line[i + 1] - line[i]
        normal = np.array([-direction[1], direction[0]]) / np.linalg.norm(direction)
        centre = line[i] + t * direction + normal * half * 0.5 * rng.choice([-1, 1])
        cars.append((float(centre[0]), float(centre[1]), math.atan2(direction[1], direction[0])))
    return cars


def _px(size: int, u: float, v: float) -> tuple[float, float]:
    return ((u + 0.5) * size, (v + 0.5) * size)


def _box_px(size: int, box: tuple[float, float, float, float]) -> list[float]:
    return [*_px(size, box[0], box[1]), *_px(size, box[2], box[3])]


def _landmark_polygon(size: int, corner: str, shape: str, shift: float = 0.0) -> tuple[str, list[float]]:
    du, dv = CORNERS[corner]
    cx, cy = _px(size, 0.25 * du + shift, 0.25 * dv + shift)
    r = 0.15 * size
    if shape == "round":
        return "ellipse", [cx - r, cy - r, cx + r, cy + r]
    if shape == "square":
        r *= 0.88
        return "rectangle", [cx - r, cy - r, cx + r, cy + r]
    return "polygon", [cx, cy - 1.15 * r, cx + r, cy + 0.75 * r, cx - r, cy + 0.75 * r]


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, xy: list[float], fill, outline=None, width=1) -> None:
    getattr(draw, kind)(xy, fill=fill, outline=outline, width=width)


def _jitter(rgb: tuple[int, int, int], rng: np.random.Generator, amount: int) -> tuple[int, ...]:
    """Vary mostly the brightness, so that a grey roof stays grey and does not turn purple."""
    shift = int(rng.integers(-amount, amount + 1))
    tint = rng.integers(-(amount // 4), amount // 4 + 1, 3).tolist()
    return tuple(min(255, max(0, c + shift + t)) for c, t in zip(rgb, tint))


def _add_noise(image: Image.Image, noise: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Add a random crop of a shared noise texture: cheaper than fresh noise for every image."""
    h, w = image.height, image.width
    y, x = (int(rng.integers(0, n - m + 1)) for n, m in zip(noise.shape[:2], (h, w)))
    pixels = np.asarray(image, dtype=np.int16) + noise[y : y + h, x : x + w]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def noise_texture(size: int, rng: np.random.Generator) -> np.ndarray:
    """A ``[2 * size, 2 * size, 3]`` int16 texture: pixel grain plus blotches a few pixels wide."""
    grain = rng.normal(0, 7, (2 * size, 2 * size, 1))
    blotch = np.kron(rng.normal(0, 9, (size // 2, size // 2, 1)), np.ones((4, 4, 1)))
    return (grain + blotch + rng.normal(0, 3, (2 * size, 2 * size, 3))).astype(np.int16)


def render_satellite(
    scene: Scene, plan: TilePlan, size: int, rng: np.random.Generator, noise: np.ndarray
) -> Image.Image:
    """A top-down photo-like tile: roofs with shadows, asphalt, greenery and water."""
    image = Image.new("RGB", (size, size), (122, 118, 108) if scene.dense else (100, 118, 74))
    draw = ImageDraw.Draw(image)
    if scene.water:
        draw.rectangle(_box_px(size, _water_box(scene.water)), fill=(38, 72, 98))
    for corner, kind in scene.corners.items():
        box = _box_px(size, _corner_box(corner))
        if kind == "park":
            draw.rectangle(box, fill=(74, 118, 58))
            margin = 0.025 * size
            for _ in range(9):
                x, y = rng.uniform(box[0] + margin, box[2] - margin), rng.uniform(box[1] + margin, box[3] - margin)
                r = rng.uniform(0.025, 0.045) * size
                draw.ellipse([x - r, y - r, x + r, y + r], fill=(38, 82, 34))
        elif kind == "pitch":
            draw.rectangle(box, fill=(172, 86, 62))
            inner = [box[0] + 0.05 * size, box[1] + 0.05 * size, box[2] - 0.05 * size, box[3] - 0.05 * size]
            draw.rectangle(inner, fill=(58, 146, 66), outline=(240, 240, 240), width=max(1, size // 128))
        elif kind == "parking":
            draw.rectangle(box, fill=(150, 150, 150))
            for i in range(1, 6):
                x = box[0] + i * (box[2] - box[0]) / 6
                draw.line([x, box[1] + 3, x, box[3] - 3], fill=(235, 235, 235), width=max(1, size // 256))
    shadow = (0.035 if scene.high_rise else 0.014) * size
    roof = BUILDING_RGB[scene.colour]
    for box in plan.buildings:
        x0, y0, x1, y1 = _box_px(size, box)
        draw.rectangle([x0 + shadow, y0 + shadow, x1 + shadow, y1 + shadow], fill=(45, 45, 48))
    for box in plan.buildings:
        x0, y0, x1, y1 = _box_px(size, box)
        colour = _jitter(roof, rng, 14)
        draw.rectangle([x0, y0, x1, y1], fill=colour)
        if not scene.high_rise:  # pitched roofs: a darker half shows the ridge
            draw.rectangle([x0, (y0 + y1) / 2, x1, y1], fill=tuple(int(c * 0.82) for c in colour))
    for line, half in plan.lines:
        points = [_px(size, u, v) for u, v in line]
        draw.line(points, fill=(150, 148, 140), width=int(2 * (half + 0.015) * size), joint="curve")
    for line, half in plan.lines:
        points = [_px(size, u, v) for u, v in line]
        draw.line(points, fill=(66, 66, 70), width=int(2 * half * size), joint="curve")
    if scene.road == "roundabout":
        draw.ellipse(_box_px(size, (-0.08, -0.08, 0.08, 0.08)), fill=(74, 118, 58))
    dash = (235, 205, 60) if scene.wide_road else (230, 230, 230)
    points = _resample(plan.lines[0][0], 0.04)
    for a, b in zip(points[:-1:2], points[1::2]):
        draw.line([_px(size, *a), _px(size, *b)], fill=dash, width=max(1, size // 128))
    for u, v, angle in plan.cars:
        _draw_car(draw, size, u, v, angle, _jitter((200, 60, 60), rng, 120))
    for u, v in plan.trees:
        x, y = _px(size, u, v)
        r = 0.03 * size
        draw.ellipse([x - r, y - r, x + r, y + r], fill=(44, 92, 38))
    if scene.landmark:
        corner = next(c for c, k in scene.corners.items() if k == "landmark")
        shape, colour = scene.landmark
        _draw_shape(draw, *_landmark_polygon(size, corner, shape, shift=0.03), fill=(40, 40, 44))
        kind, xy = _landmark_polygon(size, corner, shape)
        _draw_shape(draw, kind, xy, fill=LANDMARK_RGB[colour], outline=(250, 250, 250), width=max(1, size // 128))
    return _add_noise(image, noise, rng)


def _resample(line: np.ndarray, step: float) -> np.ndarray:
    """Points every ``step`` tile units along a polyline ``[points, 2]``."""
    along = np.concatenate([[0], np.cumsum(np.linalg.norm(np.diff(line, axis=0), axis=1))])
    at = np.arange(0, along[-1], step)
    return np.stack([np.interp(at, along, line[:, 0]), np.interp(at, along, line[:, 1])], 1)


def _draw_car(draw: ImageDraw.ImageDraw, size: int, u: float, v: float, angle: float, colour) -> None:
    c, s = math.cos(angle), math.sin(angle)
    corners = [(a * 0.024, b * 0.012) for a, b in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
    draw.polygon([_px(size, u + a * c - b * s, v + a * s + b * c) for a, b in corners], fill=colour)


def render_osm(scene: Scene, plan: TilePlan, size: int) -> Image.Image:
    """A flat map tile in OpenStreetMap's colours; the landmark is a coloured icon."""
    image = Image.new("RGB", (size, size), _OSM["land"])
    draw = ImageDraw.Draw(image)
    if scene.water:
        draw.rectangle(_box_px(size, _water_box(scene.water)), fill=_OSM["water"])
    edge = max(1, size // 200)
    for corner, kind in scene.corners.items():
        if kind in ("park", "pitch", "parking"):
            draw.rectangle(_box_px(size, _corner_box(corner)), fill=_OSM[kind], outline=(150, 170, 150), width=edge)
    for box in plan.buildings:
        draw.rectangle(_box_px(size, box), fill=_OSM["building"], outline=_OSM["building_edge"], width=edge)
    fill, casing = ("avenue", "avenue_edge") if scene.wide_road else ("road", "road_edge")
    for colour, extra in ((_OSM[casing], 0.015), (_OSM[fill], 0.0)):
        for line, half in plan.lines:
            width = int(2 * (half + extra) * size)
            draw.line([_px(size, u, v) for u, v in line], fill=colour, width=width, joint="curve")
    for u, v in plan.trees:
        x, y = _px(size, u, v)
        r = 0.018 * size
        draw.ellipse([x - r, y - r, x + r, y + r], fill=_OSM["tree"])
    if scene.landmark:
        corner = next(c for c, k in scene.corners.items() if k == "landmark")
        shape, colour = scene.landmark
        kind, xy = _landmark_polygon(size, corner, shape)
        _draw_shape(draw, kind, xy, fill=LANDMARK_RGB[colour], outline=(60, 60, 60), width=2 * edge)
    return image


def render_street_view(scene: Scene, size: int, rng: np.random.Generator, noise: np.ndarray) -> Image.Image:
    """A 2:1 street view centred on ``scene.heading``: a panorama (fov 360) or a single photo."""
    width, height = size, size // 2
    horizon = 0.58 * height
    image = Image.new("RGB", (width, height), SKY_RGB[scene.weather])
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, horizon, width, height], fill=(86, 86, 90))
    draw.rectangle([0, horizon, width, horizon + 0.07 * height], fill=(160, 158, 152))

    def xs(bearing: float) -> list[float]:
        """Image columns where a bearing appears (twice near the seam of a panorama)."""
        rel = (bearing - scene.heading + 180) % 360 - 180
        centre = width / 2 + rel * width / scene.fov
        return [centre + k * width for k in (-1, 0, 1)] if scene.fov == 360 else [centre]

    def sector(bearing: float, half_deg: float, top: float, fill) -> None:
        for x in xs(bearing):
            half = half_deg * width / scene.fov
            draw.rectangle([x - half, top, x + half, horizon], fill=fill)

    facade = BUILDING_RGB[scene.colour]
    facades = []  # bearings of facade centres, where a shop sign can hang
    bearing = float(rng.uniform(0, 30))
    while bearing < 360:  # a ring of facades, cut open below where roads, open ground and water are
        step = float(rng.uniform(18, 34))
        centre = bearing + step / 2
        facades.append(centre)
        top = horizon - height * (rng.uniform(0.42, 0.52) if scene.high_rise else rng.uniform(0.2, 0.3))
        colour = _jitter(facade, rng, 16)
        sector(centre, step / 2 - 0.5, top, colour)
        window = tuple(int(c * 0.55) for c in colour)
        rows = 4 if scene.high_rise else 1
        for r in range(rows):
            y = top + (r + 0.4) * (horizon - top) / (rows + 0.5)
            sector(centre, step / 2 - 3, y, window)
            sector(centre, step / 2 - 0.5, y + 0.045 * height, colour)
        bearing += step
    # A photo looks down a road in perspective: the opening takes less of its width than in a panorama.
    open_sectors = [(b, 14 if scene.fov == 360 else 8) for b in road_bearings(scene)]
    open_sectors += [(CORNER_BEARING[c], 30) for c, k in scene.corners.items() if k != "landmark"]
    if scene.water:
        open_sectors.append((SIDE_BEARING[scene.water], 45))
    for b, half in open_sectors:
        sector(b, half, 0, SKY_RGB[scene.weather])
    if scene.water:
        sector(SIDE_BEARING[scene.water], 45, horizon - 0.02 * height, (40, 90, 130))
        for x in xs(SIDE_BEARING[scene.water]):
            half = 45 * width / scene.fov
            draw.rectangle([x - half, horizon, x + half, horizon + 0.14 * height], fill=(46, 98, 140))
    for corner, kind in scene.corners.items():
        if kind == "park":
            for offset in range(-24, 25, 8):
                for x in xs(CORNER_BEARING[corner] + offset):
                    r = 0.11 * height
                    draw.ellipse([x - r, horizon - 3 * r, x + r, horizon - r], fill=(52, 112, 46))
                    draw.rectangle([x - 0.1 * r, horizon - r, x + 0.1 * r, horizon], fill=(80, 60, 40))
        elif kind in ("pitch", "parking"):
            fence = (60, 150, 70) if kind == "pitch" else (150, 150, 150)
            sector(CORNER_BEARING[corner], 28, horizon - 0.06 * height, fence)
    if scene.landmark:
        corner = next(c for c, k in scene.corners.items() if k == "landmark")
        _draw_landmark_view(draw, xs(CORNER_BEARING[corner]), width / scene.fov, horizon, height, *scene.landmark)
    walls = [b for b in facades if all(abs((b - o + 180) % 360 - 180) > half + 10 for o, half in open_sectors)]
    if scene.shop and walls:
        shop_bearing = min(walls, key=lambda b: abs((b - scene.heading + 180) % 360 - 180))
        for x in xs(shop_bearing):
            half = 9 * width / scene.fov
            sign = [x - half, horizon - 0.16 * height, x + half, horizon - 0.08 * height]
            draw.rectangle(sign, fill=SHOP_RGB[scene.shop])
    if scene.trees:
        for b in range(0, 360, 25):
            for x in xs(b + 7):
                r = 0.07 * height
                draw.ellipse([x - r, horizon - 2.6 * r, x + r, horizon - 0.6 * r], fill=(40, 100, 40))
    for _ in range(scene.cars):
        for x in xs(float(rng.uniform(0, 360))):
            car_w = 10 * width / scene.fov
            y = horizon + rng.uniform(0.1, 0.25) * height
            draw.rectangle([x - car_w, y, x + car_w, y + 0.08 * height], fill=_jitter((200, 60, 60), rng, 120))
    return _add_noise(image, noise[: 2 * height], rng)  # the texture is twice a tile; a street view is half as tall


def _draw_landmark_view(draw, columns, px_per_deg, horizon, height, shape, colour) -> None:
    fill = LANDMARK_RGB[colour]
    for x in columns:
        if shape == "round":
            half = 14 * px_per_deg
            top = horizon - 0.62 * height
            draw.rectangle([x - half, top + half, x + half, horizon], fill=fill)
            draw.ellipse([x - half, top, x + half, top + 2 * half], fill=fill)
        elif shape == "square":
            half = 26 * px_per_deg
            draw.rectangle([x - half, horizon - 0.42 * height, x + half, horizon], fill=fill)
        else:
            half = 20 * px_per_deg
            draw.polygon([(x, horizon - 0.7 * height), (x + half, horizon), (x - half, horizon)], fill=fill)
