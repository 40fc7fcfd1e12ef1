"""Checking every image of a city before training starts (``data.verify_images``).

Without it, an image that cannot be decoded is found when its batch is loaded: hours into a
run for a training tile, or at the first validation. ``header`` opens each file and reads its
format and size (fast: a missing, empty or non-image file); ``full`` decodes every pixel, as
training would (also a truncated JPEG).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cvgtext.data.dataset import load_image
from cvgtext.utils.errors import DataError

log = logging.getLogger(__name__)

VERIFY_LEVELS = ("off", "header", "full")


def check_image(path: Path, level: str) -> str | None:
    """Why ``path`` cannot be used as an image at ``level``, or ``None`` when it can."""
    try:
        load_image(path, header_only=level == "header")
    except DataError as error:
        return str(error)
    return None


def unreadable_images(paths: Iterable[Path], level: str, threads: int = 4) -> dict[Path, str]:
    """The images among ``paths`` that cannot be read at ``level``, each with the reason."""
    if level not in VERIFY_LEVELS:
        raise DataError(f"data.verify_images={level!r} is not one of {', '.join(VERIFY_LEVELS)}")
    unique = sorted(set(paths))
    if level == "off" or not unique:
        return {}
    # Decoding releases the GIL, so threads check several files at once.
    with ThreadPoolExecutor(max_workers=threads) as pool:
        reasons = list(pool.map(lambda path: check_image(path, level), unique))
    log.info("data.verify_images=%s: checked %d images, %d unreadable", level, len(unique), sum(map(bool, reasons)))
    return {path: reason for path, reason in zip(unique, reasons) if reason}
