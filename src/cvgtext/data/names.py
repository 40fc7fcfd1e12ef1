"""File names of the CVG-Text release carry the place: ``lat,lon_...``.

A name with more than two ``_``-separated parts is a text written from a panorama
(``40.75290377,-73.97958215_2022-08_<panoid>_d62_z3.jpg``); otherwise the text was
written from a single-view photo.
"""

from __future__ import annotations

import re

from cvgtext.errors import DataError

_COORDINATES = re.compile(r"^([-+]?[0-9]*\.?[0-9]+),([-+]?[0-9]*\.?[0-9]+)")


def parse_coordinates(name: str) -> tuple[float, float]:
    """Return ``(lat, lon)`` in degrees from a file name; raise DataError when absent or out of range."""
    match = _COORDINATES.match(name)
    if match is None:
        raise DataError(f"file name {name!r} does not start with 'lat,lon' coordinates")
    lat, lon = float(match.group(1)), float(match.group(2))
    if not -90.0 <= lat <= 90.0 or not -180.0 <= lon <= 180.0:
        raise DataError(
            f"file name {name!r} has coordinates out of range "
            f"(lat {lat} must be in [-90, 90], lon {lon} in [-180, 180])"
        )
    return lat, lon


def is_panorama(name: str) -> bool:
    """True when the name is a panorama text's (more than two ``_``-separated parts)."""
    return len(name.split("_")) > 2


def check_plain_name(name: str) -> None:
    """Refuse a name that would leave its image folder (separators, ``..``, absolute paths)."""
    if not name or name in {".", ".."} or "/" in name or "\\" in name or "\x00" in name or name.startswith(".."):
        raise DataError(
            f"file name {name!r} is not a plain file name: names may not contain path "
            "separators or '..', so that every image stays inside its folder"
        )
