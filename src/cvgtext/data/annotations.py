"""Reading and checking CVG-Text annotations: ``{image_file_name: caption}`` JSON objects.

Every problem is found here, when the datamodule is set up, and reported as one
:class:`~cvgtext.errors.DataError` that names the file and what was expected, so that a broken
download stops a run before any training time is spent.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cvgtext.data.names import check_plain_name, is_panorama, parse_coordinates
from cvgtext.errors import DataError


@dataclass(frozen=True)
class Pair:
    """One query text and the gallery image it describes."""

    name: str  # file name, shared by the caption's key and its image
    caption: str
    image_path: Path
    lat: float
    lon: float
    is_panorama: bool


def read_annotation(path: Path) -> dict[str, str]:
    """Load one annotation file and check its shape: a JSON object of file name -> non-empty caption."""
    if not path.is_file():
        raise DataError(f"annotation file {path} does not exist (expected a JSON object {{file_name: caption}})")
    try:
        with open(path, encoding="utf-8") as handle:
            content = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"annotation file {path} is not valid JSON: {error}") from None
    if not isinstance(content, dict):
        raise DataError(
            f"annotation file {path} holds a JSON {type(content).__name__}; "
            "expected one JSON object {file_name: caption}"
        )
    for name, caption in content.items():
        if not isinstance(caption, str) or not caption.strip():
            raise DataError(
                f"annotation file {path}: the caption of {name!r} is {caption!r}; expected a non-empty string"
            )
    return content


def load_pairs(annotation_path: Path, image_dir: Path) -> list[Pair]:
    """Read an annotation file and link each caption to its image in ``image_dir``, checking both."""
    annotation = read_annotation(annotation_path)
    try:
        present = set(os.listdir(image_dir))
    except FileNotFoundError:
        raise DataError(f"image folder {image_dir} does not exist (images of {annotation_path})") from None
    pairs = []
    for name, caption in annotation.items():
        try:
            check_plain_name(name)
            lat, lon = parse_coordinates(name)
        except DataError as error:
            raise DataError(f"annotation file {annotation_path}: {error}") from None
        if name not in present:
            raise DataError(f"image {image_dir / name} does not exist (annotated in {annotation_path})")
        pairs.append(Pair(name, caption, image_dir / name, lat, lon, is_panorama(name)))
    return pairs


def in_validation(name: str, fraction: float) -> bool:
    """Whether a training pair is held out for validation.

    Decided by a hash of the file name alone, so the split does not change when the
    annotation file is reordered or grows.
    """
    digest = hashlib.sha1(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction
