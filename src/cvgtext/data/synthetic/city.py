"""A synthetic city written in the real CVG-Text release's layout, so that a fresh clone can train.

Places lie on a jittered grid around a fictional centre (lat -12, lon 131). Voronoi districts
give neighbouring places a shared style (road pattern, building colour, density, height) and a
river gives water to the places beside it. Each place is one :class:`Scene`; its satellite-like
tile, map-like tile and street view (:mod:`cvgtext.data.synthetic.render`) and its caption
(:mod:`cvgtext.data.synthetic.captions`) are all drawn from that scene, so the caption is the
only link a model needs to learn. Captions of panoramas are long (most pass CLIP's 77 tokens)
and those of single-view photos short, like the real ones. Layout under ``root`` (``{v}`` is
``{name}`` for panoramas, ``{name}-photos`` for photos)::

    annotation/{v}/train.json, test.json     one JSON object {image_file_name: caption}
    reference/{v}-satellite/, {v}-OSM/       square tiles, named like the caption's key
    query/{v}-ground/                        2:1 street views
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvgtext.data.names import check_plain_name
from cvgtext.data.synthetic import render
from cvgtext.data.synthetic.captions import SHAPE_WORDS, panorama_caption, photo_caption, pick
from cvgtext.data.synthetic.scene import Scene
from cvgtext.utils.atomic import STORAGE_ERRORS
from cvgtext.utils.errors import ConfigError, DataError

log = logging.getLogger(__name__)

STAMP = ".synthetic.json"
# written first and removed with the stamp: annotations beside it are a generation's, interrupted
PARTIAL = ".synthetic.partial"
_FORMAT = 1  # bump when the generator's output changes, so cached cities are regenerated
_CENTRE = (-12.0, 131.0)  # lat, lon; south of the equator so that sign handling is exercised
_HALF_KM = 2.0  # the city is a 4 km square
_RIVER_KM = 0.2  # places this close to the river's centre line see water
_DISTRICTS = 12
_PANOID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-"

ROADS = ("crossroads", "straight", "tjunction", "diagonal", "curve", "roundabout")
_ROAD_DIRS = {
    "crossroads": ("",),
    "roundabout": ("",),
    "straight": ("north-south", "east-west"),
    "tjunction": tuple(render.SIDE_BEARING),
    "diagonal": ("north-east", "north-west"),
    "curve": tuple(render.CORNERS),
}
_CORNERS_UNDER_WATER = {side: {c for c in render.CORNERS if side in c} for side in render.SIDE_BEARING}


def _city(places: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Place positions ``[places, 2]`` in km (east, north), their district and river offset ``[places, 2]``."""
    t = np.linspace(-1.3, 1.3, 800) * _HALF_KM
    angle = rng.uniform(-0.5, 0.5)
    offset, phase = rng.uniform(-0.4, 0.4) * _HALF_KM, rng.uniform(0, 2 * math.pi)
    meander = np.stack([t, offset + 0.3 * _HALF_KM * np.sin(t * 3.7 / _HALF_KM + phase)], 1)  # [800, 2] km
    river = meander @ np.array([[math.cos(angle), math.sin(angle)], [-math.sin(angle), math.cos(angle)]])

    def to_river(points: np.ndarray) -> np.ndarray:
        nearest = np.empty_like(points)
        for start in range(0, len(points), 512):  # chunks bound the [chunk, 800] distance matrix
            chunk = points[start : start + 512]
            nearest[start : start + 512] = river[((chunk[:, None] - river) ** 2).sum(-1).argmin(1)]
        return nearest - points

    side = math.ceil(math.sqrt(places * 1.15)) + 1
    while True:  # grow the grid until enough cells lie outside the river
        cell = 2 * _HALF_KM / side
        grid = (np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2) + 0.5) * cell - _HALF_KM
        dry = np.linalg.norm(to_river(grid), axis=1) > 0.05
        if dry.sum() >= places:
            break
        side += 1
    chosen = np.sort(rng.choice(np.flatnonzero(dry), places, replace=False))
    points = grid[chosen] + rng.uniform(-0.35, 0.35, (places, 2)) * cell
    # District seeds on a jittered 4x3 grid keep districts of comparable size.
    columns, rows = np.meshgrid((np.arange(4) + 0.5) / 4, (np.arange(3) + 0.5) / 3)
    seeds = (np.stack([columns.ravel(), rows.ravel()], 1) * 2 - 1) * _HALF_KM + rng.uniform(-0.3, 0.3, (_DISTRICTS, 2))
    district = ((points[:, None] - seeds) ** 2).sum(-1).argmin(1)
    return points, district, to_river(points)


