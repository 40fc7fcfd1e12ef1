"""Finding a release tree in either layout at any depth, and arranging it for the loaders with
links or moves: no image is copied, nothing already there is lost."""

from __future__ import annotations

import json
import os

import pytest

from cvgtext.data.annotations import load_pairs
from cvgtext.data.release.layout import arrange, find, places
from helpers.releases import hub_layout, official_layout, write_files

ANNOTATION_FILE = "annotation/{version}/{split}.json"
SATELLITE = "reference/{version}-satellite"


def brisbane_places():
    return places(["Brisbane", "Brisbane-photos"], ANNOTATION_FILE, SATELLITE, "Brisbane")


@pytest.mark.parametrize("layout", ["hub", "official"])
@pytest.mark.parametrize("depth", ["", "CVG-Text_full/v1.0/"])
def test_either_layout_is_found_at_any_depth_and_linked_where_the_loaders_read(tmp_path, layout, depth):
    files = hub_layout("Brisbane", panoramas=8, photos=4)
    files = files if layout == "hub" else official_layout(files)
    download = write_files(tmp_path / "downloads", {depth + path: content for path, content in files.items()})
    found = find([download], brisbane_places())
    assert {place.target for place in found} == {
        "annotation/Brisbane",
        "annotation/Brisbane-photos",
        "reference/Brisbane-satellite",
        "reference/Brisbane-photos-satellite",
    }
    data_dir = tmp_path / "data"
    assert len(arrange(found, data_dir)) == 4
    pairs = load_pairs(
        data_dir / "annotation/Brisbane-photos/test.json", data_dir / "reference/Brisbane-photos-satellite"
    )
    assert [pair.name for pair in pairs] == list(json.loads(files[next(p for p in files if "photos/test" in p)]))
    for linked in (data_dir / "reference/Brisbane-satellite").iterdir():  # the same files, not copies
        original = next(download.rglob(f"Brisbane-satellite/{linked.name}"))
        assert os.stat(linked).st_ino == os.stat(original).st_ino
    assert arrange(find([download], brisbane_places()), data_dir) == []  # a second run changes nothing


def test_moving_renames_the_folders_and_copies_nothing(tmp_path):
    download = write_files(tmp_path / "downloads", hub_layout("Brisbane", panoramas=8, photos=4))
    source = download / "reference/Brisbane-satellite"
    inodes = {path.name: path.stat().st_ino for path in source.iterdir()}
    arrange(find([download], brisbane_places()), tmp_path / "data", mode="move")
    moved = tmp_path / "data/reference/Brisbane-satellite"
    assert not moved.is_symlink() and not source.exists()
    assert {path.name: path.stat().st_ino for path in moved.iterdir()} == inodes


def test_a_folder_already_in_place_is_kept_and_a_stale_link_replaced(tmp_path):
    download = write_files(tmp_path / "downloads", hub_layout("Brisbane", panoramas=8, photos=4))
    data_dir = tmp_path / "data"
    own = data_dir / "annotation/Brisbane"
    own.mkdir(parents=True)
    (own / "train.json").write_text("{}")  # the user's own file
    stale = data_dir / "reference/Brisbane-satellite"
    stale.parent.mkdir(parents=True)
    stale.symlink_to(tmp_path / "gone")
    done = arrange(find([download], brisbane_places()), data_dir)
    assert f"kept {own} (a folder already there)" in done[0]
    assert (own / "train.json").read_text() == "{}"
    assert stale.resolve() == (download / "reference/Brisbane-satellite").resolve()


def test_the_fullest_of_several_copies_is_chosen(tmp_path):
    files = hub_layout("Brisbane", panoramas=8, photos=4)
    write_files(tmp_path / "a", files)
    partial = {path: content for path, content in files.items() if not path.endswith(("0.jpg", "1.jpg"))}
    write_files(tmp_path / "b", partial)
    found = find([tmp_path], brisbane_places())
    assert all(folder.is_relative_to(tmp_path / "a") for place, folder in found.items() if place.holds == "images")
