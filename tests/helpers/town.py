"""Fake street views with painted shop signs, and the build_city config of a test town."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

# South of the equator (Sydney), so that the latitude's sign is exercised.
ORIGIN = (-33.8700, 151.2100)
METRES_PER_DEGREE = 111_195.0
SHOP_NAMES = ("CAFE LUNA", "FLORIST", "HARDWARE", "PHARMACY", "BOOKSHOP", "BARBER", "DELI", "TAILOR", "OPTICIAN")


def street_view(signs: Sequence[str], size: tuple[int, int] = (512, 256), tint: int = 0) -> Image.Image:
    """A street scene: sky, a row of buildings, a road, and each sign's words in white on dark."""
    width, height = size
    image = Image.new("RGB", size, (150, 175, 205))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, height * 0.2, width, height * 0.68), fill=(170 + tint % 60, 110, 90))
    draw.rectangle((0, height * 0.68, width, height), fill=(85, 85, 90))
    font = ImageFont.load_default(size=max(12, height // 9))
    x = width * 0.04
    for words in signs:
        left, top, right, bottom = draw.textbbox((0, 0), words, font=font)
        draw.rectangle((x - 6, height * 0.25, x + right + 6, height * 0.25 + bottom + 12), fill=(25, 25, 30))
        draw.text((x, height * 0.25 + 6), words, fill=(255, 255, 255), font=font)
        x += right + width * 0.08
    return image


def grid_places(rows: int, columns: int, spacing_m: float, origin=ORIGIN) -> list[tuple[float, float]]:
    """``(lat, lon)`` of a grid of places ``spacing_m`` apart, north to south then west to east."""
    import math

    lat0, lon0 = origin
    per_lon = METRES_PER_DEGREE * math.cos(math.radians(lat0))
    return [
        (round(lat0 - r * spacing_m / METRES_PER_DEGREE, 8), round(lon0 + c * spacing_m / per_lon, 8))
        for r in range(rows)
        for c in range(columns)
    ]


def write_street_views(folder: Path, places: Sequence[tuple[float, float]], signs: dict[int, Sequence[str]]) -> Path:
    """Panoramas named as the release names them, one per place; ``signs`` maps a place's index to
    its signs' words (the others show a shop's name); every fourth place is a single-view photo."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, (lat, lon) in enumerate(places):
        words = signs.get(i, [SHOP_NAMES[i % len(SHOP_NAMES)]])
        if i % 4 == 3:
            street_view(words, (320, 240), tint=17 * i).save(folder / f"{lat},{lon}_photo{i}.jpg", quality=92)
        else:
            street_view(words, tint=17 * i).save(
                folder / f"{lat},{lon}_2024-03_pano{i:03d}_d{(40 * i) % 360}_z3.jpg", quality=92
            )
    return folder


def build_overrides(data_dir: Path, folder: Path, tile_url: str, osm_url: str, chat_url: str, *extra: str) -> list[str]:
    """``build_city`` settings of a small test town: no pacing, short timeouts, quick OCR."""
    return [
        "city.name=Testtown",
        f"paths.data_dir={data_dir}",
        f"street_views.folder={folder}",
        f"sat.url='{tile_url}'",
        f"osm.url='{osm_url}'",
        f"captioner.url={chat_url}",
        "captioner.model=fake-lmm",
        "captioner.timeout_s=2",
        "captioner.retries=0",
        "captioner.backoff_s=0",
        "http.min_interval_s=0",
        "http.retries=1",
        "http.backoff_s=0",
        "http.timeout_s=5",
        "ocr.det_max_side=512",
        "min_spacing_m=5",
        "town_split.block_m=120",
        "town_split.gap_m=50",
        "test_fraction=0.25",
        *extra,
    ]