def _district_styles(rng: np.random.Generator) -> list[dict]:
    styles = []
    for _ in range(_DISTRICTS):
        road = pick(rng, ROADS)
        styles.append(
            {
                "road": road,
                "road_dir": pick(rng, _ROAD_DIRS[road]),
                "wide": rng.uniform(0.1, 0.8),
                "colours": tuple(str(c) for c in rng.permutation(list(render.BUILDING_RGB))[:2]),
                "dense": rng.random() < 0.6,
                "high_rise": rng.choice([0.1, 0.75]),
                "trees": rng.uniform(0.1, 0.9),
                "park": rng.uniform(0.25, 0.55),
            }
        )
    return styles


def _scene(style: dict, to_river: np.ndarray, fov: int, rng: np.random.Generator) -> Scene:
    road = style["road"] if rng.random() < 0.5 else pick(rng, ROADS)
    road_dir = style["road_dir"] if road == style["road"] and rng.random() < 0.7 else pick(rng, _ROAD_DIRS[road])
    water = None
    if np.hypot(*to_river) < _RIVER_KM:
        east, north = to_river
        water = ("east" if east > 0 else "west") if abs(east) > abs(north) else ("north" if north > 0 else "south")
    free = [c for c in render.free_corners(road, road_dir) if c not in _CORNERS_UNDER_WATER.get(water, set())]
    corners = {}
    for kind, chance in (("landmark", 0.6), ("park", style["park"]), ("pitch", 0.12), ("parking", 0.15)):
        if free and rng.random() < chance:
            corners[free.pop(int(rng.integers(len(free))))] = kind
    landmark = None
    if "landmark" in corners.values():
        landmark = (pick(rng, list(SHAPE_WORDS)), pick(rng, list(render.LANDMARK_RGB)))
    dense = style["dense"] if rng.random() < 0.85 else not style["dense"]
    return Scene(
        road=road,
        road_dir=road_dir,
        wide_road=bool(rng.random() < style["wide"]),
        colour=style["colours"][0] if rng.random() < 0.7 else style["colours"][1],
        dense=dense,
        high_rise=bool(rng.random() < style["high_rise"]),
        water=water,
        corners=corners,
        landmark=landmark,
        trees=bool(rng.random() < style["trees"]),
        cars=int(rng.integers(0, 6 if dense else 3)),
        shop=pick(rng, list(render.SHOP_RGB)) if rng.random() < 0.8 else None,
        weather=pick(rng, list(render.SKY_RGB)),
        heading=int(rng.integers(360)),
        fov=fov,
    )


def _folders(root: Path, name: str) -> list[Path]:
    folders = []
    for version in (name, f"{name}-photos"):
        folders += [
            root / "annotation" / version,
            root / "reference" / f"{version}-satellite",
            root / "reference" / f"{version}-OSM",
            root / "query" / f"{version}-ground",
        ]
    return folders


