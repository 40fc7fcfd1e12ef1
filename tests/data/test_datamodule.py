import json

import pytest
import torch

from cvgtext.data.datamodule import CVGTextDataModule
from cvgtext.utils.errors import ConfigError, DataError
from helpers.city import CITY, tiny_datamodule


def test_mixed_reads_both_versions_and_carves_validation_out_of_train(release_dir):
    mixed = tiny_datamodule(release_dir)
    panorama, photos = tiny_datamodule(release_dir, ["{city}"]), tiny_datamodule(release_dir, ["{city}-photos"])
    for datamodule in (mixed, panorama, photos):
        datamodule.setup("fit")
    for split in ("train", "val", "test"):
        assert len(mixed.pairs[split]) == len(panorama.pairs[split]) + len(photos.pairs[split])
    assert len(mixed.pairs["test"]) == 6 + 3
    assert len(mixed.pairs["train"]) + len(mixed.pairs["val"]) == 18 + 9
    assert all(p.is_panorama for p in panorama.pairs["train"])
    assert not any(p.is_panorama for p in photos.pairs["train"])
    train_names = {p.name for p in mixed.pairs["train"]}
    assert not train_names & {p.name for p in mixed.pairs["val"]}
    assert not train_names & {p.name for p in mixed.pairs["test"]}


def test_batches_carry_images_tokens_coordinates_names_and_view(release_dir):
    datamodule = tiny_datamodule(release_dir, batch_size=4, eval_batch_size=5)
    datamodule.setup("fit")
    batch = next(iter(datamodule.val_dataloader()))
    assert batch["image"].shape[1:] == (3, 8, 8)
    assert batch["tokens"].shape[1] == 3 and batch["tokens"].dtype == torch.long
    assert batch["lat"].dtype == torch.float64 and (batch["lat"] < 0).all()
    assert isinstance(batch["name"][0], str) and isinstance(batch["caption"][0], str)
    assert batch["is_panorama"].dtype == torch.bool
    train_batch = next(iter(datamodule.train_dataloader()))
    assert len(train_batch["index"]) == 4


def test_image_folder_comes_from_the_image_type(release_dir):
    datamodule = tiny_datamodule(release_dir, image_folder="query/{version}-ground")
    datamodule.setup()
    assert datamodule.pairs["test"][0].image_path.parent.name == f"{CITY}-ground"


def test_a_missing_data_folder_says_where_to_point(tmp_path):
    with pytest.raises(DataError, match="paths.data_dir"):
        CVGTextDataModule(data_dir=tmp_path / "nowhere", city=CITY).setup()


def test_a_broken_test_file_stops_setup_before_training(release_dir):
    (release_dir / "annotation" / f"{CITY}-photos" / "test.json").write_text("[]")
    with pytest.raises(DataError, match="test.json holds a JSON list"):
        tiny_datamodule(release_dir).setup("fit")


def test_an_empty_split_is_refused(release_dir):
    (release_dir / "annotation" / CITY / "test.json").write_text("{}")
    (release_dir / "annotation" / f"{CITY}-photos" / "test.json").write_text("{}")
    with pytest.raises(DataError, match="test split .* is empty"):
        tiny_datamodule(release_dir).setup()


def test_an_empty_validation_split_says_how_it_is_carved(release_dir):
    with pytest.raises(
        DataError,
        match=r"the val split of .* is empty: validation is carved out of train by a hash "
        r"of each file name \(data.val_fraction=0.001 of \d+ training pairs took "
        r"none\); raise data.val_fraction$",
    ):
        tiny_datamodule(release_dir, val_fraction=0.001).setup()


def test_an_unreadable_image_is_named_when_decoded(release_dir):
    datamodule = tiny_datamodule(release_dir)
    datamodule.setup()
    pair = datamodule.pairs["test"][0]
    pair.image_path.write_bytes(b"this is text, not a JPEG")
    with pytest.raises(DataError, match="cannot be decoded") as error:
        datamodule.dataset("test")[0]
    assert pair.name in str(error.value)


def test_batch_size_must_divide_by_the_devices(release_dir):
    class TwoDevices:
        world_size = 2

    datamodule = tiny_datamodule(release_dir, batch_size=5)
    datamodule.trainer = TwoDevices()
    with pytest.raises(ConfigError, match="data.batch_size=5 .* number of devices \\(2\\)"):
        datamodule.setup()


