"""pack.py: a city in WebDataset shards, read back by webdataset itself."""

from __future__ import annotations

import json
import tarfile

import pytest
from conftest import CITY, compose_config, run_cli

from cvgtext.errors import ConfigError, DataError


def pack_overrides(release_dir, out, *extra):
    return [f"out={out}", "city=Brisbane", f"city.name={CITY}", f"paths.data_dir={release_dir}",
            "data.val_fraction=0.3", *extra]


def packed(release_dir, tmp_path, *extra):
    from cvgtext.data.shards import pack

    out = tmp_path / "shards"
    return out, pack(compose_config("pack", pack_overrides(release_dir, out, *extra), tmp_path))


def test_every_split_is_packed_in_order_and_webdataset_reads_it(release_dir, tmp_path):
    import webdataset as wds
    from hydra.utils import instantiate

    out, manifest = packed(release_dir, tmp_path, "samples_per_shard=5")
    datamodule = instantiate(compose_config("pack", pack_overrides(release_dir, out), tmp_path).data)
    datamodule.setup()
    assert manifest["format"] == "cvgtext-webdataset" and manifest["city"] == CITY
    for split in ("train", "val", "test"):
        pairs = datamodule.pairs[split]
        entry = manifest["splits"][split]
        assert entry["samples"] == len(pairs) == sum(shard["samples"] for shard in entry["shards"])
        assert [shard["samples"] for shard in entry["shards"]][:-1] == [5] * (len(entry["shards"]) - 1)
        urls = f"{out}/{entry['pattern']}"
        samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
        assert [sample["__key__"] for sample in samples] == [f"{i:09d}" for i in range(len(pairs))]
        for sample, pair in zip(samples, pairs):
            assert sample["txt"].decode() == pair.caption
            assert sample["jpg"] == pair.image_path.read_bytes()
            meta = json.loads(sample["json"])
            assert meta == {"name": pair.name, "lat": pair.lat, "lon": pair.lon, "panorama": pair.is_panorama,
                            "split": split}


def test_the_same_data_packs_to_the_same_bytes_and_the_manifest_checks_them(release_dir, tmp_path):
    import hashlib

    out, first = packed(release_dir, tmp_path)
    again = tmp_path / "again"
    from cvgtext.data.shards import pack

    second = pack(compose_config("pack", pack_overrides(release_dir, again), tmp_path))
    for split, entry in first["splits"].items():
        for shard, other in zip(entry["shards"], second["splits"][split]["shards"]):
            data = (out / shard["file"]).read_bytes()
            assert data == (again / other["file"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == shard["sha256"] and len(data) == shard["bytes"]
    with tarfile.open(out / first["splits"]["train"]["shards"][0]["file"]) as tar:
        member = tar.getmembers()[0]
        assert (member.mtime, member.uid, member.uname) == (0, 0, "")


def test_a_pack_stopped_part_way_leaves_no_manifest_and_no_half_shard(release_dir, tmp_path, monkeypatch):
    from cvgtext.data import shards

    out, _ = packed(release_dir, tmp_path, "samples_per_shard=4")
    calls = {"n": 0}
    original = shards.sample_members

    def failing(pair, split):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        return original(pair, split)

    monkeypatch.setattr(shards, "sample_members", failing)
    with pytest.raises(KeyboardInterrupt):
        packed(release_dir, tmp_path, "samples_per_shard=4")
    assert not (out / "manifest.json").exists()
    assert not list(out.glob(".*.tmp"))
    assert sorted(path.name for path in out.glob("*.tar")) == ["train-000000.tar"]  # the complete one


def test_bad_settings_and_images_are_named(release_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"^samples_per_shard=0: expected a positive number of samples"):
        packed(release_dir, tmp_path, "samples_per_shard=0")
    with pytest.raises(ConfigError, match=r"^splits=\['train', 'holdout'\]: expected some of train, val, test"):
        packed(release_dir, tmp_path, "splits=[train,holdout]")
    from cvgtext.data.annotations import Pair
    from cvgtext.data.shards import sample_members

    gif = tmp_path / "-27.4,153.0_x.gif"
    gif.write_bytes(b"GIF89a")
    with pytest.raises(DataError, match=r"x\.gif: cannot pack an image with extension '\.gif'"):
        sample_members(Pair(gif.name, "a", gif, -27.4, 153.0, True), "train")


def test_the_cli_packs_and_prints_the_patterns(release_dir, tmp_path):
    out = tmp_path / "cli"
    result = run_cli("pack.py", *pack_overrides(release_dir, out), f"hydra.run.dir={tmp_path}/run")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"of {CITY} sat into {out}" in result.stdout and "test: 9 samples, 1 shards  test-{000000..000000}.tar" \
        in result.stdout
    assert (out / "manifest.json").is_file()
