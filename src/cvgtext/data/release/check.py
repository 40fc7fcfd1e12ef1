"""The check of a release in the loaders' layout: what is there, what is missing, the known quirks.

Per city, text version and split: captions (panorama and single-view), annotated images present
and missing; then the gallery (distinct tiles) beside the published sizes, and byte-identical
tiles under different names. Problems that stop a run (a missing annotation file or image
folder, a missing image, a name without coordinates, an empty image, a name in both training and
test) are errors; the release's known quirks are warnings that say what the project does about
them; differences from the published sizes are notes (the published figures disagree).
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from cvgtext.data.annotations import read_annotation
from cvgtext.data.names import check_plain_name, is_panorama, parse_coordinates
from cvgtext.data.release.facts import (
    IMAGE_SUFFIXES,
    KNOWN_ORPHANS,
    KNOWN_TWIN_PAIRS,
    PAPER_PLACES,
    PUBLISHED_GALLERY,
    PUBLISHED_TEST_PANORAMAS,
)
from cvgtext.utils.errors import DataError
from cvgtext.utils.fingerprint import file_digest

SPLITS = ("train", "test")


@dataclass
class Row:
    version: str
    split: str
    captions: int = 0
    panoramas: int = 0
    images: int = 0  # annotated images present
    missing: int = 0


@dataclass
class Report:
    """What :func:`check_release` found: a table, and its errors, warnings and notes."""

    city: str
    kind: str
    data_dir: Path
    rows: list[Row] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def check_release(
    data_dir: Path, city: str, versions: list[str], annotation_file: str, image_folder: str, kind: str
) -> Report:
    """Check ``city``'s ``versions`` under ``data_dir`` with the loaders' templates."""
    report = Report(city, kind, data_dir)
    annotated: dict[str, list[tuple[str, str]]] = defaultdict(list)  # name -> [(version, split)]
    tiles: dict[Path, set[str]] = {}  # image folder -> its image files
    for version in versions:
        folder = data_dir / image_folder.format(version=version, city=city)
        present = image_names(folder, report)
        if present is not None:
            tiles[folder] = present
        for split in SPLITS:
            path = data_dir / annotation_file.format(version=version, split=split, city=city)
            checked = check_split(path, folder, present, city, split, report)
            if checked is not None:
                row, names = checked
                row.version = version
                report.rows.append(row)
                for name in names:
                    annotated[name].append((version, split))
    in_both = sorted(name for name, where in annotated.items() if {split for _, split in where} == set(SPLITS))
    if in_both:
        report.errors.append(
            f"{len(in_both)} names are annotated both for training and for test (the loaders refuse them): "
            + ", ".join(in_both[:5])
        )
    compare_sizes(report, tiles, annotated)
    report_twins(report, list(tiles), annotated)
    return report


def image_names(folder: Path, report: Report) -> set[str] | None:
    """The image files of ``folder``; an error when it does not exist, or for empty files."""
    try:
        entries = [entry for entry in os.scandir(folder) if entry.name.lower().endswith(IMAGE_SUFFIXES)]
    except FileNotFoundError:
        report.errors.append(f"image folder {folder} does not exist")
        return None
    empty = sorted(entry.name for entry in entries if entry.stat().st_size == 0)
    if empty:
        report.errors.append(
            f"{len(empty)} images in {folder} are empty files (a broken transfer): " + ", ".join(empty[:5])
        )
    return {entry.name for entry in entries}


def check_split(
    path: Path, folder: Path, present: set[str] | None, city: str, split: str, report: Report
) -> tuple[Row, list[str]] | None:
    """One annotation file's row and names; its problems go to ``report``."""
    try:
        captions = read_annotation(path)
    except DataError as error:
        report.errors.append(str(error))
        return None
    row = Row("", split, captions=len(captions), panoramas=sum(map(is_panorama, captions)))
    bad_names = []
    for name in captions:
        try:
            check_plain_name(name)
            parse_coordinates(name)
        except DataError as error:
            bad_names.append(str(error))
    if bad_names:
        report.errors.append(
            f"annotation file {path}: {len(bad_names)} names cannot be used: " + "; ".join(bad_names[:3])
        )
    if present is None:
        return row, list(captions)
    missing = sorted(name for name in captions if name not in present)
    row.images, row.missing = len(captions) - len(missing), len(missing)
    known = [name for name in missing if split == "train" and name in KNOWN_ORPHANS.get(city, ())]
    for name in known:
        report.warnings.append(
            f"known quirk: {name} (annotated in {path}) has no tile in {folder}; the loader leaves this "
            "training text out and says so in the run's log"
        )
    unknown = [name for name in missing if name not in known]
    if unknown:
        report.errors.append(
            f"{len(unknown)} images annotated in {path} are missing from {folder}: " + ", ".join(unknown[:5])
        )
    return row, list(captions)