def test_unknown_split_is_refused(release_dir):
    with pytest.raises(ConfigError, match="split='dev'"):
        tiny_datamodule(release_dir).dataset("dev")


def test_an_unknown_bad_image_policy_is_refused(release_dir):
    with pytest.raises(ConfigError, match="data.on_bad_image='ignore' is not one of raise, skip"):
        tiny_datamodule(release_dir, on_bad_image="ignore")


def test_a_test_image_annotated_for_training_is_refused(release_dir):
    test_file = release_dir / "annotation" / f"{CITY}-photos" / "test.json"
    train_file = release_dir / "annotation" / f"{CITY}-photos" / "train.json"
    test_name = next(iter(json.loads(test_file.read_text())))
    train_file.write_text(json.dumps({**json.loads(train_file.read_text()), test_name: "A street."}))
    with pytest.raises(DataError, match="annotated both in") as error:
        tiny_datamodule(release_dir).setup()
    assert test_name in str(error.value) and str(train_file) in str(error.value) and str(test_file) in str(error.value)


def test_only_the_training_split_skips_bad_images(release_dir):
    datamodule = tiny_datamodule(release_dir, on_bad_image="skip")
    datamodule.setup()
    assert [datamodule.dataset(split).on_bad_image for split in ("train", "val", "test")] == ["skip"] * 3
    assert [datamodule.dataset(split).split for split in ("train", "val", "test")] == ["train", "val", "test"]


def test_skip_leaves_out_a_missing_training_image_but_not_a_missing_test_image(release_dir):
    def training_pairs(datamodule):
        datamodule.setup()
        return len(datamodule.pairs["train"]) + len(datamodule.pairs["val"])

    complete = training_pairs(tiny_datamodule(release_dir))
    folder = release_dir / "reference" / f"{CITY}-satellite"
    names = {
        split: json.loads((release_dir / "annotation" / CITY / f"{split}.json").read_text())
        for split in ("train", "test")
    }
    (folder / next(iter(names["train"]))).unlink()
    assert training_pairs(tiny_datamodule(release_dir, on_bad_image="skip")) == complete - 1
    with pytest.raises(DataError, match="data.on_bad_image=skip"):
        tiny_datamodule(release_dir).setup()
    (folder / next(iter(names["test"]))).unlink()
    with pytest.raises(DataError, match="does not exist"):
        tiny_datamodule(release_dir, on_bad_image="skip").setup()


def test_overfitting_a_few_batches_turns_shuffling_off(release_dir):
    from types import SimpleNamespace

    datamodule = tiny_datamodule(release_dir)
    assert datamodule.shuffles_training  # no trainer yet: as data.shuffle says
    datamodule.trainer = SimpleNamespace(overfit_batches=2)
    assert not datamodule.shuffles_training  # the same batches every epoch
    datamodule.trainer = SimpleNamespace(overfit_batches=0.0)
    assert datamodule.shuffles_training
    datamodule.shuffle = False
    assert not datamodule.shuffles_training


def test_the_source_is_chosen_once_by_the_format(release_dir, tmp_path):
    from cvgtext.data.folders import FolderSource
    from cvgtext.data.shards.source import ShardSource

    assert isinstance(tiny_datamodule(release_dir).source, FolderSource)
    streamed = tiny_datamodule(release_dir, format="shards", shards=str(tmp_path / "shards"))
    assert isinstance(streamed.source, ShardSource) and streamed.source.location == str(tmp_path / "shards")
    with pytest.raises(ConfigError, match="data.format=shards with data.sampler=geo: a stream reads shards in order"):
        tiny_datamodule(release_dir, format="shards", shards=str(tmp_path), sampler="geo")


def test_a_split_with_a_known_gallery_reads_its_captions_only(release_dir):
    datamodule = tiny_datamodule(release_dir, known_gallery={"test": object()})
    datamodule.setup()
    test, val = next(iter(datamodule.test_dataloader())), next(iter(datamodule.val_dataloader()))
    assert "image" not in test and "tokens" in test
    assert "image" in val
    with pytest.raises(ConfigError, match=r"known_gallery names \['gallery'\], not splits"):
        tiny_datamodule(release_dir, known_gallery={"gallery": object()})
