"""pack.py: a city in WebDataset shards, read back by webdataset itself."""

from __future__ import annotations

import json
import tarfile

import pytest

from cvgtext.utils.errors import ConfigError, DataError
from helpers.city import CITY
from helpers.runs import compose_config, run_cli


def pack_overrides(release_dir, out, *extra):
    return [
        f"out={out}",
        "city=Brisbane",
        f"city.name={CITY}",
        f"paths.data_dir={release_dir}",
        "data.val_fraction=0.3",
        *extra,
    ]


def packed(release_dir, tmp_path, *extra):
    from cvgtext.commands.pack import pack

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
            assert meta == {
                "name": pair.name,
                "lat": pair.lat,
                "lon": pair.lon,
                "panorama": pair.is_panorama,
                "split": split,
            }


def test_the_same_data_packs_to_the_same_bytes_and_the_manifest_checks_them(release_dir, tmp_path):
    import hashlib

    out, first = packed(release_dir, tmp_path)
    again = tmp_path / "again"
    from cvgtext.commands.pack import pack

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
    from cvgtext.data.shards import write as shards

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
    from cvgtext.data.shards.write import sample_members

    gif = tmp_path / "-27.4,153.0_x.gif"
    gif.write_bytes(b"GIF89a")
    with pytest.raises(DataError, match=r"x\.gif: cannot pack an image with extension '\.gif'"):
        sample_members(Pair(gif.name, "a", gif, -27.4, 153.0, True), "train")


def test_the_cli_packs_and_prints_the_patterns(release_dir, tmp_path):
    out = tmp_path / "cli"
    result = run_cli("pack.py", *pack_overrides(release_dir, out), f"hydra.run.dir={tmp_path}/run")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (
        f"of {CITY} sat into {out}" in result.stdout
        and "test: 9 samples, 1 shards  test-{000000..000000}.tar" in result.stdout
    )
    assert (out / "manifest.json").is_file()


# Reading shards: data.format=shards.


def shard_overrides(release_dir, *extra):
    return [
        "city=Brisbane",
        f"city.name={CITY}",
        f"paths.data_dir={release_dir}",
        "data.val_fraction=0.3",
        "trainer=cpu",
        "data.num_workers=0",
        "data.batch_size=8",
        "data.eval_batch_size=8",
        "logger=csv",
        "~callbacks.rich_progress_bar",
        "~callbacks.model_summary",
        "++trainer.enable_progress_bar=false",
        *extra,
    ]


def test_shards_train_to_the_same_losses_and_metrics_as_folders(release_dir, tmp_path, test_backbone, recwarn):
    """Shuffling off: the same batches in the same order, so the same losses and metrics, bitwise."""
    from cvgtext.commands.pack import pack
    from cvgtext.commands.train import train
    from helpers.city import repaint_tiles
    from helpers.runs import logged_metrics

    repaint_tiles(release_dir)
    pack(
        compose_config(
            "pack", [*pack_overrides(release_dir, release_dir / "shards" / "packed"), "samples_per_shard=5"], tmp_path
        )
    )
    reports = {}
    for source in ("folders", "shards"):
        run = tmp_path / source
        train(
            compose_config(
                "train",
                shard_overrides(
                    release_dir,
                    f"data.format={source}",
                    f"data.shards={release_dir}/shards/packed",
                    "data.shuffle=false",
                    f"backbone.model_name={test_backbone}",
                    f"paths.output_dir={run}",
                    "trainer.max_epochs=2",
                    f"paths.cache_dir={run}/cache",
                    "++trainer.log_every_n_steps=1",
                ),
                tmp_path / source,
            )
        )
        metrics = json.loads((run / "metrics.json").read_text())
        metrics["run"].pop("checkpoint")
        reports[source] = metrics, logged_metrics(run)
    assert reports["shards"][0] == reports["folders"][0]
    assert reports["shards"][1] == reports["folders"][1]  # every logged value, the training losses too
    assert not [w for w in recwarn if "IterableDataset" in str(w.message)]  # the stream's length is exact
    # examples.png drew its tiles from copies extracted out of the shards
    assert (tmp_path / "shards" / "examples.png").is_file()
    extracted = list((tmp_path / "shards" / "cache" / "shard-tiles").rglob("*.jpg"))
    originals = {path.name: path for path in (release_dir / "reference").glob("*-satellite/*.jpg")}
    assert extracted and all(path.read_bytes() == originals[path.name].read_bytes() for path in extracted)


def stream_of(release_dir, tmp_path, split="train", batch=4, workers=0, **settings):
    from cvgtext.data.shards.write import pack_splits
    from helpers.city import tiny_datamodule

    out = tmp_path / "packed"
    if not (out / "manifest.json").exists():
        folders = tiny_datamodule(release_dir)
        folders.setup()
        pack_splits(folders.pairs, out, samples_per_shard=5, description={"city": CITY})
    datamodule = tiny_datamodule(
        release_dir,
        format="shards",
        shards=str(out),
        batch_size=batch,
        eval_batch_size=batch,
        num_workers=workers,
        **settings,
    )
    datamodule.setup()
    return datamodule, datamodule.loader(split, batch)