def _arguments(name: str, places: int, seed: int, test_fraction: float, photo_fraction: float, tile_size: int) -> dict:
    check_plain_name(name)
    if places < 1 or seed < 0 or tile_size < 16 or tile_size % 2:
        raise ConfigError(
            f"a synthetic city needs places >= 1, seed >= 0 and an even tile_size >= 16, "
            f"got places={places}, seed={seed}, tile_size={tile_size}"
        )
    if not (0.0 <= test_fraction <= 1.0 and 0.0 <= photo_fraction <= 1.0):
        raise ConfigError(
            f"test_fraction and photo_fraction must lie in [0, 1], got {test_fraction} and {photo_fraction}"
        )
    return {
        "format": _FORMAT,
        "name": name,
        "places": places,
        "seed": seed,
        "test_fraction": test_fraction,
        "photo_fraction": photo_fraction,
        "tile_size": tile_size,
    }


@dataclass
class CityPlan:
    """Where the places of a city lie and what kind each is: all that is drawn before any place's own stream."""

    rng: np.random.Generator  # the city's stream, as it stands after the plan (the tiles' noise comes next)
    seed: int
    lat: np.ndarray  # [places] degrees
    lon: np.ndarray
    district: np.ndarray  # [places]
    to_river: np.ndarray  # [places, 2] km
    styles: list[dict]
    is_photo: np.ndarray  # [places] bool
    is_test: np.ndarray


def city_plan(places: int, seed: int, test_fraction: float, photo_fraction: float) -> CityPlan:
    """The plan :func:`generate_city` draws first, from the city's seed."""
    rng = np.random.default_rng(seed)
    points, district, to_river = _city(places, rng)
    styles = _district_styles(rng)
    is_photo = np.zeros(places, bool)
    is_photo[rng.choice(places, round(photo_fraction * places), replace=False)] = True
    is_test = np.zeros(places, bool)
    for members in (np.flatnonzero(is_photo), np.flatnonzero(~is_photo)):
        is_test[rng.choice(members, round(test_fraction * len(members)), replace=False)] = True
    lat_per_km = 1 / 110.574
    lon_per_km = 1 / (111.320 * math.cos(math.radians(_CENTRE[0])))
    lat, lon = _CENTRE[0] + points[:, 1] * lat_per_km, _CENTRE[1] + points[:, 0] * lon_per_km
    return CityPlan(rng, seed, lat, lon, district, to_river, styles, is_photo, is_test)


def place_scene(plan: CityPlan, i: int, place_rng: np.random.Generator) -> Scene:
    """The facts of place ``i``: the first draws of its own stream ``place_rng`` (``[seed, i]``)."""
    return _scene(plan.styles[plan.district[i]], plan.to_river[i], 90 if plan.is_photo[i] else 360, place_rng)


