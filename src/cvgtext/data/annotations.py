"""Reading and checking CVG-Text annotations: ``{image_file_name: caption}`` JSON objects.

Every problem is found here, when the datamodule is set up, and reported as one
:class:`~cvgtext.utils.errors.DataError` that names the file and what was expected, so that a broken
download stops a run before any training time is spent.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvgtext.data.names import check_plain_name, is_panorama, parse_coordinates
from cvgtext.utils.errors import DataError

log = logging.getLogger(__name__)


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
    """Load one annotation file and check its shape: a JSON object of file name -> non-empty caption.

    A key given twice is refused: JSON keeps only its last caption, so one would vanish unseen.
    """
    if not path.is_file():
        raise DataError(f"annotation file {path} does not exist (expected a JSON object {{file_name: caption}})")

    def refuse_repeated_keys(items: list[tuple[str, Any]]) -> dict[str, Any]:
        content: dict[str, Any] = {}
        for key, value in items:
            if key in content:
                raise DataError(f"annotation file {path} has the key {key!r} twice; expected each file name once")
            content[key] = value
        return content

    try:
        with open(path, encoding="utf-8-sig") as handle:  # a byte-order mark (Windows editors) is read past
            content = json.load(handle, object_pairs_hook=refuse_repeated_keys)
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


def load_pairs(
    annotation_path: Path, image_dir: Path, missing: str = "raise", known_missing: Collection[str] = ()
) -> list[Pair]:
    """Read an annotation file and link each caption to its image in ``image_dir``, checking both.

    An annotated image that is not in ``image_dir`` raises, or with ``missing="skip"`` leaves
    its pair out with a warning. ``known_missing`` names images the release is known to lack
    (its training text without a tile): their pairs are left out with a warning naming them.
    """
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
            if name in known_missing:
                log.warning(
                    "image %s is not in the release (a known quirk; annotated in %s): its pair is left out",
                    image_dir / name,
                    annotation_path,
                )
                continue
            if missing == "skip":
                log.warning(
                    "image %s does not exist (annotated in %s): its pair is left out", image_dir / name, annotation_path
                )
                continue
            raise DataError(
                f"image {image_dir / name} does not exist (annotated in {annotation_path}); "
                "add the image, or set data.on_bad_image=skip to train without its pair"
            )
        pairs.append(Pair(name, caption, image_dir / name, lat, lon, is_panorama(name)))
    return pairs


def check_test_names_unseen(train: dict[str, Path], test: dict[str, Path]) -> None:
    """Refuse a file name annotated both for training (``train``, ``val``) and for test.

    Both map file names to the annotation file that holds them. A file name is the gallery
    tile's and carries its coordinates, so duplicate names cannot disagree on the place, and
    most are harmless: the same name in the panorama and the photo version of one split is two
    captions of one place, and evaluation ranks each tile once (galleries are de-duplicated by
    name). Names that differ only in case are two files here; on a case-insensitive file system
    one is missing from its folder's listing and reported as a missing image. What is an error
    is a tile in both training and test: the test would then measure memory, not retrieval.
    A key given twice within one file is refused by :func:`read_annotation`.
    """
    shared = sorted(set(train) & set(test))
    if shared:
        name = shared[0]
        others = f" and {len(shared) - 1} more" if len(shared) > 1 else ""
        raise DataError(
            f"file name {name!r}{others} is annotated both in {train[name]} and in {test[name]}; "
            "expected the test images to be kept out of training"
        )


def in_validation(name: str, fraction: float) -> bool:
    """Whether a training pair is held out for validation.

    Decided by a hash of the file name alone, so the split does not change when the
    annotation file is reordered or grows.
    """
    digest = hashlib.sha1(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction
