import json

import pytest

from cvgtext.data.annotations import in_validation, load_pairs, read_annotation
from cvgtext.data.names import check_plain_name, is_panorama, parse_coordinates
from cvgtext.utils.errors import DataError
from helpers.city import panorama_name, photo_name


def test_coordinates_come_from_the_file_name():
    assert parse_coordinates("40.75290377,-73.97958215_2022-08_x_d62_z3.jpg") == (40.75290377, -73.97958215)
    assert parse_coordinates("-27.5,+153.25_abc.jpg") == (-27.5, 153.25)


@pytest.mark.parametrize(
    "name, problem",
    [
        ("no_coordinates.jpg", "does not start with 'lat,lon'"),
        ("91.0,10.0_a.jpg", "out of range"),
        ("10.0,-181.0_a.jpg", "out of range"),
    ],
)
def test_names_without_valid_coordinates_are_refused(name, problem):
    with pytest.raises(DataError, match=problem):
        parse_coordinates(name)


def test_panorama_names_have_more_than_two_parts():
    assert is_panorama(panorama_name(1))
    assert not is_panorama(photo_name(1))


@pytest.mark.parametrize("name", ["../x.jpg", "/etc/passwd", "a/b.jpg", "a\\b.jpg", "..", ""])
def test_names_leaving_the_image_folder_are_refused(name):
    with pytest.raises(DataError, match="not a plain file name"):
        check_plain_name(name)


@pytest.mark.parametrize(
    "content, problem",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "holds a JSON list"),
        ('{"1.0,2.0_a.jpg": ""}', "expected a non-empty string"),
        ('{"1.0,2.0_a.jpg": 3}', "expected a non-empty string"),
    ],
)
def test_malformed_annotation_files_are_named(tmp_path, content, problem):
    path = tmp_path / "train.json"
    path.write_text(content)
    with pytest.raises(DataError, match=problem) as error:
        read_annotation(path)
    assert str(path) in str(error.value)


def test_a_byte_order_mark_is_read_past(tmp_path):
    path = tmp_path / "train.json"
    path.write_bytes('{"1.0,2.0_a.jpg": "café"}'.encode("utf-8-sig"))  # as Windows editors save
    assert read_annotation(path) == {"1.0,2.0_a.jpg": "café"}


def test_a_key_given_twice_is_refused_rather_than_losing_a_caption(tmp_path):
    path = tmp_path / "train.json"
    path.write_text('{"1.0,2.0_a.jpg": "first", "1.0,3.0_b.jpg": "other", "1.0,2.0_a.jpg": "second"}')
    with pytest.raises(DataError, match="has the key '1.0,2.0_a.jpg' twice") as error:
        read_annotation(path)
    assert str(path) in str(error.value)


def test_missing_annotation_file_is_named(tmp_path):
    with pytest.raises(DataError, match="does not exist") as error:
        read_annotation(tmp_path / "test.json")
    assert "test.json" in str(error.value)


def _annotation(tmp_path, content: dict):
    (tmp_path / "images").mkdir(exist_ok=True)
    path = tmp_path / "train.json"
    path.write_text(json.dumps(content))
    return path


@pytest.mark.parametrize(
    "key, problem",
    [
        ("../1.0,2.0_a.jpg", "not a plain file name"),
        ("/etc/passwd", "not a plain file name"),
        ("sub/1.0,2.0_a.jpg", "not a plain file name"),
        ("nowhere.jpg", "lat,lon"),
        ("95.0,2.0_a.jpg", "out of range"),
    ],
)
def test_bad_keys_are_refused_with_the_annotation_file(tmp_path, key, problem):
    path = _annotation(tmp_path, {key: "a caption"})
    with pytest.raises(DataError, match=problem) as error:
        load_pairs(path, tmp_path / "images")
    assert str(path) in str(error.value)


def test_a_missing_image_is_named(tmp_path):
    path = _annotation(tmp_path, {"1.0,2.0_a.jpg": "a caption"})
    with pytest.raises(DataError, match="does not exist") as error:
        load_pairs(path, tmp_path / "images")
    assert "1.0,2.0_a.jpg" in str(error.value) and "train.json" in str(error.value)
    assert "data.on_bad_image=skip" in str(error.value)


def test_a_missing_image_can_be_left_out_with_a_warning(tmp_path, caplog):
    path = _annotation(tmp_path, {"1.0,2.0_a.jpg": "a caption", "1.0,2.0_b.jpg": "another"})
    (tmp_path / "images" / "1.0,2.0_b.jpg").write_bytes(b"")
    (pair,) = load_pairs(path, tmp_path / "images", missing="skip")
    assert pair.name == "1.0,2.0_b.jpg"
    assert "1.0,2.0_a.jpg does not exist" in caplog.text and "left out" in caplog.text


def test_pairs_carry_coordinates_and_the_view(tmp_path):
    name = panorama_name(3)
    path = _annotation(tmp_path, {name: "a caption"})
    (tmp_path / "images" / name).write_bytes(b"")
    (pair,) = load_pairs(path, tmp_path / "images")
    assert (pair.lat, pair.lon) == parse_coordinates(name)
    assert pair.is_panorama and pair.image_path == tmp_path / "images" / name


def test_validation_split_depends_on_the_name_only():
    names = [panorama_name(i) for i in range(400)]
    held_out = {n for n in names if in_validation(n, 0.2)}
    assert held_out == {n for n in reversed(names) if in_validation(n, 0.2)}
    assert 40 < len(held_out) < 120
    assert {n for n in names if in_validation(n, 0.1)} <= held_out
