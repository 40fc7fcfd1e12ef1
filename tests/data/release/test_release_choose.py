"""Choosing a repository's files for a request: only the city, versions and image kind asked for,
in either layout, loose or archived."""

from __future__ import annotations

import pytest

from cvgtext.data.release.choose import Request, choose_checkpoint, choose_data, covered
from cvgtext.data.release.hub import RemoteFile
from helpers.releases import archived, hub_layout, official_checkpoints, official_layout

BRISBANE_SAT = Request("Brisbane", ("Brisbane", "Brisbane-photos"), "satellite")


def remote(paths) -> list[RemoteFile]:
    return [RemoteFile(path, 1, "0" * 40, None) for path in paths]


def test_the_hub_layout_gives_the_city_s_annotations_and_its_tiles_of_one_kind_only():
    files = {**hub_layout("Brisbane", panoramas=8, photos=4), **hub_layout("Tokyo", panoramas=8, photos=4)}
    chosen = {file.path for file in choose_data(remote(files), [BRISBANE_SAT])}
    expected = {
        path
        for path in files
        if path.startswith(("annotation/Brisbane/", "annotation/Brisbane-photos/"))
        or path.startswith(("reference/Brisbane-satellite/", "reference/Brisbane-photos-satellite/"))
    }
    assert chosen == expected
    assert not any("Tokyo" in path or "OSM" in path or "ground" in path for path in chosen)


def test_the_official_layout_is_chosen_by_the_same_rules():
    files = official_layout(hub_layout("Brisbane", panoramas=8, photos=4))
    chosen = {file.path for file in choose_data(remote(files), [Request("Brisbane", ("Brisbane",), "osm")])}
    assert chosen == {p for p in files if p.startswith(("CVG-text/Brisbane/", "Brisbane-OSM/"))}


@pytest.mark.parametrize(
    "path, chosen",
    [
        ("images/Brisbane-satellite.zip", True),
        ("Brisbane.tar.gz", True),  # everything of the city
        ("CVG-text.tar.gz", True),  # every city's annotations
        ("data/all.zip", True),  # names nothing: may hold anything
        ("annotations_Tokyo.zip", False),
        ("Brisbane_and_Tokyo-satellite.zip", True),  # names ours too
        ("images/Brisbane-OSM.zip", False),
        ("images/Tokyo-satellite.zip", False),
        ("street_view/Brisbane-ground.tar", False),
        ("Brisbane-photos-satellite.zip", False),  # the photos version was not asked for
        ("Brisbane_OSM_annotations.zip", True),  # names the annotations too
        ("README.md", False),
        ("data/train-00000-of-00001.parquet", False),
    ],
)
def test_archives_are_chosen_when_their_names_allow_what_was_asked(path, chosen):
    request = Request("Brisbane", ("Brisbane",), "satellite")
    assert bool(choose_data(remote([path]), [request])) is chosen


def test_an_image_is_chosen_by_its_folder_whatever_its_name_holds():
    # Street-view ids are random letters: "osm" or "sat" inside a file name says nothing.
    names = ["-27.1,153.1_2022-08_xxOSMxx_d62_z3.jpg", "-27.2,153.2_2022-08_sat-Tokyo_d1_z3.png"]
    sat = [f"reference/Brisbane-satellite/{name}" for name in names]
    osm = [f"reference/Brisbane-OSM/{name}" for name in names]
    request = Request("Brisbane", ("Brisbane",), "satellite")
    assert [file.path for file in choose_data(remote(sat + osm), [request])] == sat


def test_city_names_are_compared_without_case_and_punctuation():
    paths = ["reference/New_York-satellite/40.7,-73.9_a.jpg", "CVG-text/new-york/train.json"]
    chosen = choose_data(remote(paths), [Request("NewYork", ("NewYork",), "satellite")])
    assert [file.path for file in chosen] == paths


def test_a_request_is_covered_only_by_annotations_and_images_or_an_archive():
    request = Request("Brisbane", ("Brisbane",), "ground")
    only_text = choose_data(remote(["annotation/Brisbane/train.json"]), [request])
    assert covered(only_text, request) == {"annotations": True, "images": False}
    packed = choose_data(remote(archived(hub_layout("Brisbane", panoramas=4, photos=4))), [request])
    assert covered(packed, request) == {"annotations": True, "images": True}


def test_the_official_checkpoint_of_a_city_and_img_is_chosen_by_its_name():
    files = remote(official_checkpoints())
    chosen = choose_checkpoint(files, "Tokyo", "osm")
    assert chosen is not None and chosen.name.startswith("long_model_Tokyo-mixed_1e-05_128_osm_epoch")
    assert choose_checkpoint(files, "Tokyo", "stv") is None
    later = remote(
        [
            "long_model_Tokyo-mixed_1e-05_128_osm_epoch3_30.1.pth",
            "long_model_Tokyo-mixed_1e-05_128_osm_epoch12_31.0.pth",
        ]
    )
    assert choose_checkpoint(later, "Tokyo", "osm").name.endswith("epoch12_31.0.pth")
