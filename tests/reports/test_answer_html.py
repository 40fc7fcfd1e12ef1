"""What the page and the query tool say about an answer: confidence in words and numbers, the
area, the tiles' captions, the table; everything typed escaped."""

from __future__ import annotations

import pytest

from cvgtext.reports.answer_html import answer_message, descriptions_html, results_html, tile_caption
from cvgtext.reports.locations import (
    Area,
    AreaPlace,
    Candidate,
    Location,
    confidence_line,
    confidence_words,
    geojson_content,
    locations_content,
)


def calibrated(confidence: float, descriptions=("a church <b>",)) -> Location:
    candidates = [
        Candidate(1, "a.jpg", -27.47, 153.02, 0.71, 0.0, probability=confidence),
        Candidate(2, "b.jpg", -27.48, 153.02, 0.69, 1111.9, probability=0.1),
    ]
    area = Area(
        0.8, 2, 1111.9, [AreaPlace("a.jpg", -27.47, 153.02, confidence), AreaPlace("b.jpg", -27.48, 153.02, 0.1)]
    )
    return Location(
        descriptions[0],
        candidates,
        descriptions=list(descriptions),
        confidence=confidence,
        within=confidence,
        within_m=50.0,
        area=area,
    )


@pytest.mark.parametrize(
    "probability, words",
    [
        (0.95, "likely"),
        (0.6, "likely"),
        (0.59, "possible: check the other candidates"),
        (0.3, "possible: check the other candidates"),
        (0.29, "not sure: these are guesses"),
        (0.0, "not sure: these are guesses"),
    ],
)
def test_confidence_in_words(probability, words):
    assert confidence_words(probability) == words


def test_the_status_line_says_how_sure_and_where():
    message = answer_message(calibrated(0.72), tiles=2000, seconds=0.042)
    first, second = message.split("\n\n")
    assert first == (
        "**Likely.** 72 % that tile 1 is the place; with 80 % it lies within 1,112 m of tile 1 "
        "(the orange area: 2 tiles)."
    )
    assert second == "Best match **-27.47000, 153.02000** (score 0.710) among 2,000 tiles, in 42 ms."
    both = answer_message(calibrated(0.2, ("one", "two")), tiles=2000, seconds=0.05)
    assert both.startswith("**Not sure: these are guesses.** 20 %") and "from 2 descriptions of this place" in both
    assert confidence_line(calibrated(0.72)) == (
        "likely. 72 % that tile 1 is the place (72 % within 50 m); 80 % area: 2 tiles, 1,112 m around tile 1"
    )
    plain = Location("a church", calibrated(0.5).candidates)
    assert "Best match" in answer_message(plain, 10, 0.01) and "%" not in answer_message(plain, 10, 0.01).split("(")[0]


def test_captions_are_short_and_the_table_has_the_probability():
    location = calibrated(0.72)
    assert [tile_caption(c) for c in location.candidates] == ["1: 72 %", "2: 10 %, 1,112 m"]
    table = results_html(location)
    assert "<th>probability</th>" in table and "<td>72.0 %</td>" in table and '<col class="file">' in table
    assert table.index("<th>probability</th>") < table.index("<th>metres from 1</th>")
    plain = Location("x", [Candidate(1, "a.jpg", 1.0, 2.0, 0.5, 0.0)])
    assert "probability" not in results_html(plain) and tile_caption(plain.candidates[0]) == "1: 0.50"
    listed = descriptions_html(["a church <b>", "a bakery"])
    assert listed.count("<li>") == 2 and "&lt;b&gt;" in listed and "<b>" not in listed
    assert descriptions_html(["only one"]) == ""


def test_the_location_files_carry_the_confidence_and_the_area():
    location = calibrated(0.72, ("a church", "a bakery"))
    [content] = locations_content([location])
    assert content["descriptions"] == ["a church", "a bakery"] and content["confidence"] == 0.72
    assert content["area"]["places"] == 2 and content["area"]["members"][1] == {
        "file": "b.jpg",
        "lat": -27.48,
        "lon": 153.02,
        "probability": 0.1,
    }
    assert content["candidates"][0]["probability"] == 0.72
    kinds = [f["properties"].get("kind", "candidate") for f in geojson_content([location])["features"]]
    assert kinds == ["candidate", "candidate", "area_radius", "area_places"]
    [uncalibrated] = locations_content([Location("x", [Candidate(1, "a.jpg", 1.0, 2.0, 0.5, 0.0)])])
    assert set(uncalibrated) == {"query", "candidates"}
