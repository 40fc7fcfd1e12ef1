"""data.decode=device: image files decoded and resized where the model runs, against the CPU path."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from cvgtext.data.dataset import decode_image
from cvgtext.data.device_decode import DevicePreprocess, decode_on_device
from cvgtext.utils.errors import ConfigError, DataError
from helpers.city import image_path, training_names
from helpers.runs import compose_config, tiny_overrides


def encoded(height: int, width: int, mode: str = "RGB", kind: str = "JPEG", seed: int = 0) -> bytes:
    """A smooth random picture, as a file's bytes."""
    cells = np.random.default_rng(seed).integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    picture = Image.fromarray(cells).resize((width, height), Image.BILINEAR).convert(mode)
    out = io.BytesIO()
    picture.save(out, kind, **({"quality": 90} if kind == "JPEG" else {}))
    return out.getvalue()


# A release's 512 px tiles, odd shapes, grey and CMYK JPEGs, and a PNG that a .jpg name hides.
FILES = {
    "512 px JPEG": encoded(512, 512),
    "500x333 JPEG": encoded(333, 500, seed=1),
    "grey JPEG": encoded(512, 512, "L"),
    "CMYK JPEG": encoded(256, 256, "CMYK"),
    "RGBA PNG": encoded(300, 300, "RGBA", "PNG"),
}


def preprocessings():
    import open_clip

    from cvgtext.model.blip import preprocess_for

    return {
        "open_clip, shortest side and crop": open_clip.image_transform((64, 64), is_train=False),
        "open_clip, squashed to 2:1": open_clip.image_transform(
            (56, 112), is_train=False, resize_mode="squash", interpolation="bicubic"
        ),
        "BLIP": preprocess_for((48, 48)),
    }


@pytest.mark.parametrize("name", ["open_clip, shortest side and crop", "open_clip, squashed to 2:1", "BLIP"])
def test_device_tensors_are_within_one_level_of_the_cpu_path(name):
    preprocess = preprocessings()[name]
    images, kept, failed = decode_on_device(
        list(FILES.values()), list(FILES), DevicePreprocess(preprocess), torch.device("cpu")
    )
    assert kept == list(range(len(FILES))) and failed == []
    std = torch.tensor(preprocess.transforms[-1].std).view(3, 1, 1)
    for row, (what, data) in enumerate(FILES.items()):
        expected = preprocess(decode_image(io.BytesIO(data), what))
        levels = ((images[row] - expected) * std * 255).abs()  # in steps of the 8-bit pixels
        assert images[row].shape == expected.shape, what
        assert levels.max() <= 1.001 and levels.mean() < 0.25, (what, levels.max(), levels.mean())


def test_files_that_cannot_be_decoded_are_named_and_the_rest_kept_in_order():
    good = FILES["512 px JPEG"]
    data = [b"", good, good[:2000], b"not an image", FILES["RGBA PNG"]]
    names = [f"image /city/{i}.jpg" for i in range(len(data))]
    preprocess = DevicePreprocess(preprocessings()["open_clip, shortest side and crop"])
    images, kept, failed = decode_on_device(data, names, preprocess, torch.device("cpu"))
    assert kept == [1, 4] and images.shape == (2, 3, 64, 64)
    assert failed[0] == "image /city/0.jpg cannot be decoded (an empty file; expected an image such as a JPEG)"
    assert failed[1].startswith("image /city/2.jpg cannot be decoded (") and "truncated" in failed[1]
    assert failed[2].startswith("image /city/3.jpg cannot be decoded (no image format PIL reads")
    alone, _, _ = decode_on_device([good], names[1:2], preprocess, torch.device("cpu"))
    torch.testing.assert_close(images[:1], alone, rtol=0, atol=0)


def test_what_the_device_path_cannot_run_is_refused_when_the_data_is_set_up():
    from torchvision import transforms

    from cvgtext.data.datamodule import CVGTextDataModule

    with pytest.raises(
        ConfigError,
        match=r"^data\.decode=device cannot run the backbone's preprocessing step "
        r"RandomHorizontalFlip on tensors; use data\.decode=cpu$",
    ):
        DevicePreprocess(transforms.Compose([transforms.RandomHorizontalFlip(), transforms.ToTensor()]))
    with pytest.raises(ConfigError, match=r"^data\.decode='gpu' is not one of cpu, device$"):
        CVGTextDataModule(data_dir=".", city="x", decode="gpu")


