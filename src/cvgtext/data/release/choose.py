"""Choosing the files of a repository that a request needs, whatever the repository's layout.

A request is a city's text versions and one image kind. A file is chosen when it is
- an annotation file (``train.json``, ``test.json``) in a folder named after a requested version;
- an image in a folder named ``{version}-{kind}`` of a requested version and kind (the images
  are named by their coordinates, so only the folder says what they are);
- an archive whose path names no other city, no other kind (unless it also names the
  annotations) and no ``-photos`` version that was not asked for: it may hold what was asked,
  and only unpacking tells.
Nothing else is fetched: one city's satellite tiles never pull another city's or the street views.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cvgtext.data.release.facts import (
    ANNOTATION_WORDS,
    CHECKPOINT_NAME,
    CITIES,
    IMAGE_SUFFIXES,
    KIND_WORDS,
    kind_words,
    normalized,
    words,
)
from cvgtext.data.release.hub import RemoteFile

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
ANNOTATION_NAMES = ("train.json", "test.json")


@dataclass(frozen=True)
class Request:
    """What to fetch of one city: its text versions (``Brisbane``, ``Brisbane-photos``) and an
    image kind (the part of ``img.folder`` after ``{version}-``: satellite, osm, ground)."""

    city: str
    versions: tuple[str, ...]
    kind: str

    def image_folders(self) -> set[str]:
        return {normalized(f"{version}-{self.kind}") for version in self.versions}

    def wants(self, member_path: str) -> bool:
        """Whether a path (a repository file, or a member of an archive) is part of the request."""
        parts = member_path.replace("\\", "/").strip("/").split("/")
        folders, name = parts[:-1], parts[-1]
        lower = name.lower()
        if lower in ANNOTATION_NAMES:
            return any(normalized(folder) in {normalized(v) for v in self.versions} for folder in folders)
        if lower.endswith(IMAGE_SUFFIXES):
            return bool(folders) and normalized(folders[-1]) in self.image_folders()
        if is_archive(name):
            return self.may_hold(member_path)
        return False

    def may_hold(self, archive_path: str) -> bool:
        """Whether an archive, by its path alone, may hold part of the request."""
        text = normalized(archive_stem(archive_path))
        path_words = set(words(archive_stem(archive_path)))
        other_cities = [city for city in CITIES if city != self.city and normalized(city) in text]
        if other_cities and normalized(self.city) not in text:
            return False
        kinds = {kind for kind, synonyms in KIND_WORDS.items() if path_words & set(synonyms)}
        mine = set(kind_words(self.kind))
        if kinds and not (path_words & mine) and not (path_words & set(ANNOTATION_WORDS)):
            return False
        photos_asked = any("photo" in normalized(version) for version in self.versions)
        return photos_asked or "photos" not in path_words


def is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def archive_stem(path: str) -> str:
    """The path without its archive suffix: ``data/Brisbane-satellite.tar.gz`` -> ``data/Brisbane-satellite``."""
    lower = path.lower()
    for suffix in sorted(ARCHIVE_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return path[: -len(suffix)]
    return path


def choose_data(files: Iterable[RemoteFile], requests: Sequence[Request]) -> list[RemoteFile]:
    """The files any of ``requests`` needs, in the repository's order."""
    return [file for file in files if any(request.wants(file.path) for request in requests)]


def choose_checkpoint(files: Iterable[RemoteFile], city: str, img: str) -> RemoteFile | None:
    """The official checkpoint of ``city`` and ``img`` (the highest epoch when there are several)."""
    found = []
    for file in files:
        match = CHECKPOINT_NAME.match(file.name)
        if match and normalized(match["city"]) == normalized(city) and match["img"] == img:
            found.append((int(match["epoch"]), file))
    return max(found, key=lambda pair: pair[0])[1] if found else None


def covered(chosen: Sequence[RemoteFile], request: Request) -> dict[str, bool]:
    """Whether ``chosen`` holds the request's annotations and images, or an archive that may."""
    archives = any(is_archive(file.name) for file in chosen)
    annotations = any(file.name.lower() in ANNOTATION_NAMES for file in chosen)
    images = any(file.name.lower().endswith(IMAGE_SUFFIXES) for file in chosen)
    return {"annotations": annotations or archives, "images": images or archives}
