"""download.py against a hub on 127.0.0.1: only what was asked is fetched, in either layout, then
arranged and checked; broken releases are named; the token stays in memory; a killed transfer
resumes; and a downloaded release trains and evaluates."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cvgtext.commands.download import download
from cvgtext.data.release.facts import CHECKPOINT_FOLDER, FULL_DATASET
from cvgtext.utils.errors import ConfigError, DataError
from helpers.fake_hub import FakeHub
from helpers.releases import ORPHAN, archived, hub_layout, official_checkpoints, official_layout, write_files
from helpers.runs import ROOT, compose_config

DATASET, CHECKPOINTS = "CVG-Text/CVG-Text", "CVG-Text/CrossText2Loc"


def release(**kwargs) -> dict[str, bytes]:
    """Two tiny cities in the hub layout: Brisbane with the release's quirks, and Tokyo."""
    return {**hub_layout("Brisbane", **kwargs), **hub_layout("Tokyo", quirks=False, **kwargs)}


@pytest.fixture
def hub(online):
    with FakeHub() as server:
        server.add("dataset", DATASET, release())
        server.add("dataset", "someone/archived", archived(release()))
        server.add("model", CHECKPOINTS, official_checkpoints())
        yield server


def run_download(hub: FakeHub, out: Path, *overrides: str) -> dict:
    """``download.py`` in this process, against ``hub``."""
    cfg = compose_config("download", [f"endpoint={hub.url}", f"out={out}", *overrides], out.parent)
    return download(cfg)


def fetched_paths(hub: FakeHub, repo: str) -> set[str]:
    """The repository files whose bytes were sent (directly, or from the CDN by digest)."""
    import hashlib

    files = hub.repos[("dataset" if "CrossText2Loc" not in repo else "model", repo)]
    by_digest = {hashlib.sha256(content).hexdigest(): path for path, content in files.items()}
    sent = set()
    for request in hub.requests:
        path = request["path"]
        if request["method"] == "GET" and path.startswith("/cdn/"):
            sent.add(by_digest.get(path.removeprefix("/cdn/")))
        elif request["method"] == "GET" and f"{repo}/resolve/" in path:
            sent.add(path.split("/resolve/", 1)[1].split("/", 1)[1])
    return sent & set(files)


def test_only_the_city_and_img_asked_for_are_fetched_and_arranged(hub, tmp_path, capsys):
    out = tmp_path / "data"
    done = run_download(hub, out, "city=Brisbane", "img=sat", "what=[data,checkpoints]")
    files = hub.repos[("dataset", DATASET)]
    expected = {
        p
        for p in files
        if p.startswith(("annotation/Brisbane", "reference/Brisbane-satellite", "reference/Brisbane-photos-satellite"))
    }
    assert fetched_paths(hub, DATASET) == expected
    (checkpoint,) = fetched_paths(hub, CHECKPOINTS)
    assert checkpoint.startswith("long_model_Brisbane-mixed_1e-05_128_sat_epoch")
    assert done["checkpoint"] == out / CHECKPOINT_FOLDER / checkpoint
    assert done["checkpoint"].read_bytes() == hub.repos[("model", CHECKPOINTS)][checkpoint]
    report = done["data"]
    assert report.errors == [] and len(report.warnings) == 2
    for path in expected:
        arranged = out / path  # the hub layout is the loaders' layout
        assert arranged.read_bytes() == files[path]
    printed = capsys.readouterr().out
    assert f"Ready: paths.data_dir={out}" in printed and f"export CVGTEXT_DATA_DIR={out}" in printed


def test_the_official_layout_in_archives_is_unpacked_and_arranged(hub, tmp_path):
    out = tmp_path / "data"
    report = run_download(hub, out, "city=Brisbane", "img=osm", "text=panorama", "repo=someone/archived")["data"]
    assert fetched_paths(hub, "someone/archived") == {"CVG-text.tar.gz", "images/Brisbane-OSM.zip"}
    assert report.errors == [] and [row.captions for row in report.rows] == [21, 6]
    assert (out / "reference/Brisbane-OSM").is_symlink() and (out / "reference/Brisbane-OSM" / ORPHAN).is_file()
    assert not (out / "annotation/Tokyo").exists()


def test_a_dry_run_lists_the_files_with_their_sizes_and_fetches_nothing(hub, tmp_path, capsys):
    run_download(hub, tmp_path / "data", "city=Tokyo", "img=sat", "dry_run=true", "repo=someone/archived")
    printed = capsys.readouterr().out
    assert (
        "someone/archived@" in printed
        and "3 of 14 files (38.7 kB)" in printed
        and "images/Tokyo-satellite.zip  25.6 kB" in printed
    )
    assert fetched_paths(hub, "someone/archived") == set()
    assert not (tmp_path / "data").exists()


def test_a_truncated_archive_fails_the_download_and_is_named(hub, tmp_path, capsys):
    packed = archived(release())
    packed["images/Brisbane-satellite.zip"] = packed["images/Brisbane-satellite.zip"][:-200]
    hub.add("dataset", "someone/truncated", packed)
    out = tmp_path / "data"
    with pytest.raises(DataError) as raised:
        run_download(hub, out, "city=Brisbane", "img=sat", "repo=someone/truncated")
    archive = out / "downloads/someone/truncated/images/Brisbane-satellite.zip"
    assert f"the first: archive {archive} is truncated or damaged" in str(raised.value)
    assert f"problem: archive {archive} is truncated" in capsys.readouterr().out


def test_a_missing_image_fails_the_check_and_is_named(hub, tmp_path):
    files = release()
    lost = next(path for path in files if path.startswith("reference/Brisbane-photos-satellite/"))
    del files[lost]
    hub.add("dataset", "someone/lossy", files)
    with pytest.raises(
        DataError, match=f"missing from {tmp_path}/data/reference/Brisbane-photos-satellite: {lost.rsplit('/', 1)[1]}"
    ):
        run_download(hub, tmp_path / "data", "city=Brisbane", "img=sat", "repo=someone/lossy")


def test_check_only_reads_a_release_and_writes_nothing(tmp_path, capsys):
    out = write_files(tmp_path / "data", release(panoramas=8, photos=4))
    before = sorted(out.rglob("*"))
    report = download(compose_config("download", ["city=Tokyo", "img=osm", "check_only=true", f"out={out}"], tmp_path))[
        "data"
    ]
    assert report.errors == [] and sorted(out.rglob("*")) == before
    assert "Tokyo (osm) in" in capsys.readouterr().out


def test_a_release_got_another_way_is_arranged_from_its_folder(tmp_path):
    copy = write_files(tmp_path / "usb/CVG-Text", official_layout(release(panoramas=8, photos=4)))
    out = tmp_path / "data"
    cfg = compose_config("download", ["city=Brisbane", "img=sat", f"from_dir={copy}", f"out={out}"], tmp_path)
    report = download(cfg)["data"]
    assert report.errors == [] and (out / "annotation/Brisbane").resolve() == copy / "CVG-text/Brisbane"


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        (
            ["city=Brisbane", "img=stv", "what=[checkpoints]"],
            ConfigError,
            "no official CrossText2Loc checkpoint for city=Brisbane img=stv",
        ),
        (["city=synthetic"], ConfigError, "city=synthetic is generated on first use, not downloaded"),
        (["city=Tokyo", "what=[images]"], ConfigError, "what=['images']: expected some of data, checkpoints"),
        (["city=Tokyo", "arrange=copy"], ConfigError, "arrange='copy': expected one of link, move"),
        (
            ["city=Tokyo", "img=stv", "repo=someone/textonly"],
            DataError,
            "someone/textonly holds no images of Tokyo ground",
        ),
    ],
)
def test_requests_that_cannot_be_met_stop_with_one_message(hub, tmp_path, overrides, error, message):
    hub.add("dataset", "someone/textonly", {p: c for p, c in release().items() if not p.startswith("query/")})
    with pytest.raises(error, match=re.escape(message)) as raised:
        run_download(hub, tmp_path / "data", *overrides)
    if "img=stv" in overrides and error is DataError:
        assert f"repo={FULL_DATASET} holds street views too" in str(raised.value)


def cli_environment(hub: FakeHub, home: Path, token: str) -> dict:
    return {
        "HF_ENDPOINT": hub.url,
        "HF_TOKEN": token,
        "HF_HUB_OFFLINE": "0",
        "HF_HOME": str(home),
        "NO_PROXY": "127.0.0.1,localhost",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }


def start_cli(tmp_path: Path, environment: dict, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "download.py"), f"paths.root_dir={tmp_path}", *overrides],
        cwd=tmp_path,
        env={**os.environ, "WANDB_MODE": "offline", **environment},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
def test_the_cli_reaches_the_hub_through_hf_endpoint_and_never_writes_the_token(tmp_path):
    token = "hf_NeverWriteMe0123456789"
    with FakeHub(token=token) as hub:
        hub.add("dataset", DATASET, release(panoramas=8, photos=4))
        hub.add("model", CHECKPOINTS, official_checkpoints())
        cli = start_cli(
            tmp_path,
            cli_environment(hub, tmp_path / "hf-home", token),
            "city=Tokyo",
            "img=sat",
            "what=[data,checkpoints]",
        )
        printed, _ = cli.communicate(timeout=300)
    assert cli.returncode == 0, printed[-3000:]
    assert f"Ready: paths.data_dir={tmp_path}/data" in printed
    asked = [request for request in hub.requests if DATASET in request["path"] or CHECKPOINTS in request["path"]]
    assert asked and all(request["authorization"] == f"Bearer {token}" for request in asked)
    assert all(request["authorization"] is None for request in hub.requests if "/cdn/" in request["path"])
    written = [path for path in tmp_path.rglob("*") if path.is_file() and not path.is_symlink()]
    assert len(written) > 20 and (tmp_path / "outputs").is_dir()
    assert [path for path in written if token.encode() in path.read_bytes()] == []


@pytest.mark.slow
def test_a_transfer_killed_mid_file_resumes_where_it_stopped(tmp_path):
    """huggingface_hub writes a transfer in chunks of DOWNLOAD_CHUNK_SIZE (10 MiB): the archive is
    padded past one chunk, the hub stalls after it, the command is killed there, and the next
    run asks only for the rest."""
    import hashlib
    import zipfile

    from huggingface_hub.constants import DOWNLOAD_CHUNK_SIZE

    from helpers.releases import zipped

    packed = archived(release(panoramas=8, photos=4))
    big = "images/Brisbane-satellite.zip"
    with zipfile.ZipFile(io.BytesIO(packed[big])) as bundle:
        members = {info.filename: bundle.read(info) for info in bundle.infolist()}
    members["padding.bin"] = os.urandom(DOWNLOAD_CHUNK_SIZE + (1 << 20))  # not an image: never unpacked
    packed[big] = zipped(members)
    with FakeHub() as hub:
        hub.add("dataset", "someone/archived", packed)
        hub.stall[big] = DOWNLOAD_CHUNK_SIZE + (1 << 19)
        environment = cli_environment(hub, tmp_path / "hf-home", "")
        overrides = ("city=Brisbane", "img=sat", "repo=someone/archived", "workers=1")
        cli = start_cli(tmp_path, environment, *overrides)
        assert hub.stalled.wait(timeout=120), "the transfer never started"
        (part,) = (tmp_path / "data/downloads/someone/archived/images").glob(".Brisbane-satellite.zip.*.part")
        deadline = time.monotonic() + 60
        while part.stat().st_size < DOWNLOAD_CHUNK_SIZE and time.monotonic() < deadline:
            time.sleep(0.05)
        cli.send_signal(signal.SIGKILL)
        cli.communicate(timeout=60)
        assert part.stat().st_size == DOWNLOAD_CHUNK_SIZE
        del hub.stall[big]
        hub.release()
        again = start_cli(tmp_path, environment, *overrides)
        printed, _ = again.communicate(timeout=300)
    assert again.returncode == 0, printed[-3000:]
    digest = hashlib.sha256(packed[big]).hexdigest()
    assert [request["range"] for request in hub.fetched(digest)] == [None, f"bytes={DOWNLOAD_CHUNK_SIZE}-"]
    assert (tmp_path / "data/downloads/someone/archived" / big).read_bytes() == packed[big]
    assert "10.5 MB of it resumed" in printed and not part.exists()
    assert not (tmp_path / "data/downloads/someone/archived/images/Brisbane-satellite/padding.bin").exists()


@pytest.mark.slow
def test_a_downloaded_release_trains_evaluates_and_reproduces_the_table(online, tmp_path, test_backbone):
    """From nothing to the paper's table on a fake release: download the data and the official
    checkpoint, train and evaluate a model, evaluate the official checkpoint (official-format
    weights of the test backbone's shapes) and gather the table beside the paper's figures."""
    import io

    import torch

    from cvgtext.commands.evaluate import evaluate
    from cvgtext.commands.train import train
    from cvgtext.reports.reproduce import ReproduceTable, published
    from helpers.official import official_name, official_state

    buffer = io.BytesIO()
    torch.save(official_state(test_backbone, seed=0), buffer)
    with FakeHub() as hub:
        hub.add("dataset", DATASET, release())
        hub.add("model", CHECKPOINTS, {official_name("Brisbane", "sat"): buffer.getvalue(), "README.md": b"#\n"})
        out = tmp_path / "data"
        fetched = run_download(hub, out, "city=Brisbane", "img=sat", "what=[data,checkpoints]")
    assert fetched["data"].errors == []
    common = [
        "city=Brisbane",
        f"paths.data_dir={out}",
        "trainer=cpu",
        "data.val_fraction=0.3",
        "data.num_workers=0",
        "data.batch_size=8",
        "data.eval_batch_size=8",
        f"backbone.model_name={test_backbone}",
    ]
    run = tmp_path / "train"
    training = [
        f"paths.output_dir={run}",
        "trainer.max_epochs=1",
        "logger=csv",
        "~callbacks.rich_progress_bar",
        "~callbacks.model_summary",
        "++trainer.enable_progress_bar=false",
    ]
    trained = train(compose_config("train", [*common, *training], tmp_path))
    assert 0 <= trained["test/R@1"] <= 100
    metrics = evaluate(compose_config("eval", [*common, f"ckpt_path={run}/checkpoints/best.ckpt"], tmp_path / "eval"))
    assert metrics["test/R@1"] == pytest.approx(trained["test/R@1"])

    sweep = tmp_path / "reproduce"
    evaluate(compose_config("eval", [*common, "experiment=reproduce", "eval.bootstrap=100",
                                     f"paths.output_dir={sweep}/0"], tmp_path))  # fmt: skip
    markdown = ReproduceTable.write(str(sweep))[0].read_text()
    row = next(line for line in markdown.splitlines() if line.startswith("| CrossText2Loc, official checkpoint"))
    paper = published()[("Brisbane", "sat")]
    assert "| Brisbane | sat |" in row and f"| {paper['R@1']:.2f} | {paper['L@50']:.2f} |" in row
