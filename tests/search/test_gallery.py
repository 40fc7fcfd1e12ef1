"""The gallery index: stored once, reused while nothing it depends on changes, rebuilt when it does."""

from __future__ import annotations

import json
import logging
import os
import shutil

import pytest
import torch

from cvgtext.utils.fingerprint import changed_parts, digest, files_signature, stable_repr
from helpers.models import tiny_checkpoint
from helpers.runs import compose_config, locate_overrides, run_locate


def test_fingerprints_change_with_what_they_describe(tmp_path):
    assert digest({"a": 1, "b": [1, 2]}) == digest({"b": [1, 2], "a": 1}) != digest({"a": 1, "b": [2, 1]})
    tile = tmp_path / "tile.jpg"
    tile.write_bytes(b"x")
    before = files_signature([tile])
    assert files_signature([tile]) == before
    os.utime(tile, ns=(1, 1))
    assert files_signature([tile]) != before

    def f():
        pass

    assert " at 0x" in repr(f) and " at 0x" not in stable_repr(f)
    assert changed_parts({"tiles": 1, "weights": 2}, {"tiles": 3, "weights": 2}) == ["tiles"]


def gallery_messages(caplog) -> list[str]:
    messages = [r.getMessage() for r in caplog.records if r.name == "cvgtext.search.gallery"]
    caplog.clear()
    return messages


@pytest.mark.slow
def test_the_index_is_reused_and_rebuilt_when_a_tile_or_the_checkpoint_changes(release_dir, tmp_path, caplog):
    from cvgtext.commands.locator import build_gallery_index
    from cvgtext.model.build import build_module

    caplog.set_level(logging.INFO, logger="cvgtext")
    first = tiny_checkpoint(tmp_path / "first.ckpt", seed=1)
    settings = locate_overrides(release_dir, f"ckpt_path={first}", f"paths.cache_dir={tmp_path}/cache")
    cfg = compose_config("locate", settings, tmp_path)
    module, backbone = build_module(cfg)

    def index():
        return build_gallery_index(cfg, module, backbone, "all")[0]

    built = index()
    (message,) = gallery_messages(caplog)
    assert message.startswith("building the gallery index") and "none stored" in message
    (stored,) = (tmp_path / "cache" / "gallery").glob("*.pt")
    assert stored.name.startswith("Testville-sat-mixed-all-") and built.path == stored

    reused = index()
    assert gallery_messages(caplog) == [f"reusing the gallery index {stored} (36 tiles)"]
    assert reused.reused and torch.equal(reused.embeddings, built.embeddings) and reused.names == built.names

    tile = next((release_dir / "reference" / "Testville-satellite").glob("*.jpg"))
    os.utime(tile, ns=(tile.stat().st_atime_ns, tile.stat().st_mtime_ns + 10**9))
    assert not index().reused
    assert gallery_messages(caplog) == [f"building the gallery index {stored} (36 tiles; changed: tiles)"]
    assert index().reused
    gallery_messages(caplog)

    second = tiny_checkpoint(tmp_path / "second.ckpt", seed=2)
    cfg.ckpt_path = str(second)
    assert not index().reused
    (message,) = gallery_messages(caplog)
    assert "none stored" in message and str(stored) not in message
    assert len(list((tmp_path / "cache" / "gallery").glob("*.pt"))) == 2

    # The first path with the second's content is the second model: its index is reused.
    shutil.copyfile(second, first)
    cfg.ckpt_path = str(first)
    assert index().reused
    first.write_bytes(first.read_bytes() + b"\0")
    assert not index().reused

    cfg.split = "test"
    assert not build_gallery_index(cfg, module, backbone, "test")[0].reused  # another split, another index


@pytest.mark.slow
def test_a_damaged_index_is_rebuilt(release_dir, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="cvgtext")
    checkpoint = tiny_checkpoint(tmp_path / "model.ckpt", seed=1)
    run_locate(tmp_path, release_dir, f"ckpt_path={checkpoint}", "query=a roof", "draw=false")
    (stored,) = (tmp_path / "cache" / "gallery").glob("*.pt")
    stored.write_bytes(b"truncated")
    caplog.clear()
    run_locate(tmp_path, release_dir, f"ckpt_path={checkpoint}", "query=a roof", "draw=false")
    messages = gallery_messages(caplog)
    assert "cannot be read" in messages[0] and "none stored" in messages[1]
    assert torch.load(stored, weights_only=True)["names"]


@pytest.mark.slow
def test_eval_stores_the_index_reuses_it_and_shares_it_with_locate(release_dir, tmp_path, caplog):
    from cvgtext.commands.evaluate import evaluate

    caplog.set_level(logging.INFO, logger="cvgtext")
    checkpoint = tiny_checkpoint(tmp_path / "model.ckpt", seed=3)
    settings = locate_overrides(
        release_dir, f"ckpt_path={checkpoint}", "split=test", "protocol=full", f"paths.cache_dir={tmp_path}/cache"
    )
    first = evaluate(compose_config("eval", settings, tmp_path / "first"))
    assert "none stored" in gallery_messages(caplog)[0]
    second = evaluate(compose_config("eval", settings, tmp_path / "second"))
    assert gallery_messages(caplog)[0].startswith("reusing the gallery index")
    assert second == pytest.approx(first, abs=1e-9)
    summary = json.loads((tmp_path / "second" / "run" / "metrics.json").read_text())["run"]
    assert summary["gallery_index"] == "reused" and summary["search"] == "exact"

    run_locate(tmp_path, release_dir, f"ckpt_path={checkpoint}", "split=test", "query=a roof", "draw=false")
    assert gallery_messages(caplog)[0].startswith("reusing the gallery index")

    # Decoded on the device, the tiles are close to, not bitwise, the CPU's: another index.
    evaluate(compose_config("eval", [*settings, "data.decode=device"], tmp_path / "device"))
    assert "none stored" in gallery_messages(caplog)[0]
    evaluate(compose_config("eval", [*settings, "data.decode=device"], tmp_path / "device-again"))
    assert gallery_messages(caplog)[0].startswith("reusing the gallery index")
    run_locate(tmp_path, release_dir, f"ckpt_path={checkpoint}", "split=test", "query=a roof", "draw=false")
    assert gallery_messages(caplog)[0].startswith("reusing the gallery index")  # the CPU's is still there
