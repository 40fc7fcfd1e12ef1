"""Atomic writes: a kill or a full disk at any moment leaves the previous file whole."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from cvgtext.utils.atomic import atomic_write
from cvgtext.utils.checkpoints import AtomicCheckpointIO
from cvgtext.utils.errors import OutputError
from helpers.runs import ROOT


def run_python(code: str, **kwargs) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter with the project importable."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        **kwargs,
    )


def test_atomic_write_replaces_the_file_with_ordinary_permissions(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")
    with atomic_write(target) as stream:
        stream.write("new")
    assert target.read_text() == "new"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [path.name for path in tmp_path.iterdir()] == ["metrics.json"]


def test_a_failing_writer_keeps_the_previous_file(tmp_path):
    target = tmp_path / "predictions.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as stream:
            stream.write("half of the new")
            raise RuntimeError("the writer failed")
    assert target.read_text() == "old"
    assert [path.name for path in tmp_path.iterdir()] == ["predictions.csv"]


@pytest.mark.slow
def test_a_kill_during_the_write_keeps_the_previous_file_and_the_next_write_cleans_up(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")
    result = run_python(f"""
        import os, signal
        from cvgtext.utils.atomic import atomic_write
        with atomic_write({str(target)!r}) as stream:
            stream.write("half of the new")
            stream.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert result.returncode == -9
    assert target.read_text() == "old"
    assert len(list(tmp_path.glob(".metrics.json.*.tmp"))) == 1  # what the killed writer left
    with atomic_write(target) as stream:
        stream.write("new")
    assert target.read_text() == "new"
    assert [path.name for path in tmp_path.iterdir()] == ["metrics.json"]


@pytest.mark.slow
def test_a_full_disk_is_one_message_naming_the_file_and_keeps_the_previous_one(tmp_path):
    """A file size limit makes writes fail as a full disk does (Python ignores SIGXFSZ)."""
    target = tmp_path / "metrics.json"
    target.write_text("old")
    result = run_python(f"""
        import resource
        from cvgtext.utils.atomic import atomic_write
        from cvgtext.utils.errors import OutputError
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))
        try:
            with atomic_write({str(target)!r}) as stream:
                stream.write("x" * 100_000)
        except OutputError as error:
            print(error)
    """)
    assert result.returncode == 0, result.stderr
    assert f"cannot write {target}" in result.stdout
    assert "the previous file is unchanged" in result.stdout
    assert target.read_text() == "old"
    assert [path.name for path in tmp_path.iterdir()] == ["metrics.json"]


def test_an_unwritable_folder_is_an_output_error(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("tempfile.mkstemp", refuse)
    with pytest.raises(OutputError, match=r"cannot write .*report.txt: Permission denied; nothing was written"):
        with atomic_write(tmp_path / "report.txt") as stream:
            stream.write("x")


def test_checkpoint_io_round_trip(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 4}, path)
    loaded = io.load_checkpoint(path, weights_only=True)
    assert loaded["global_step"] == 4 and torch.equal(loaded["state_dict"]["w"], torch.ones(3))


@pytest.mark.slow
def test_a_kill_while_a_checkpoint_is_written_leaves_the_previous_checkpoint_loadable(tmp_path):
    """The process dies after writing the new checkpoint's bytes, before they reach the old file's name."""
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.zeros(1000)}, "global_step": 1}, path)
    result = run_python(f"""
        import os, signal, torch
        from cvgtext.utils.checkpoints import AtomicCheckpointIO

        os.fsync = lambda descriptor: os.kill(os.getpid(), signal.SIGKILL)  # die mid-save
        checkpoint = {{"state_dict": {{"w": torch.ones(1000)}}, "global_step": 2}}
        AtomicCheckpointIO().save_checkpoint(checkpoint, {str(path)!r})
    """)
    assert result.returncode == -9
    assert list(tmp_path.glob(".last.ckpt.*.tmp")), "the kill did not happen during the write"
    loaded = AtomicCheckpointIO().load_checkpoint(path, weights_only=True)
    assert loaded["global_step"] == 1 and torch.equal(loaded["state_dict"]["w"], torch.zeros(1000))