def compare_sizes(report: Report, tiles: dict[Path, set[str]], annotated: dict[str, list[tuple[str, str]]]) -> None:
    """Notes: the gallery and the test panoramas beside the published figures."""
    gallery = set().union(*tiles.values())
    test_tiles = {name for name, where in annotated.items() if any(split == "test" for _, split in where)}
    line = (
        f"gallery: {len(gallery):,} distinct tiles in {len(tiles)} folders "
        f"({len(gallery & test_tiles):,} of them test tiles)"
    )
    if report.city in PUBLISHED_GALLERY:
        panoramas, singles = PAPER_PLACES[report.city]
        line += (
            f"; published: {PUBLISHED_GALLERY[report.city]:,} tiles (a third-party full-city evaluation), "
            f"{panoramas + singles:,} places (the paper)"
        )
    report.notes.append(line)
    test_panoramas = sum(
        1 for name, where in annotated.items() if is_panorama(name) and any(split == "test" for _, split in where)
    )
    published = f" (published: {PUBLISHED_TEST_PANORAMAS:,})" if report.city in PUBLISHED_GALLERY else ""
    report.notes.append(f"test panorama queries: {test_panoramas:,}{published}")


def twin_groups(folders: list[Path]) -> list[list[str]]:
    """Groups of byte-identical images with different names (only files of equal size are read)."""
    by_size: dict[int, list[Path]] = defaultdict(list)
    for folder in folders:
        for entry in os.scandir(folder):
            if entry.name.lower().endswith(IMAGE_SUFFIXES) and entry.is_file():
                by_size[entry.stat().st_size].append(Path(entry.path))
    by_digest: dict[str, set[str]] = defaultdict(set)
    for paths in by_size.values():
        if len({path.name for path in paths}) > 1:
            for path in paths:
                by_digest[file_digest(path)].add(path.name)
    return sorted(sorted(names) for names in by_digest.values() if len(names) > 1)


def annotated_where(name: str, annotated: dict[str, list[tuple[str, str]]]) -> str:
    """``name (Brisbane train)``: a file name and the versions and splits that annotate it."""
    return (
        f"{name} ({', '.join(f'{version} {split}' for version, split in annotated.get(name, [])) or 'not annotated'})"
    )


def report_twins(report: Report, folders: list[Path], annotated: dict[str, list[tuple[str, str]]]) -> None:
    groups = twin_groups(folders)
    if not groups:
        return
    known = KNOWN_TWIN_PAIRS.get(report.city) if report.kind == "satellite" else None
    listed = "".join("\n    " + " = ".join(annotated_where(name, annotated) for name in group) for group in groups)
    report.warnings.append(
        f"{'known quirk' if known else 'quirk'}: {len(groups)} groups of byte-identical {report.kind} tiles under "
        f"different names{f' (the release is known to have {known} such pairs in {report.city})' if known else ''}: "
        "kept, each name its own tile at its own place, as in the release; in one split's gallery they "
        "score alike, and a name that ties with a caption's true tile ranks above it, so a caption of either "
        f"counts as wrong at R@1:{listed}"
    )


def format_report(report: Report) -> str:
    """The report as the command prints it."""
    lines = [f"{report.city} ({report.kind}) in {report.data_dir}"]
    header = (
        f"  {'version':<22} {'split':<6} {'captions':>9} {'panorama':>9} {'single':>7} {'images':>8} {'missing':>8}"
    )
    lines.append(header)
    for row in report.rows:
        lines.append(
            f"  {row.version:<22} {row.split:<6} {row.captions:>9,} {row.panoramas:>9,} "
            f"{row.captions - row.panoramas:>7,} {row.images:>8,} {row.missing:>8,}"
        )
    lines += [f"  {note}" for note in report.notes]
    lines += [f"warning: {warning}" for warning in report.warnings]
    lines += [f"problem: {error}" for error in report.errors]
    return "\n".join(lines)