def generate_city(
    root,
    name: str = "Synthetic",
    places: int = 2000,
    seed: int = 0,
    test_fraction: float = 0.1,
    photo_fraction: float = 0.2,
    tile_size: int = 256,
) -> None:
    """Write a synthetic city of ``places`` places under ``root`` in the release's layout.

    The output depends only on the arguments. About ``photo_fraction`` of the places become
    single-view photos (version ``{name}-photos``), the rest panoramas (``{name}``); in each
    version ``test_fraction`` of the places go to ``test.json``. The stamp
    ``annotation/{name}/.synthetic.json`` is written last, so an interrupted run leaves none.
    A city this function wrote before (its stamp present) is removed first, so no stale files remain.
    """
    arguments = _arguments(name, places, seed, test_fraction, photo_fraction, tile_size)
    root = Path(root)
    stamp = root / "annotation" / name / STAMP
    if stamp.exists():
        stamp.unlink()
        for folder in _folders(root, name):
            shutil.rmtree(folder, ignore_errors=True)
    for folder in _folders(root, name):
        folder.mkdir(parents=True, exist_ok=True)
    partial = root / "annotation" / name / PARTIAL
    partial.write_text(json.dumps(arguments) + "\n", encoding="utf-8")

    layout = city_plan(places, seed, test_fraction, photo_fraction)
    is_photo, is_test = layout.is_photo, layout.is_test
    noise = render.noise_texture(tile_size, layout.rng)

    captions = {(v, s): {} for v in (name, f"{name}-photos") for s in ("train", "test")}  # -> {file name: caption}
    for i in range(places):
        place_rng = np.random.default_rng([seed, i])  # one stream per place: a change in one place moves no other
        scene = place_scene(layout, i, place_rng)
        lat, lon = layout.lat[i], layout.lon[i]
        if is_photo[i]:
            version, caption = f"{name}-photos", photo_caption(scene, place_rng)
            file_name = f"{lat:.8f},{lon:.8f}_{int(place_rng.integers(10**9, 10**10))}.jpg"
        else:
            version, caption = name, panorama_caption(scene, place_rng)
            panoid = "".join(_PANOID_ALPHABET[k] for k in place_rng.integers(len(_PANOID_ALPHABET), size=22))
            file_name = f"{lat:.8f},{lon:.8f}_2023-05_{panoid}_d{scene.heading}_z3.jpg"
        captions[version, "test" if is_test[i] else "train"][file_name] = caption
        plan = render.TilePlan(scene, place_rng)
        images = {
            f"reference/{version}-satellite": render.render_satellite(scene, plan, tile_size, place_rng, noise),
            f"reference/{version}-OSM": render.render_osm(scene, plan, tile_size),
            f"query/{version}-ground": render.render_street_view(scene, tile_size, place_rng, noise),
        }
        for folder, image in images.items():
            image.save(root / folder / file_name, "JPEG", quality=90)
    for (version, split), table in captions.items():
        text = json.dumps(dict(sorted(table.items())), indent=1, ensure_ascii=False)
        (root / "annotation" / version / f"{split}.json").write_text(text + "\n", encoding="utf-8")
    stamp.write_text(json.dumps(arguments, indent=1) + "\n", encoding="utf-8")
    partial.unlink()


def ensure_city(
    root,
    name: str = "Synthetic",
    places: int = 2000,
    seed: int = 0,
    test_fraction: float = 0.1,
    photo_fraction: float = 0.2,
    tile_size: int = 256,
) -> bool:
    """Generate the synthetic city unless ``root`` already holds one made with these arguments.

    Returns True when it generated. A missing stamp (never generated, or interrupted) or one
    recording other arguments means the city is written again; annotations that no generation
    wrote (a release city or a town under the same name) are refused, never overwritten. A folder
    that cannot be written (read-only, full) raises a DataError saying where to point instead;
    a city already generated there is read without writing anything.
    """
    arguments = _arguments(name, places, seed, test_fraction, photo_fraction, tile_size)
    stamp = Path(root) / "annotation" / name / STAMP
    try:
        if json.loads(stamp.read_text(encoding="utf-8")) == arguments:
            return False
    except (OSError, ValueError):
        pass
    check_not_foreign(Path(root), name)
    log.info("Generating the synthetic city %r with %d places in %s", name, places, Path(root).resolve())
    try:
        generate_city(root, name, places, seed, test_fraction, photo_fraction, tile_size)
    except OSError as error:
        if error.errno not in STORAGE_ERRORS:
            raise
        where = f" ({error.filename})" if error.filename else ""
        raise DataError(
            f"cannot generate the synthetic city in {Path(root).resolve()}: {error.strerror}{where}; "
            "point paths.data_dir (or CVGTEXT_DATA_DIR) at a writable folder"
        ) from None
    return True


def check_not_foreign(root: Path, name: str) -> None:
    """Refuse to generate over annotation files of ``name`` that the generator did not write:
    ``city.name`` set without ``city=`` keeps the synthetic city's generator."""
    folder = root / "annotation" / name
    ours = (folder / STAMP).exists() or (folder / PARTIAL).exists()
    found = [path.name for path in (folder / "train.json", folder / "test.json") if path.is_file()]
    if found and not ours:
        raise DataError(
            f"{folder} holds {' and '.join(found)} that the synthetic city did not write, and city=synthetic "
            f"would write over them; for a city of your own add city=town (or city=Brisbane, ...) to "
            f"city.name={name}, or point paths.data_dir elsewhere"
        )
