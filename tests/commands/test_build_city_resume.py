"""A build stopped at any moment and run again ends as the build that was never stopped, and
sends no request that had been answered before the stop.

Stops are raised right after each file the build writes (tile and reply caches, images, place
records, annotation files, the manifest): what is on disk then is what a kill at that moment
leaves. A real SIGKILL of the command, at random times, is in the heavy test.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import cvgtext.data.town.build
import cvgtext.data.town.manifest
import cvgtext.data.town.tile_sources
import cvgtext.utils.chat
from cvgtext.commands.build_city import build
from cvgtext.utils.atomic import atomic_write
from helpers.runs import ROOT, compose_config
from helpers.tile_server import TileServer, blob_tiles
from helpers.town import build_overrides, grid_places, write_street_views
from helpers.town_chat import TownChatServer

WRITERS = (cvgtext.data.town.build, cvgtext.data.town.manifest, cvgtext.data.town.tile_sources, cvgtext.utils.chat)
SIGNS = {2: ["REJECT"], 4: ["REWRITE"]}


class Killed(BaseException):
    """Raised in place of a kill (a BaseException: nothing on the way catches it)."""


@contextlib.contextmanager
def stop_after_write(monkeypatch, moment: int | None):
    """Count the files written; raise Killed right after the ``moment``-th (None: never)."""
    written = [0]

    @contextlib.contextmanager
    def counted(path, mode="w", **options):
        with atomic_write(path, mode, **options) as stream:
            yield stream
        written[0] += 1
        if written[0] == moment:
            raise Killed(str(path))

    with monkeypatch.context() as patch:
        for module in WRITERS:
            patch.setattr(module, "atomic_write", counted)
        yield written


def snapshot(data_dir: Path) -> dict[str, bytes | dict]:
    """Every file of the town, less the build's own state and the manifest's per-run fields."""
    files = {}
    for path in sorted(data_dir.rglob("*")):
        relative = path.relative_to(data_dir).as_posix()
        if path.is_file() and not relative.startswith(".build/"):
            files[relative] = path.read_bytes()
    manifest = json.loads(files.pop("annotation/Resumeville/manifest.json"))
    files["manifest"] = {k: v for k, v in manifest.items() if k not in ("built_at", "this_run")}
    return files


class Town:
    def __init__(self, root: Path, tiles: TileServer, chat: TownChatServer):
        self.root, self.tiles, self.chat = root, tiles, chat
        self.places = grid_places(2, 3, 60)
        self.folder = write_street_views(root / "views", self.places, SIGNS)

    def config(self, data_dir: Path):
        overrides = build_overrides(data_dir, self.folder, None, self.tiles.url("osm"), self.chat.url)
        overrides = [o for o in overrides if not o.startswith("sat.url")] + [
            "city.name=Resumeville",
            "ocr.enabled=false",
        ]
        return overrides

    def requests(self) -> int:
        return len(self.tiles.requests) + len(self.chat.requests)


@pytest.fixture(scope="module")
def servers():
    places = grid_places(2, 3, 60)
    with TileServer(blob_tiles(places)) as tiles, TownChatServer() as chat:
        yield tiles, chat


@pytest.fixture
def clean(servers, tmp_path, monkeypatch):
    """The town built without a stop: its files, the files it writes and the requests it sends."""
    town = Town(tmp_path, *servers)
    before = town.requests()
    with stop_after_write(monkeypatch, None) as written:
        build(compose_config("build_city", town.config(tmp_path / "clean"), tmp_path))
    return town, snapshot(tmp_path / "clean"), written[0], town.requests() - before


def stop_and_resume(town: Town, monkeypatch, moment: int, data_dir: Path) -> int:
    """Requests sent by a build stopped after its ``moment``-th write and by the build run after it."""
    before = town.requests()
    with stop_after_write(monkeypatch, moment), pytest.raises(Killed):
        build(compose_config("build_city", town.config(data_dir), town.root))
    build(compose_config("build_city", town.config(data_dir), town.root))
    return town.requests() - before


def check_moments(clean, monkeypatch, moments) -> None:
    town, expected, writes, requests = clean
    assert writes > 40 and requests > 20  # tiles, replies, images, records, annotations
    for moment in moments:
        data_dir = town.root / f"stopped-{moment}"
        assert stop_and_resume(town, monkeypatch, moment, data_dir) == requests, f"stopped after write {moment}"
        assert snapshot(data_dir) == expected, f"stopped after write {moment}"


def test_places_built_in_threads_make_the_same_town(clean, tmp_path):
    town, expected, _, requests = clean
    before = town.requests()
    build(compose_config("build_city", [*town.config(tmp_path / "threads"), "workers=3"], tmp_path))
    assert town.requests() - before == requests
    assert snapshot(tmp_path / "threads") == expected


def test_a_build_stopped_at_sampled_moments_resumes_to_the_same_town(clean, monkeypatch):
    writes = clean[2]
    check_moments(clean, monkeypatch, sorted({1, 2, writes - 1, writes, *range(3, writes, 9)}))


@pytest.mark.heavy
def test_a_build_stopped_after_any_write_resumes_to_the_same_town(clean, monkeypatch):
    check_moments(clean, monkeypatch, range(1, clean[2] + 1))


def state_files(data_dir: Path) -> int:
    return (
        sum(1 for path in (data_dir / ".build").rglob("*") if path.is_file()) if (data_dir / ".build").is_dir() else 0
    )


@pytest.mark.heavy
def test_the_command_killed_at_random_moments_resumes_to_the_same_town(clean, tmp_path):
    """SIGKILL of build_city.py each time it has written a few more files of its state (a random
    number): each kill may lose the one request in flight, and nothing else."""
    town, expected, _, requests = clean
    data_dir = tmp_path / "killed"
    overrides = [*town.config(data_dir), f"hydra.run.dir={tmp_path / 'run'}"]
    command = [sys.executable, str(ROOT / "build_city.py"), *overrides]
    draw, kills, before = random.Random(0), 0, town.requests()
    for _ in range(40):
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        threshold = state_files(data_dir) + draw.randint(1, 6)
        while process.poll() is None and state_files(data_dir) < threshold:
            time.sleep(0.005)
        if process.poll() is not None:
            break
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
    else:
        pytest.fail("the build never finished")
    assert process.returncode == 0, process.stderr.read()
    assert kills >= 5
    assert requests <= town.requests() - before <= requests + kills
    assert snapshot(data_dir) == expected
