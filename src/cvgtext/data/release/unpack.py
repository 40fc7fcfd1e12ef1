"""Unpacking the archives of a download in place: only the members a request needs.

An archive ``<folder>/<stem>.zip`` (or ``.tar``, ``.tar.gz``, ...) is unpacked into
``<folder>/<stem>/``, so that the archive's own name gives its members the context a flat archive
of images lacks (``Brisbane-satellite.zip`` holding bare ``lat,lon_....png`` files). Each member is
written to a temporary file and renamed, so an interrupted run leaves no half member.
``.<archive>.unpacked.json`` records the archive (size and time) and the requests it was unpacked
for: a rerun does not read it again for those, and after an interruption keeps the members of
this archive already written (by their size); an archive fetched again is unpacked anew. Archives found inside
archives are unpacked in turn. Only regular files are written, never outside their folder.
"""

from __future__ import annotations

import json
import lzma
import os
import shutil
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from cvgtext.data.release.choose import archive_stem, is_archive
from cvgtext.utils.atomic import atomic_write
from cvgtext.utils.errors import DataError

DAMAGE = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError)


def marker_path(archive: Path) -> Path:
    return archive.with_name(f".{archive.name}.unpacked.json")


def identity(archive: Path) -> dict:
    """What tells this archive from one fetched again in its place."""
    stat = archive.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def read_marker(archive: Path) -> dict:
    """The archive's marker, or ``{}`` when there is none or it was written for another archive."""
    try:
        marker = json.loads(marker_path(archive).read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return marker if marker.get("archive") == identity(archive) else {}


def write_marker(archive: Path, requests: list[str]) -> None:
    with atomic_write(marker_path(archive)) as stream:
        json.dump({"archive": identity(archive), "requests": sorted(set(requests))}, stream)


def members(archive: Path) -> Iterator[tuple[str, int, Callable[[], IO[bytes]]]]:
    """``(path, size, open)`` of each regular file of a zip or tar archive."""
    if archive.name.lower().endswith(".zip"):
        with zipfile.ZipFile(archive) as bundle:
            for info in bundle.infolist():
                if not info.is_dir():
                    yield info.filename, info.file_size, lambda info=info: bundle.open(info)
        return
    with tarfile.open(archive, mode="r:*") as bundle:
        for info in bundle:
            if info.isfile():
                yield info.name, info.size, lambda info=info: bundle.extractfile(info)


def safe_parts(name: str, archive: Path) -> list[str]:
    parts = [part for part in name.replace("\\", "/").split("/") if part not in ("", ".")]
    if name.startswith(("/", "\\")) or ".." in parts or not parts or ":" in parts[0]:
        raise DataError(f"archive {archive} holds a member {name!r} that would leave its folder; refusing it")
    return parts


def write_member(source: IO[bytes], destination: Path) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent)
    try:
        with os.fdopen(handle, "wb") as target:
            shutil.copyfileobj(source, target, 1 << 20)
        os.replace(temporary, destination)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def unpack(archive: Path, wanted: Callable[[str], bool], key: str) -> list[Path]:
    """Unpack the members of ``archive`` that ``wanted`` accepts (it is given each member's path
    as ``<stem>/<member>``) into ``<stem>/`` beside it; ``key`` names the request in the marker.
    Returns the archives among the members written."""
    marker = read_marker(archive)
    if key in marker.get("requests", []):
        return []
    # Members already on disk are this archive's (an interrupted run's) only when the marker says
    # so; after the archive was fetched again, every wanted member is written anew.
    trusted = bool(marker)
    write_marker(archive, marker.get("requests", []))
    stem = Path(archive_stem(archive.name)).name
    target = archive.parent / stem
    nested = []
    try:
        for name, size, open_member in members(archive):
            relative = "/".join([stem, *safe_parts(name, archive)])
            if not wanted(relative):
                continue
            destination = archive.parent.joinpath(*relative.split("/"))
            if not (trusted and destination.is_file() and destination.stat().st_size == size):
                with open_member() as source:
                    write_member(source, destination)
            if is_archive(destination.name):
                nested.append(destination)
    except DAMAGE as error:
        raise DataError(
            f"archive {archive} is truncated or damaged ({type(error).__name__}: {error}); what was unpacked "
            f"from it is in {target}; delete the archive and run the download again, or fetch it elsewhere"
        ) from None
    write_marker(archive, [*marker.get("requests", []), key])
    return nested


def unpack_all(archives: list[Path], wanted: Callable[[str], bool], key: str) -> int:
    """Unpack ``archives`` and the archives found inside them; returns how many were read."""
    pending, done = list(archives), 0
    while pending:
        archive = pending.pop(0)
        print(f"unpacking {archive}", flush=True)
        pending.extend(unpack(archive, wanted, key))
        done += 1
    return done
