import json
import logging
from pathlib import Path

import pytest
from PIL import Image

from cvgtext.data import synthetic
from cvgtext.data.names import is_panorama, parse_coordinates
from cvgtext.data.synthetic.city import STAMP, ensure_city, generate_city
from cvgtext.utils.errors import ConfigError, DataError

SMALL = {"places": 30, "tile_size": 32}
VERSIONS = ("Synthetic", "Synthetic-photos")


def image_folders(root: Path, version: str) -> list[Path]:
    return [
        root / "reference" / f"{version}-satellite",
        root / "reference" / f"{version}-OSM",
        root / "query" / f"{version}-ground",
    ]


def load(root: Path, version: str, split: str) -> dict:
    return json.loads((root / "annotation" / version / f"{split}.json").read_text(encoding="utf-8"))


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def city(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("city")
    generate_city(root, **SMALL)
    return root


def test_same_seed_gives_identical_files(city, tmp_path):
    generate_city(tmp_path, **SMALL)
    assert all_files(tmp_path) == all_files(city)


def test_different_seed_gives_a_different_city(city, tmp_path):
    generate_city(tmp_path, seed=1, **SMALL)
    for version in VERSIONS:
        assert load(tmp_path, version, "train") != load(city, version, "train")


def test_annotations_are_objects_of_non_empty_captions(city):
    for version in VERSIONS:
        for split in ("train", "test"):
            table = load(city, version, split)
            assert isinstance(table, dict)
            assert all(isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in table.items())


def test_every_key_has_its_three_images_and_folders_hold_nothing_else(city):
    for version in VERSIONS:
        keys = set(load(city, version, "train")) | set(load(city, version, "test"))
        assert keys
        for folder in image_folders(city, version):
            assert {p.name for p in folder.iterdir()} == keys


def test_splits_and_views_follow_the_fractions(city):
    sizes = {(v, s): len(load(city, v, s)) for v in VERSIONS for s in ("train", "test")}
    photos = sizes["Synthetic-photos", "train"] + sizes["Synthetic-photos", "test"]
    assert photos == round(0.2 * 30)
    assert sizes["Synthetic", "test"] == round(0.1 * (30 - photos))
    train, test = load(city, "Synthetic", "train"), load(city, "Synthetic", "test")
    assert not set(train) & set(test)


def test_names_carry_coordinates_and_view(city):
    for version in VERSIONS:
        for name in {**load(city, version, "train"), **load(city, version, "test")}:
            lat, lon = parse_coordinates(name)
            assert -12.1 < lat < -11.9 and 130.9 < lon < 131.1
            assert name.endswith(".jpg")
            parts = name.split("_")
            if version == "Synthetic":
                assert is_panorama(name) and len(parts) == 5 and parts[1] == "2023-05"
                assert len(parts[2]) == 22 and parts[3].startswith("d") and parts[4] == "z3.jpg"
            else:
                assert not is_panorama(name) and len(parts) == 2


def test_images_decode_as_square_tiles_and_two_to_one_street_views(city):
    for version in VERSIONS:
        satellite, osm, ground = image_folders(city, version)
        for name in load(city, version, "test") | load(city, version, "train"):
            for folder, size in ((satellite, (32, 32)), (osm, (32, 32)), (ground, (32, 16))):
                with Image.open(folder / name) as image:
                    assert image.format == "JPEG"
                    image.load()
                    assert image.size == size


def test_captions_differ_between_places(city):
    captions = [c for v in VERSIONS for s in ("train", "test") for c in load(city, v, s).values()]
    assert len(set(captions)) == len(captions)


def test_panorama_captions_are_long_and_photo_captions_short(tmp_path):
    from open_clip.tokenizer import SimpleTokenizer

    generate_city(tmp_path, places=100, tile_size=16)
    tokenizer = SimpleTokenizer()

    def lengths(version: str) -> list[int]:
        captions = {**load(tmp_path, version, "train"), **load(tmp_path, version, "test")}.values()
        return [len(tokenizer.encode(c)) + 2 for c in captions]  # + start and end tokens, as CLIP counts

    panorama, photo = lengths("Synthetic"), lengths("Synthetic-photos")
    assert sum(panorama) / len(panorama) > 1.5 * sum(photo) / len(photo)
    assert sum(n > 77 for n in panorama) > 0.8 * len(panorama)
    assert max(photo) <= 77 and min(panorama) >= 60


def test_ensure_city_generates_only_when_the_stamp_is_missing_or_differs(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="cvgtext.data.synthetic.city"):
        assert ensure_city(tmp_path, **SMALL)
    assert "30 places" in caplog.text and str(tmp_path) in caplog.text
    assert not ensure_city(tmp_path, **SMALL)

    stamp = tmp_path / "annotation" / "Synthetic" / STAMP
    stamp.unlink()  # annotations without a stamp may be anyone's: refused, not overwritten
    with pytest.raises(DataError, match="that the synthetic city did not write"):
        ensure_city(tmp_path, **SMALL)
    for split in ("train", "test"):
        (tmp_path / "annotation" / "Synthetic" / f"{split}.json").unlink()
    assert ensure_city(tmp_path, **SMALL)
    assert stamp.exists()

    assert ensure_city(tmp_path, places=12, tile_size=32)
    assert json.loads(stamp.read_text())["places"] == 12
    keys = set(load(tmp_path, "Synthetic", "train")) | set(load(tmp_path, "Synthetic", "test"))
    assert {p.name for p in image_folders(tmp_path, "Synthetic")[0].iterdir()} == keys  # no stale tiles
    assert not ensure_city(tmp_path, places=12, tile_size=32)


def test_interrupted_generation_leaves_no_stamp_and_is_redone(tmp_path, monkeypatch):
    calls = []

    def failing_render(*args, **kwargs):
        calls.append(1)
        if len(calls) > 5:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    original = synthetic.render.render_osm
    monkeypatch.setattr(synthetic.render, "render_osm", failing_render)
    with pytest.raises(KeyboardInterrupt):
        ensure_city(tmp_path, **SMALL)
    assert not (tmp_path / "annotation" / "Synthetic" / STAMP).exists()
    monkeypatch.setattr(synthetic.render, "render_osm", original)
    assert ensure_city(tmp_path, **SMALL)


@pytest.mark.parametrize(
    "bad", [{"places": 0}, {"seed": -1}, {"tile_size": 15}, {"test_fraction": 1.5}, {"photo_fraction": -0.1}]
)
def test_bad_arguments_are_refused(tmp_path, bad):
    with pytest.raises(ConfigError):
        generate_city(tmp_path, **{**SMALL, **bad})


def test_a_read_only_folder_asks_for_a_writable_one(read_only_dir):
    with pytest.raises(DataError, match="point paths.data_dir \\(or CVGTEXT_DATA_DIR\\) at a writable folder") as error:
        ensure_city(read_only_dir, **SMALL)
    assert f"cannot generate the synthetic city in {read_only_dir}" in str(error.value)


def test_a_city_it_did_not_write_is_never_overwritten(tmp_path):
    folder = tmp_path / "annotation" / "Harbourside"
    folder.mkdir(parents=True)
    (folder / "train.json").write_text('{"-27.1,153.2_a.jpg": "a town of my own"}')
    with pytest.raises(
        DataError, match=r"Harbourside holds train.json that the synthetic city did not write.*city=town"
    ):
        ensure_city(tmp_path, **{**SMALL, "name": "Harbourside"})
    assert (folder / "train.json").read_text() == '{"-27.1,153.2_a.jpg": "a town of my own"}'
    assert not (tmp_path / "reference").exists()


def test_a_generation_killed_after_its_annotations_is_redone(tmp_path, monkeypatch):
    def dies_at_the_stamp(self, *args, **kwargs):
        if self.name == STAMP:
            raise KeyboardInterrupt
        return write_text(self, *args, **kwargs)

    write_text = Path.write_text
    monkeypatch.setattr(Path, "write_text", dies_at_the_stamp)
    with pytest.raises(KeyboardInterrupt):
        ensure_city(tmp_path, **SMALL)
    assert (tmp_path / "annotation" / "Synthetic" / "train.json").exists()  # written, then killed
    monkeypatch.setattr(Path, "write_text", write_text)
    assert ensure_city(tmp_path, **SMALL) and (tmp_path / "annotation" / "Synthetic" / STAMP).exists()