def batches(loader, count=None):
    taken = []
    for batch in loader:
        taken.append(batch["index"].tolist())
        if count is not None and len(taken) == count:
            break
    return taken


@pytest.mark.parametrize("workers", [0, 2])
def test_a_stream_resumed_after_any_batch_continues_with_the_same_batches(release_dir, tmp_path, workers):
    from cvgtext.data.shards.read import ShardLoader

    datamodule, loader = stream_of(release_dir, tmp_path, workers=workers, shuffle_window=3)
    loader.epoch_now = lambda: 1
    whole = batches(loader)
    pairs = len(datamodule.pairs["train"])
    assert len(whole) == len(loader) == pairs // 4 >= 3
    assert len({i for b in whole for i in b}) == 4 * len(whole)  # each sample once
    for taken in range(len(whole) + 1):
        state = {**loader.state_dict(), "batches": taken, "epoch": 1}
        _, resumed = stream_of(release_dir, tmp_path, workers=workers, shuffle_window=3)
        assert isinstance(resumed, ShardLoader)
        resumed.epoch_now = lambda: 1
        resumed.load_state_dict(state)
        assert whole[:taken] + batches(resumed) == whole
    other = stream_of(release_dir, tmp_path, workers=workers, shuffle_window=3)[1]
    other.epoch_now = lambda: 2
    assert batches(other) != whole  # another epoch, another order


def test_evaluation_splits_are_read_whole(release_dir, tmp_path):
    datamodule, loader = stream_of(release_dir, tmp_path, split="test", batch=4)
    assert sorted(i for b in batches(loader) for i in b) == list(range(len(datamodule.pairs["test"])))
    first = next(iter(loader))
    assert first["image"].shape == (4, 3, 8, 8) and first["caption"][0] == datamodule.pairs["test"][0].caption


def test_an_image_that_cannot_be_decoded_is_skipped_in_training_and_named_in_evaluation(release_dir, tmp_path):
    from helpers.city import tiny_datamodule

    folders = tiny_datamodule(release_dir)
    folders.setup()
    for split in ("train", "test"):
        folders.pairs[split][1].image_path.write_bytes(b"")  # packed as it is: the reader finds it
    datamodule, loader = stream_of(release_dir, tmp_path, on_bad_image="skip")
    skipped = [message for batch in loader for message in batch["skipped"]]
    assert len(skipped) == 1 and skipped[0].endswith(
        f"train sample 1 ({folders.pairs['train'][1].name}) cannot be decoded (an empty file; expected an image "
        "such as a JPEG)"
    )
    with pytest.raises(DataError, match=r"test sample 1 \(.*\) cannot be decoded \(an empty file"):
        batches(datamodule.loader("test", 4))


def test_https_shards_read_as_local_ones(release_dir, tmp_path):
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from helpers.city import tiny_datamodule

    local, loader = stream_of(release_dir, tmp_path, split="val")
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path / "packed"))
    handler.log_message = lambda *args: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        remote = tiny_datamodule(
            release_dir,
            format="shards",
            shards=f"http://127.0.0.1:{server.server_address[1]}/",
            batch_size=4,
            eval_batch_size=4,
        )
        remote.setup()
        served = remote.loader("val", 4)
        assert [p.name for p in remote.pairs["val"]] == [p.name for p in local.pairs["val"]]
        for ours, theirs in zip(served, loader, strict=True):
            assert ours["index"].tolist() == theirs["index"].tolist()
            assert (ours["image"] == theirs["image"]).all()
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"shards": None}, "data.format=shards with data.shards=null: give data.shards"),
        ({"sampler": "geo"}, "data.format=shards with data.sampler=geo: a stream reads shards in order"),
        ({"verify_images": "full"}, "data.format=shards with data.verify_images=full: a stream reads shards in order"),
        ({"format": "tar"}, "data.format='tar' is not one of folders, shards"),
        ({"shuffle_window": 0}, "data.shuffle_window=0 must be a positive number of samples"),
    ],
)
def test_what_a_stream_cannot_do_is_refused(release_dir, settings, message):
    import re

    from helpers.city import tiny_datamodule

    settings = {"format": "shards", "shards": "somewhere", **settings}
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        tiny_datamodule(release_dir, **settings)