def train_run(release_dir, tmp_path, *extra):
    from cvgtext.commands.train import train

    run = tmp_path / "run"
    cfg = compose_config(
        "train",
        [o for o in tiny_overrides(release_dir, run, *extra) if not o.startswith("hydra.")]
        + ["~callbacks.rich_progress_bar", "++trainer.enable_progress_bar=false"],
        tmp_path,
    )
    return train(cfg), run


@pytest.mark.slow
def test_training_decodes_on_the_device_skips_bad_images_and_counts_them(release_dir, tmp_path, monkeypatch):
    from cvgtext.data import datamodule

    decoded = []
    monkeypatch.setattr(
        datamodule, "decode_on_device", lambda data, *args: decoded.append(len(data)) or decode_on_device(data, *args)
    )
    bad = image_path(release_dir, training_names(release_dir)[0])
    bad.write_bytes(bad.read_bytes()[:200])
    metrics, run = train_run(
        release_dir,
        tmp_path,
        "data.decode=device",
        "data.on_bad_image=skip",
        "data.num_workers=0",
        "trainer.max_epochs=1",
    )
    assert 0 <= metrics["test/R@1"] <= 100
    # Training, validation and test batches went through the device path.
    assert len(decoded) > 3 and all(decoded)
    with open(next(run.glob("csv/*/metrics.csv"))) as handle:
        counts = {row["train/skipped_images"] for row in csv.DictReader(handle) if row.get("train/skipped_images")}
    assert counts == {"1.0"}
    assert json.loads((run / "metrics.json").read_text())["all"]["count"] > 0

    # Without skip, the same file stops the run with its name.
    with pytest.raises(DataError, match=rf"^image {bad} cannot be decoded \("):
        train_run(release_dir, tmp_path / "again", "data.decode=device", "data.num_workers=0", "trainer.max_epochs=1")


def test_shard_streams_carry_the_bytes_and_decode_as_the_cpu_path(release_dir, tmp_path):
    import open_clip

    from cvgtext.data.datamodule import CVGTextDataModule
    from cvgtext.data.shards.write import pack_splits
    from helpers.city import CITY, tiny_datamodule

    folders = tiny_datamodule(release_dir)
    folders.setup()
    pack_splits(folders.pairs, tmp_path / "packed", samples_per_shard=5, description={"city": CITY})
    preprocess = open_clip.image_transform((32, 32), is_train=False)

    def stream(decode):
        datamodule = CVGTextDataModule(
            data_dir=release_dir,
            city=CITY,
            val_fraction=0.3,
            batch_size=4,
            format="shards",
            shards=str(tmp_path / "packed"),
            decode=decode,
            preprocess=preprocess,
            tokenizer=lambda texts: torch.tensor([[len(text), 0, 0] for text in texts]),
        )
        datamodule.setup()
        return datamodule, next(iter(datamodule.loader("test", 4)))

    device, encoded = stream("device")
    assert "image" not in encoded and len(encoded["image_bytes"]) == 4
    decoded = device.on_after_batch_transfer(encoded, 0)
    _, expected = stream("cpu")
    assert decoded["index"].tolist() == expected["index"].tolist() and "image_bytes" not in decoded
    std = torch.tensor(preprocess.transforms[-1].std).view(1, 3, 1, 1)
    assert ((decoded["image"] - expected["image"]) * std * 255).abs().max() <= 1.001


def test_outside_training_a_bad_image_stops_evaluation_even_with_skip():
    import open_clip

    from cvgtext.data.datamodule import CVGTextDataModule

    datamodule = CVGTextDataModule(
        data_dir=".",
        city="x",
        decode="device",
        on_bad_image="skip",
        preprocess=open_clip.image_transform((32, 32), is_train=False),
    )
    batch = {
        "image_bytes": [b"", FILES["512 px JPEG"]],
        "image_file": ["image a.jpg", "image b.jpg"],
        "tokens": torch.zeros(2, 3),
    }
    with pytest.raises(
        DataError,
        match=r"^image a.jpg cannot be decoded \(an empty file; .*training only: the val "
        r"split needs every image",
    ):
        datamodule.on_after_batch_transfer(batch, 0)
