"""Listing a repository and fetching its files from a hub on 127.0.0.1: only what was chosen,
resumed from any byte a killed run left, checked against the hub's digests."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest

from cvgtext.data.release.hub import list_repository
from cvgtext.data.release.transfer import fetch, part_path
from cvgtext.utils.errors import ConfigError, DataError
from helpers.fake_hub import FakeHub
from helpers.releases import archived, hub_layout

REPO = "CVG-Text/CVG-Text"


@pytest.fixture
def hub(online):
    with FakeHub(page_size=7) as server:
        server.add("dataset", REPO, archived(hub_layout("Brisbane", panoramas=8, photos=4)))
        yield server


def test_the_listing_follows_every_page_and_keeps_files_only(hub):
    listing = list_repository(REPO, "dataset", endpoint=hub.url)
    assert sorted(file.path for file in listing.files) == sorted(hub.repos[("dataset", REPO)])
    assert len(hub.repos[("dataset", REPO)]) > hub.page_size  # several pages were read
    archive = next(file for file in listing.files if file.path.endswith("Brisbane-satellite.zip"))
    assert archive.sha256 == hashlib.sha256(hub.repos[("dataset", REPO)][archive.path]).hexdigest()
    assert listing.commit == hub.commit(("dataset", REPO))


def test_only_the_chosen_files_are_fetched_and_a_rerun_fetches_nothing(hub, tmp_path):
    listing = list_repository(REPO, "dataset", endpoint=hub.url)
    chosen = [file for file in listing.files if file.path.endswith(("Brisbane-OSM.zip", "README.md"))]
    paths = fetch(listing, chosen, tmp_path, endpoint=hub.url)
    for file, path in zip(chosen, paths):
        assert path.read_bytes() == hub.repos[("dataset", REPO)][file.path]
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == sorted(
        [".fetched.json", *(file.path for file in chosen)]
    )
    gets = len([request for request in hub.requests if request["method"] == "GET"])
    fetch(listing, chosen, tmp_path, endpoint=hub.url)
    assert len([request for request in hub.requests if request["method"] == "GET"]) == gets


@pytest.mark.parametrize(
    "kept",
    [lambda n: 0, lambda n: 1, lambda n: n // 3, lambda n: n - 1, lambda n: n],
    ids=["nothing", "one-byte", "a-third", "all-but-one", "all"],
)
def test_a_transfer_killed_at_any_byte_resumes_from_it(hub, tmp_path, kept):
    """A killed run leaves the bytes it had in the part file; the next asks for the rest only."""
    listing = list_repository(REPO, "dataset", endpoint=hub.url)
    (file,) = [file for file in listing.files if file.path.endswith("Brisbane-satellite.zip")]
    content = hub.repos[("dataset", REPO)][file.path]
    kept = kept(len(content))
    destination = tmp_path / file.path
    destination.parent.mkdir(parents=True)
    part_path(destination, file).write_bytes(content[:kept])
    (path,) = fetch(listing, [file], tmp_path, endpoint=hub.url)
    assert path.read_bytes() == content and not part_path(destination, file).exists()
    transfers = hub.fetched(file.sha256)
    if kept == len(content):
        assert transfers == []  # whole already: checked and renamed
    else:
        assert [request["range"] for request in transfers] == ([f"bytes={kept}-"] if kept else [None])


def test_a_part_file_of_another_version_is_deleted_not_resumed(hub, tmp_path):
    listing = list_repository(REPO, "dataset", endpoint=hub.url)
    (file,) = [file for file in listing.files if file.path.endswith("Brisbane-satellite.zip")]
    destination = tmp_path / file.path
    destination.parent.mkdir(parents=True)
    older = replace(file, sha256="0" * 64)  # the same path at an earlier commit
    part_path(destination, older).write_bytes(b"the start of an older version")
    fetch(listing, [file], tmp_path, endpoint=hub.url)
    assert [request["range"] for request in hub.fetched(file.sha256)] == [None]
    assert not part_path(destination, older).exists()


def test_a_part_file_of_wrong_bytes_is_deleted_and_named(hub, tmp_path):
    listing = list_repository(REPO, "dataset", endpoint=hub.url)
    (file,) = [file for file in listing.files if file.path.endswith("Brisbane-satellite.zip")]
    destination = tmp_path / file.path
    destination.parent.mkdir(parents=True)
    part_path(destination, file).write_bytes(b"x" * 100)  # not the file's first bytes
    with pytest.raises(DataError, match=f"{file.path} of {REPO} arrived with digest .* run the download again"):
        fetch(listing, [file], tmp_path, endpoint=hub.url)
    assert not part_path(destination, file).exists() and not destination.exists()
    (path,) = fetch(listing, [file], tmp_path, endpoint=hub.url)
    assert path.read_bytes() == hub.repos[("dataset", REPO)][file.path]


def test_a_file_changed_in_place_is_fetched_again(hub, tmp_path):
    listing = list_repository(REPO, "dataset", endpoint=hub.url)
    (file,) = [file for file in listing.files if file.path == "README.md"]
    (path,) = fetch(listing, [file], tmp_path, endpoint=hub.url)
    (tmp_path / ".fetched.json").unlink()  # as if the run was killed before it recorded the file
    path.write_bytes(b"#" * file.size)  # same size, other bytes
    fetch(listing, [file], tmp_path, endpoint=hub.url)
    assert path.read_bytes() == hub.repos[("dataset", REPO)]["README.md"]


def test_hub_errors_say_what_to_do(online, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with FakeHub(token="hf_secret") as hub:
        hub.add("dataset", REPO, {"README.md": b"hi"})
        with pytest.raises(ConfigError, match="no repository someone/else on .* check the name"):
            list_repository("someone/else", "dataset", endpoint=hub.url)
        with pytest.raises(ConfigError, match="or set HF_TOKEN"):
            list_repository(REPO, "dataset", endpoint=hub.url)  # private, and no token given
        monkeypatch.setenv("HF_TOKEN", "hf_secret")
        assert [file.path for file in list_repository(REPO, "dataset", endpoint=hub.url).files] == ["README.md"]
        with pytest.raises(ConfigError, match="no such revision"):
            list_repository(REPO, "dataset", revision="v9", endpoint=hub.url)
        closed = hub.url
    with pytest.raises(DataError, match=f"cannot reach {closed} for {REPO}"):
        list_repository(REPO, "dataset", endpoint=closed)
