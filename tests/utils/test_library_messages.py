"""A first run reads clean: what the libraries would say falsely or twice is kept back, where
cvgtext starts their work, and nothing else is."""

from __future__ import annotations

import logging
import warnings

import pytest

from cvgtext.model.build import build_module
from cvgtext.model.encoder import build_encoder
from cvgtext.utils.errors import ConfigError
from cvgtext.utils.library_messages import start_lightning
from helpers.city import CITY
from helpers.models import tiny_checkpoint
from helpers.runs import compose_config, eval_overrides, run_cli

RANDOM = "Model initialized randomly"


def open_clip_records(caplog, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level and "open_clip" in r.pathname]


def test_a_model_given_a_checkpoint_is_not_said_to_be_random(tmp_path, release_dir, caplog):
    checkpoint = tiny_checkpoint(tmp_path / "tiny.ckpt", seed=0)  # a random model, which is said
    caplog.set_level(logging.INFO)
    caplog.clear()
    build_module(compose_config("eval", [f"ckpt_path={checkpoint}", *eval_overrides(release_dir, tmp_path)], tmp_path))
    build_encoder("cvg-tiny", str(checkpoint))  # backbone.pretrained=FILE: its weights are loaded next
    assert not any(RANDOM in message for message in open_clip_records(caplog, logging.WARNING))
    build_encoder("cvg-tiny")  # trained from scratch: random it is, and open_clip says so
    assert [message for message in open_clip_records(caplog, logging.WARNING) if RANDOM in message] == [
        "No pretrained weights loaded for model 'cvg-tiny'. Model initialized randomly."
    ]


def test_an_unreachable_pretrained_tag_is_reported_once_by_cvgtext(caplog, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match=r"backbone.pretrained='openai' could not be loaded for ViT-B-16 \(Failed to"):
        build_encoder("ViT-B-16", "openai")
    assert open_clip_records(caplog, logging.ERROR) == []
    assert not logging.getLogger().filters  # the filter was for that call only


def test_lightnings_pytree_deprecation_is_left_out_where_lightning_starts():
    from lightning.pytorch.utilities._pytree import _tree_flatten

    def future_warnings() -> list[str]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _tree_flatten(1)  # what Lightning's loops do with every batch
            start = len(caught)
            start_lightning()
            _tree_flatten(1)
        return [str(w.message) for w in caught[:start]], [str(w.message) for w in caught[start:]]

    before, after = future_warnings()
    assert any("LeafSpec" in message for message in before)  # torch deprecates what Lightning does
    assert after == []
    with warnings.catch_warnings(record=True) as caught:  # everyone else's still show
        warnings.simplefilter("always")
        start_lightning()
        warnings.warn("some other future", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["some other future"]


@pytest.mark.slow
def test_an_evaluation_from_a_fresh_clone_says_each_thing_once(tmp_path, release_dir):
    checkpoint = tiny_checkpoint(tmp_path / "tiny.ckpt", seed=0)
    run = run_cli("eval.py", f"ckpt_path={checkpoint}", *eval_overrides(release_dir, tmp_path / "run"))
    assert run.returncode == 0, run.stderr[-3000:]
    said = run.stdout + run.stderr
    for unsaid in (RANDOM, "LeafSpec", "_pytree", "Traceback"):
        assert unsaid not in said, unsaid
    assert said.count("Seed set to 42") == 1  # Lightning's own console handler would say it again
    assert said.count(f"{CITY} {CITY}+{CITY}-photos: train") == 1  # the splits, read once
    assert f"{CITY} sat test (100 nearest tiles)" in run.stdout


@pytest.mark.heavy  # the CLI in a subprocess; in this process, the test of an unreachable tag above
def test_an_offline_pretrained_tag_stops_with_one_line(tmp_path, release_dir):
    run = run_cli("eval.py", "backbone=vit_b16", *eval_overrides(release_dir, tmp_path / "run"))
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [run.stderr.strip()]
    assert run.stderr.startswith("error: backbone.pretrained='openai' could not be loaded for ViT-B-16")
    assert "Failed to download weights" not in run.stdout  # open_clip's ERROR line, the same news
