"""File names of the CVG-Text release carry the place: ``lat,lon_...``.

A name with more than two ``_``-separated parts is a text written from a panorama
(``40.75290377,-73.97958215_2022-08_<panoid>_d62_z3.jpg``); otherwise the text was
written from a single-view photo.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from cvgtext.utils.errors import DataError

if TYPE_CHECKING:
    import torch

_COORDINATES = re.compile(r"^([-+]?[0-9]*\.?[0-9]+),([-+]?[0-9]*\.?[0-9]+)")
_COORDINATE_LINES = re.compile(_COORDINATES.pattern, re.MULTILINE)


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
    return name.count("_") > 1


def check_plain_name(name: str) -> None:
    """Refuse a name that would leave its image folder (separators, ``..``, absolute paths)."""
    if not name or name in {".", ".."} or "/" in name or "\\" in name or "\x00" in name or name.startswith(".."):
        raise DataError(
            f"file name {name!r} is not a plain file name: names may not contain path "
            "separators or '..', so that every image stays inside its folder"
        )


def parse_places(names: Sequence[str]) -> torch.Tensor:
    """``[len(names), 2]`` float64 ``(lat, lon)`` of file names, as :func:`parse_coordinates` reads each.

    Each distinct name is read once, all in one pass of the pattern over the joined names.
    """
    import torch  # here: the release check (download.py) reads names without loading torch

    distinct = list(dict.fromkeys(names))
    text = "\n".join(distinct)
    matches = _COORDINATE_LINES.findall(text) if text.count("\n") == len(distinct) - 1 else []
    if len(matches) != len(distinct):  # a name without coordinates, or one holding a line break
        values = [value for name in distinct for value in parse_coordinates(name)]
    else:
        values = [float(value) for match in matches for value in match]
    places = torch.tensor(values, dtype=torch.float64).reshape(len(distinct), 2)
    out_of_range = (places[:, 0].abs() > 90) | (places[:, 1].abs() > 180)
    if out_of_range.any():
        parse_coordinates(distinct[int(out_of_range.nonzero()[0])])  # raises the DataError naming the file
    if len(distinct) == len(names):
        return places
    position = {name: i for i, name in enumerate(distinct)}
    return places[torch.tensor([position[name] for name in names], dtype=torch.long)]
