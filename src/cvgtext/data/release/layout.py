"""Finding a release tree wherever it lies, and arranging it into the layout the loaders read.

Two layouts are known, and either may sit at any depth of a download (inside an archive's
folder, under a repository folder):

    hub:      annotation/{version}/{train,test}.json   reference/{version}-satellite/   query/{version}-ground/
    official: CVG-text/{version}/{train,test}.json     {version}-satellite/  {version}-OSM/  {version}-ground/

So a folder is recognised by its name alone: ``{version}`` holding ``train.json`` or
``test.json`` is a version's annotations; ``{version}-{kind}`` holding images is an image folder
(names compared without case and punctuation: ``new_york-osm`` is ``NewYork-OSM``). Each found
folder is then linked (or moved) to the place the loaders read (``annotation_file`` and
``img.folder`` of the config) under ``paths.data_dir``; no image is copied.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cvgtext.data.release.choose import ANNOTATION_NAMES
from cvgtext.data.release.facts import IMAGE_SUFFIXES, normalized

log = logging.getLogger(__name__)

ARRANGE_MODES = ("link", "move")


@dataclass(frozen=True)
class Place:
    """A folder the loaders read (``target``, relative to the data folder) and what it is."""

    target: str  # annotation/Brisbane, reference/Brisbane-satellite
    name: str  # the folder name it is recognised by, compared normalized
    holds: str  # annotations or images


def places(versions: list[str], annotation_file: str, image_folder: str, city: str) -> list[Place]:
    """The folders a city's versions need, from the config's templates."""
    found = []
    for version in versions:
        annotations = Path(annotation_file.format(version=version, split="train", city=city)).parent.as_posix()
        images = image_folder.format(version=version, city=city)
        found.append(Place(annotations, version, "annotations"))
        found.append(Place(images, Path(images).name, "images"))
    return found


def count_matching(folder: Path, holds: str) -> int:
    """How many files of ``folder`` make it what ``holds`` says (0: it is not such a folder)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    if holds == "annotations":
        return sum(name.lower() in ANNOTATION_NAMES for name in names)
    return sum(name.lower().endswith(IMAGE_SUFFIXES) for name in names)


def find(roots: list[Path], wanted: list[Place]) -> dict[Place, Path]:
    """The folder under ``roots`` for each place, the fullest when several match; hidden folders
    and links (an arranged tree's) are not searched."""
    by_name: dict[str, list[Place]] = {}
    for place in wanted:
        by_name.setdefault(normalized(place.name), []).append(place)
    best: dict[Place, tuple[int, Path]] = {}
    for root in roots:
        for folder, subfolders, _ in os.walk(root):
            here = Path(folder)
            subfolders[:] = sorted(
                name for name in subfolders if not name.startswith(".") and not (here / name).is_symlink()
            )
            for place in by_name.get(normalized(here.name), []):
                count = count_matching(here, place.holds)
                if count and count > best.get(place, (0, here))[0]:
                    best[place] = (count, here)
    return {place: folder for place, (_, folder) in best.items()}


def arrange(found: dict[Place, Path], data_dir: Path, mode: str = "link") -> list[str]:
    """Link (or move) each found folder to its place under ``data_dir``; returns what was done,
    one line each. A folder already at its place, or a non-empty folder there, is left as it is."""
    done = []
    for place, source in sorted(found.items(), key=lambda item: item[0].target):
        target = data_dir / place.target
        if target.exists() and target.resolve() == source.resolve():
            continue
        if target.is_symlink():
            target.unlink()  # a link an earlier arrangement made, to a copy no longer the fullest
        elif target.is_dir():
            if any(target.iterdir()):
                done.append(f"kept {target} (a folder already there); the download's copy is {source}")
                continue
            target.rmdir()
        target.parent.mkdir(parents=True, exist_ok=True)
        done.append(place_folder(source, target, mode))
    return done


def place_folder(source: Path, target: Path, mode: str) -> str:
    """Move ``source`` to ``target`` (a rename), or link it; a move across file systems, which
    would copy, links instead."""
    if mode == "move":
        try:
            os.replace(source, target)
            return f"moved {source} -> {target}"
        except OSError as error:
            log.warning("cannot move %s to %s (%s): linking it instead", source, target, error.strerror)
    os.symlink(os.path.relpath(source.resolve(), target.parent.resolve()), target, target_is_directory=True)
    return f"linked {target} -> {source}"
