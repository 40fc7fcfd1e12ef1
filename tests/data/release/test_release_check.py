"""The check of a release: counts per version and split, missing files as problems, the known
quirks as warnings that say what the project does; the loader leaves the orphan out, named."""

from __future__ import annotations

import json
import logging

import pytest

from cvgtext.data.annotations import load_pairs
from cvgtext.data.release.check import check_release, format_report, twin_groups
from helpers.releases import ORPHAN, hub_layout, twin_name, write_files

ANNOTATION_FILE = "annotation/{version}/{split}.json"
SATELLITE = "reference/{version}-satellite"
VERSIONS = ["Brisbane", "Brisbane-photos"]


def check(data_dir, city="Brisbane", folder=SATELLITE, kind="satellite"):
    versions = [version.replace("Brisbane", city) for version in VERSIONS]
    return check_release(data_dir, city, versions, ANNOTATION_FILE, folder, kind)


def test_a_release_without_quirks_passes_with_its_counts(tmp_path):
    write_files(tmp_path, hub_layout("Tokyo", panoramas=8, photos=4, quirks=False))
    report = check(tmp_path, "Tokyo")
    assert report.errors == [] and report.warnings == []
    counted = [(row.version, row.split, row.captions, row.panoramas, row.images, row.missing) for row in report.rows]
    assert counted == [
        ("Tokyo", "train", 6, 6, 6, 0),
        ("Tokyo", "test", 2, 2, 2, 0),
        ("Tokyo-photos", "train", 3, 0, 3, 0),
        ("Tokyo-photos", "test", 1, 0, 1, 0),
    ]
    assert "gallery: 12 distinct tiles in 2 folders (3 of them test tiles); published: 6,107" in report.notes[0]
    assert report.notes[1] == "test panorama queries: 2 (published: 1,000)"


def test_the_two_known_quirks_are_warnings_that_name_the_files(tmp_path):
    files = hub_layout("Brisbane", panoramas=8, photos=4)
    write_files(tmp_path, files)
    report = check(tmp_path)
    assert report.errors == []
    orphan, twins = report.warnings
    assert orphan.startswith(f"known quirk: {ORPHAN}") and "leaves this training text out" in orphan
    assert "known quirk: 2 groups of byte-identical satellite tiles" in twins
    assert "known to have 2 such pairs in Brisbane" in twins and "kept" in twins
    first = next(name for name in json.loads(files["annotation/Brisbane/train.json"]) if "pano001" in name)
    assert f"{first} (Brisbane train) = {twin_name(first)} (Brisbane train)" in twins
    printed = format_report(report)
    assert printed.count("warning: ") == 2 and "problem: " not in printed


def test_twins_are_found_only_among_files_of_equal_bytes(tmp_path):
    folder = tmp_path / "tiles"
    folder.mkdir()
    for name, content in {
        "a.png": b"1234",
        "b.png": b"1234",
        "c.png": b"1235",
        "d.png": b"12345",
        "e.png": b"1234",
    }.items():
        (folder / name).write_bytes(content)
    assert twin_groups([folder]) == [["a.png", "b.png", "e.png"]]


@pytest.mark.parametrize(
    "damage, problem",
    [
        (
            lambda root: (root / "reference/Brisbane-photos-satellite").rename(root / "elsewhere"),
            "image folder {root}/reference/Brisbane-photos-satellite does not exist",
        ),
        (
            lambda root: (root / "annotation/Brisbane/test.json").unlink(),
            "annotation file {root}/annotation/Brisbane/test.json does not exist",
        ),
        (
            lambda root: next((root / "reference/Brisbane-satellite").glob("*pano003*")).unlink(),
            "1 images annotated in {root}/annotation/Brisbane/train.json are missing from "
            "{root}/reference/Brisbane-satellite: -27.4703",
        ),
        (
            lambda root: next((root / "reference/Brisbane-satellite").glob("*pano005*")).write_bytes(b""),
            "1 images in {root}/reference/Brisbane-satellite are empty files",
        ),
        (
            lambda root: (root / "annotation/Brisbane/train.json").write_text('{"nowhere.png": "a caption"}'),
            "annotation file {root}/annotation/Brisbane/train.json: 1 names cannot be used: "
            "file name 'nowhere.png' does not start",
        ),
    ],
    ids=["image-folder", "annotation-file", "image", "empty-image", "bad-name"],
)
def test_a_missing_or_broken_file_is_a_problem_that_names_it(tmp_path, damage, problem):
    write_files(tmp_path, hub_layout("Brisbane", panoramas=8, photos=4))
    damage(tmp_path)
    report = check(tmp_path)
    assert any(error.startswith(problem.format(root=tmp_path)) for error in report.errors), report.errors
    assert f"problem: {problem.format(root=tmp_path)}" in format_report(report)


def test_the_loader_leaves_the_known_orphan_out_and_names_it(tmp_path, caplog):
    write_files(tmp_path, hub_layout("Brisbane", panoramas=8, photos=4))
    train, tiles = tmp_path / "annotation/Brisbane/train.json", tmp_path / "reference/Brisbane-satellite"
    with caplog.at_level(logging.WARNING):
        pairs = load_pairs(train, tiles, known_missing={ORPHAN})
    assert ORPHAN not in {pair.name for pair in pairs} and len(pairs) == len(json.loads(train.read_text())) - 1
    assert f"{tiles / ORPHAN} is not in the release (a known quirk" in caplog.text
    from cvgtext.utils.errors import DataError

    with pytest.raises(DataError, match=f"image {tiles / ORPHAN} does not exist"):
        load_pairs(train, tiles)  # not known: still a problem
