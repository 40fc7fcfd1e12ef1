"""Unpacking archives in place: only the members asked for, into a folder named after the
archive; a truncated archive or a member leaving its folder is named."""

from __future__ import annotations

import json

import pytest

from cvgtext.data.release.choose import Request
from cvgtext.data.release.unpack import marker_path, read_marker, unpack, unpack_all
from cvgtext.utils.errors import DataError
from helpers.releases import archived, hub_layout, tarred, write_files, zipped

REQUEST = Request("Brisbane", ("Brisbane",), "satellite")


@pytest.fixture
def packed(tmp_path):
    """The official layout of Brisbane and Tokyo, archived, written under ``tmp_path``."""
    files = archived({**hub_layout("Brisbane", panoramas=8, photos=4), **hub_layout("Tokyo", panoramas=8, photos=4)})
    return write_files(tmp_path, files), files


def relative_files(folder):
    return sorted(
        p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")
    )


def test_a_flat_archive_goes_into_a_folder_of_its_name_and_only_wanted_members_are_written(packed):
    root, files = packed
    unpack_all([root / "CVG-text.tar.gz", root / "images/Brisbane-satellite.zip"], REQUEST.wants, "key")
    written = set(relative_files(root)) - set(files)
    annotations = {p for p in written if p.startswith("CVG-text/")}
    assert annotations == {"CVG-text/CVG-text/Brisbane/train.json", "CVG-text/CVG-text/Brisbane/test.json"}
    tiles = {p for p in written if p.startswith("images/")}
    assert all(p.startswith("images/Brisbane-satellite/") for p in tiles)
    assert len(tiles) == 8 + 2  # the panoramas' tiles and two twins; the orphan has none


def test_a_second_run_reads_an_archive_again_only_for_a_new_request(packed):
    root, _ = packed
    archive = root / "CVG-text.tar.gz"
    unpack(archive, REQUEST.wants, "Brisbane")
    assert json.loads(marker_path(archive).read_text())["requests"] == ["Brisbane"]
    (root / "CVG-text/CVG-text/Brisbane/train.json").unlink()
    unpack(archive, REQUEST.wants, "Brisbane")  # recorded: not read again
    assert not (root / "CVG-text/CVG-text/Brisbane/train.json").exists()
    tokyo = Request("Tokyo", ("Tokyo",), "satellite")
    unpack(archive, tokyo.wants, "Tokyo")
    assert (root / "CVG-text/CVG-text/Tokyo/train.json").is_file()
    assert json.loads(marker_path(archive).read_text())["requests"] == ["Brisbane", "Tokyo"]


def test_an_archive_replaced_by_another_is_read_again(tmp_path):
    archive = tmp_path / "Brisbane-satellite.zip"
    archive.write_bytes(zipped({"-27.1,153.1_a.png": b"old"}))
    unpack(archive, REQUEST.wants, "Brisbane")
    archive.write_bytes(zipped({"-27.1,153.1_a.png": b"new", "-27.2,153.2_b.png": b"more"}))  # fetched again
    unpack(archive, REQUEST.wants, "Brisbane")
    assert (tmp_path / "Brisbane-satellite/-27.1,153.1_a.png").read_bytes() == b"new"  # the same size
    assert (tmp_path / "Brisbane-satellite/-27.2,153.2_b.png").read_bytes() == b"more"


@pytest.mark.parametrize("suffix, pack", [(".zip", zipped), (".tar.gz", tarred)])
@pytest.mark.parametrize("kept", [0.5, 0.9])
def test_a_truncated_archive_is_named(tmp_path, suffix, pack, kept):
    members = {f"Brisbane-satellite/-27.{i},153.1_a.png": bytes(range(256)) * 40 for i in range(5)}
    content = pack(members)
    archive = tmp_path / f"Brisbane-satellite{suffix}"
    archive.write_bytes(content[: int(len(content) * kept)])
    with pytest.raises(DataError, match=f"archive {archive} is truncated or damaged .* run the download again"):
        unpack(archive, lambda path: True, "key")
    assert read_marker(archive)["requests"] == []  # read again by the next run


@pytest.mark.parametrize("member", ["../evil.json", "/etc/evil.json", "a/../../evil.json"])
def test_a_member_that_would_leave_its_folder_is_refused(tmp_path, member):
    archive = tmp_path / "bad.zip"
    archive.write_bytes(zipped({member: b"{}"}))
    with pytest.raises(DataError, match="would leave its folder"):
        unpack(archive, lambda path: True, "key")
    assert not (tmp_path.parent / "evil.json").exists()


def test_archives_inside_archives_are_unpacked_in_turn(tmp_path):
    inner = zipped({"-27.1,153.1_a.png": b"png"})
    (tmp_path / "all.zip").write_bytes(zipped({"Brisbane-satellite.zip": inner, "Tokyo-satellite.zip": inner}))
    assert unpack_all([tmp_path / "all.zip"], REQUEST.wants, "key") == 2
    assert relative_files(tmp_path) == [
        "all.zip",
        "all/Brisbane-satellite.zip",
        "all/Brisbane-satellite/-27.1,153.1_a.png",
    ]
