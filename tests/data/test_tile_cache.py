"""The decoded-tile cache: the same tensors as decoding each file, rebuilt when a file changes,
never half-written, shared with loader workers by path."""

from __future__ import annotations

import json
import logging
import os
import pickle

import pytest
import torch

from cvgtext.data import tile_cache
from cvgtext.data.datamodule import CVGTextDataModule
from cvgtext.data.dataset import SkippedImage
from cvgtext.model.encoder import build_encoder
from cvgtext.utils.errors import ConfigError, DataError
from helpers.city import CITY, image_path, training_names, write_release
from helpers.runs import compose_config


@pytest.fixture(scope="module")
def encoder():
    return build_encoder("cvg-tiny")


def datamodule(release_dir, encoder, cache_dir=None, **kwargs) -> CVGTextDataModule:
    module = CVGTextDataModule(
        release_dir,
        CITY,
        val_fraction=0.3,
        batch_size=4,
        cache=cache_dir is not None,
        cache_dir=cache_dir,
        preprocess=encoder.preprocess,
        tokenizer=encoder.tokenizer,
        **kwargs,
    )
    module.setup("fit")
    return module


def test_cached_items_equal_decoded_ones_bitwise(release_dir, encoder, tmp_path):
    plain, cached = datamodule(release_dir, encoder), datamodule(release_dir, encoder, tmp_path / "cache")
    for split in ("train", "val", "test"):
        a, b = plain.dataset(split), cached.dataset(split)
        assert len(a) == len(b) > 0
        for i in range(len(a)):
            assert torch.equal(a[i]["image"], b[i]["image"]), (split, i)
            assert torch.equal(a[i]["tokens"], b[i]["tokens"]), (split, i)


def test_the_cache_is_reused_and_rebuilt_when_a_file_changes(release_dir, encoder, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="cvgtext.data.tile_cache"):
        datamodule(release_dir, encoder, tmp_path / "cache")
        datamodule(release_dir, encoder, tmp_path / "cache")
        tile = image_path(release_dir, training_names(release_dir)[0])
        os.utime(tile, ns=(tile.stat().st_atime_ns, tile.stat().st_mtime_ns + 10**9))
        rebuilt = datamodule(release_dir, encoder, tmp_path / "cache")
    said = [record.getMessage().split(" ")[0] for record in caplog.records]
    assert said == ["Decoding", "Reusing", "Decoding"]
    assert len(list((tmp_path / "cache" / tile_cache.FOLDER).glob("*.json"))) == 2
    assert torch.equal(
        rebuilt.dataset("train")[0]["image"], datamodule(release_dir, encoder).dataset("train")[0]["image"]
    )


def test_a_killed_build_leaves_no_cache(release_dir, encoder, tmp_path, monkeypatch):
    real, calls = tile_cache.load_image, []

    def dies_on_the_third(path):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(path)

    monkeypatch.setattr(tile_cache, "load_image", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        datamodule(release_dir, encoder, tmp_path / "cache")
    assert list((tmp_path / "cache" / tile_cache.FOLDER).iterdir()) == []  # no data, no description, no temporary
    monkeypatch.setattr(tile_cache, "load_image", real)
    assert datamodule(release_dir, encoder, tmp_path / "cache").source.tiles is not None


def test_a_build_removes_what_killed_builds_left_and_nothing_else(release_dir, encoder, tmp_path):
    import socket
    import subprocess
    import sys

    first = datamodule(release_dir, encoder, tmp_path / "cache")
    data_file = first.source.tiles.data_file
    data_file.unlink()  # the cache must be built again
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    left = {
        who: data_file.with_name(f".{data_file.name}.{who}.tmp")
        for who in (f"{host}-{dead.stdout.strip()}", f"{host}-{os.getppid()}", f"elsewhere-{dead.stdout.strip()}")
    }
    for leftover in left.values():
        leftover.write_bytes(b"\0" * 1000)  # a SIGKILL skips the build's own clean-up
    assert datamodule(release_dir, encoder, tmp_path / "cache").source.tiles is not None
    assert sorted(path for path in left.values() if path.exists()) == sorted(list(left.values())[1:])


def test_workers_get_the_path_not_the_pixels(release_dir, encoder, tmp_path):
    tiles = datamodule(release_dir, encoder, tmp_path / "cache").source.tiles
    path = next(iter(tiles.row))
    tiles.image(path)  # maps the file in this process
    copy = pickle.loads(pickle.dumps(tiles))
    assert len(pickle.dumps(tiles)) < 20_000 and copy._pixels is None
    assert torch.equal(copy.image(path), tiles.image(path))


def test_an_undecodable_tile_is_remembered_with_its_message(release_dir, encoder, tmp_path):
    bad = image_path(release_dir, training_names(release_dir)[0])
    bad.write_bytes(b"")
    module = datamodule(release_dir, encoder, tmp_path / "cache", on_bad_image="skip")
    assert isinstance(module.dataset("train")[0], SkippedImage)
    assert f"image {bad} cannot be decoded (an empty file" in module.dataset("train")[0].message
    with pytest.raises(DataError, match="cannot be decoded"):
        datamodule(release_dir, encoder, tmp_path / "cache").dataset("train")[0]


def test_what_the_cache_cannot_do_is_said(release_dir, encoder, tmp_path):
    with pytest.raises(ConfigError, match="data.cache=true needs paths.cache_dir"):
        CVGTextDataModule(release_dir, CITY, cache=True, cache_dir=None)
    with pytest.raises(ConfigError, match="torchvision Compose with a ToTensor step"):
        tile_cache.split_preprocess(lambda image: image)


@pytest.mark.slow  # two evaluation runs
def test_evaluation_metrics_are_the_same_with_the_cache(tmp_path):
    from cvgtext.commands.evaluate import evaluate

    data_dir = write_release(tmp_path / "data")
    results = []
    for cache in ("false", "true"):
        cfg = compose_config(
            "eval",
            [
                "city=Brisbane",
                f"city.name={CITY}",
                f"paths.data_dir={data_dir}",
                "trainer=cpu",
                "data.num_workers=0",
                "data.val_fraction=0.3",
                "paths.cache_dir=null" if cache == "false" else f"paths.cache_dir={tmp_path}/cache",
                f"data.cache={cache}",
                "seed=3",
            ],
            tmp_path / cache,
        )
        evaluate(cfg)
        metrics = json.loads((tmp_path / cache / "run" / "metrics.json").read_text())
        results.append({key: metrics[key] for key in ("all", "panorama", "single", "full_city")})
    assert results[0] == results[1]
    assert list((tmp_path / "cache" / tile_cache.FOLDER).glob("*.u8"))  # the second run read the cache