def test_missing_or_foreign_shards_are_named(release_dir, tmp_path):
    from helpers.city import tiny_datamodule

    datamodule = tiny_datamodule(release_dir, format="shards", shards=str(tmp_path / "nothing"))
    with pytest.raises(DataError, match=r"^data\.shards=.*nothing: no readable manifest\.json .* pack the city"):
        datamodule.setup()
    stream_of(release_dir, tmp_path)
    manifest = json.loads((tmp_path / "packed" / "manifest.json").read_text())
    (tmp_path / "packed" / "manifest.json").write_text(json.dumps({**manifest, "city": "Tokyo"}))
    other = tiny_datamodule(release_dir, format="shards", shards=str(tmp_path / "packed"))
    with pytest.raises(ConfigError, match=r"holds Tokyo, not city Testville"):
        other.setup()
    (tmp_path / "packed" / "manifest.json").write_text(json.dumps({**manifest, "val_fraction": 0.1}))
    other = tiny_datamodule(release_dir, format="shards", shards=str(tmp_path / "packed"))
    with pytest.raises(ConfigError, match=r"was packed with val_fraction=0\.1, this run asks for 0\.3"):
        other.setup()


def test_every_rank_and_worker_gets_its_share_for_any_sizes():
    """The plan over many city sizes, shard sizes, devices, workers, batches, seeds and epochs."""
    import math
    import random

    from cvgtext.data.shards.read import worker_positions

    draw = random.Random(0)
    for _ in range(300):
        counts = [draw.randint(1, 9) for _ in range(draw.randint(1, 8))]
        total = sum(counts)
        world, workers, batch = draw.randint(1, 4), draw.randint(1, 3), draw.randint(1, 5)
        seed, epoch, shuffle, window = draw.randint(0, 9), draw.randint(0, 3), draw.random() < 0.7, draw.randint(1, 7)
        for training in (True, False):
            per_rank = []
            for rank in range(world):
                read_all, emitted_all = [], []
                for worker in range(workers):
                    read, emitted = worker_positions(
                        counts, batch, rank, world, worker, workers, seed, epoch, shuffle, window, training
                    )
                    assert sorted(read.tolist()) == sorted(emitted.tolist())
                    read_all += read.tolist()
                    emitted_all += emitted.tolist()
                per_rank.append(emitted_all)
            lengths = {len(share) for share in per_rank}
            assert len(lengths) == 1  # the same number of samples, so of batches, on every rank
            everything = [p for share in per_rank for p in share]
            if training:
                assert len(everything) == len(set(everything)) == total // (batch * world) * batch * world
                assert all(len(share) % batch == 0 for share in per_rank)
            else:
                assert set(everything) == set(range(total)) and lengths == {math.ceil(total / world)}


@pytest.mark.heavy
def test_two_devices_evaluate_shards_as_folders(release_dir, tmp_path):
    """Each rank reads its share of the test split's shards; the gathered metrics are the folders'."""
    from cvgtext.commands.pack import pack
    from helpers.city import repaint_tiles
    from helpers.models import tiny_checkpoint
    from helpers.runs import DDP

    repaint_tiles(release_dir)
    pack(compose_config("pack", pack_overrides(release_dir, tmp_path / "packed", "samples_per_shard=4"), tmp_path))
    checkpoint = tiny_checkpoint(tmp_path / "model.ckpt", seed=7)
    results = {}
    for source in ("folders", "shards"):
        result = run_cli(
            "eval.py",
            "city=Brisbane",
            f"city.name={CITY}",
            f"paths.data_dir={release_dir}",
            "data.val_fraction=0.3",
            "trainer=cpu",
            "data.num_workers=0",
            "data.eval_batch_size=2",
            f"ckpt_path={checkpoint}",
            f"data.format={source}",
            f"data.shards={tmp_path}/packed",
            f"hydra.run.dir={tmp_path}/{source}",
            "paths.cache_dir=null",
            *DDP,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        metrics = json.loads((tmp_path / source / "metrics.json").read_text())
        metrics.pop("run")
        results[source] = metrics
    assert results["shards"] == results["folders"]


@pytest.mark.heavy
def test_two_devices_train_from_shards_with_equal_batch_counts(release_dir, tmp_path):
    """Shuffled, two processes: the run ends (unequal batch counts would leave one rank waiting)."""
    from cvgtext.commands.pack import pack
    from helpers.runs import ddp_overrides

    pack(compose_config("pack", pack_overrides(release_dir, tmp_path / "packed", "samples_per_shard=3"), tmp_path))
    result = run_cli(
        "train.py",
        *ddp_overrides(
            release_dir,
            tmp_path / "logs",
            "data.format=shards",
            f"data.shards={tmp_path}/packed",
            "data.shuffle_window=4",
            "trainer.max_epochs=2",
            "data.batch_size=4",
        ),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (metrics,) = (tmp_path / "logs").glob("train/runs/*/metrics.json")
    assert json.loads(metrics.read_text())["all"]["count"] == 9


def test_the_query_tool_refuses_shards(release_dir, tmp_path):
    from cvgtext.search.gallery import gallery_tiles

    datamodule, _ = stream_of(release_dir, tmp_path)
    with pytest.raises(ConfigError, match=r"^the query tool and the web page read the city's folders"):
        gallery_tiles(datamodule, "test")
