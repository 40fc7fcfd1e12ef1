"""Scene text read for real by RapidOCR's own offline models, and text on vehicles left out."""

from __future__ import annotations

import pytest

from cvgtext.data.town.ocr import SceneTextReader, inside, looks_like_plate
from helpers.town import street_view

pytest.importorskip("rapidocr")


@pytest.fixture(scope="module")
def reader():
    return SceneTextReader(det_max_side=512)


def test_painted_shop_signs_are_read_left_to_right(reader):
    image = street_view(["BAKERY ROSSI", "CAFE LUNA"])
    found = reader.read(image)
    assert [line.text for line in found] == ["BAKERY ROSSI", "CAFE LUNA"]
    assert all(line.score > 0.9 for line in found)
    left, top, right, bottom = found[0].box
    assert 0 <= left < right < image.width / 2 and image.height * 0.2 < top < bottom < image.height * 0.5


def test_text_on_a_vehicle_is_left_out(reader):
    image = street_view(["PHARMACY", "XYZ 123"])
    assert [line.text for line in reader.read(image)] == ["PHARMACY"]  # a number plate, by its look
    plate_box = reader.read(street_view(["PHARMACY", "DELIVERY"]))[1].box
    vehicle = (plate_box[0] - 5, plate_box[1] - 5, plate_box[2] + 5, plate_box[3] + 5)
    assert [line.text for line in reader.read(street_view(["PHARMACY", "DELIVERY"]), [vehicle])] == ["PHARMACY"]


def test_plates_and_boxes():
    assert looks_like_plate("ABC 123") and looks_like_plate("KA01AB1234")
    assert not looks_like_plate("SHOP 1") and not looks_like_plate("Bakery 24") and not looks_like_plate("1234")
    assert inside((10, 10, 20, 20), [(0, 0, 15, 30)])  # half of it
    assert not inside((10, 10, 20, 20), [(0, 0, 12, 30)])
