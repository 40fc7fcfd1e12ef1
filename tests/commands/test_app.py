"""The web page: what it answers for each kind of input, its options, and the served page.

The page's two steps (``Page.ask``, ``Page.explain``) are called directly here; the page in a
real browser is tested in ``test_app_browser.py`` (make test-slow).
"""

from __future__ import annotations

import json
import urllib.request

import pytest

from cvgtext.commands.app import Page, answer, check_page_options, read_description, results_html, words_html
from cvgtext.utils.errors import ConfigError
from helpers.city import CITY, repaint_tiles
from helpers.models import tiny_checkpoint
from helpers.runs import compose_config, locate_overrides, run_cli
from helpers.web import HTML_TEXT, free_port


@pytest.fixture
def locator(release_dir, tmp_path):
    from cvgtext.commands.locator import Locator

    repaint_tiles(release_dir)
    checkpoint = tiny_checkpoint(tmp_path / "model.ckpt", seed=3)
    cfg = compose_config(
        "app",
        [f"paths.cache_dir={tmp_path}/cache", f"ckpt_path={checkpoint}", "top_k=4", *locate_overrides(release_dir)],
        tmp_path,
    )
    return Locator(cfg)


def test_an_empty_description_asks_for_one():
    for text in ("", "   \n\t ", None):
        description, notes = read_description(text, 2000)
        assert description is None and notes[0].startswith("Describe the place you see")


def test_a_long_paste_is_cut_with_a_note():
    description, notes = read_description("a red roof " * 1000, 2000)
    assert len(description) == 2000 and description.startswith("a red roof a red roof")
    assert "10,999 characters" in notes[0] and "first 2,000" in notes[0] and "max_chars" in notes[0]
    assert read_description("  a red \n\n roof ", 2000) == ("a red roof", [])


def test_the_candidates_table_escapes_what_was_typed_and_the_words():
    from cvgtext.reports.locations import Candidate, Location

    location = Location(HTML_TEXT, [Candidate(1, "-27.1,153.2_<b>.jpg", -27.1, 153.2, 0.5, 0.0)])
    table = results_html(location)
    assert "<script>" not in table and "<b>" not in table and "<img" not in table
    assert "&lt;script&gt;" in table and 'data-file="-27.1,153.2_&lt;b&gt;.jpg"' in table
    assert "-27.10000" in table and "153.20000" in table
    shaded = words_html([("<script>", 1.0), ("roof", 0.2)])
    assert "<script>" not in shaded and "&lt;script&gt;" in shaded and "roof" in shaded
    assert results_html(None) == '<p class="no-results">No results yet.</p>' and words_html([]) == ""


def test_large_tiles_are_shown_at_most_320_pixels_a_side(tmp_path):
    from PIL import Image

    from cvgtext.commands.app import display_tile

    Image.new("RGB", (512, 384), "red").save(tmp_path / "tile.jpg")
    assert display_tile(tmp_path / "tile.jpg").size == (320, 240)


def test_bad_page_options_are_named():
    check_page_options("127.0.0.1", 7860, 2000)
    for options, key in (
        (("", 7860, 2000), "server_name="),
        (("127.0.0.1", 0, 2000), "port=0"),
        (("127.0.0.1", "80", 2000), "port='80'"),
        (("127.0.0.1", 7860, 0), "max_chars=0"),
        (("127.0.0.1", 7860, True), "max_chars=True"),
    ):
        with pytest.raises(ConfigError, match=key):
            check_page_options(*options)


@pytest.mark.slow
def test_each_kind_of_text_gets_an_answer_or_a_message(locator):
    page = Page(locator, max_chars=2000)
    status, table, tiles, where, words, place = page.ask("")
    assert status.startswith("Describe the place you see") and place is None and tiles == []
    assert table == results_html(None) and where is None

    status, table, tiles, where, words, place = page.ask("a red roof and two trees")
    location = place.location
    assert "Best match" in status and "among 36 tiles" in status
    assert [c.rank for c in location.candidates] == [1, 2, 3, 4] and len(tiles) == 4
    assert table.count("<tr data-file=") == 4 and location.candidates[0].file in table
    assert tiles[0][1] == f"1: {100 * location.candidates[0].probability:.0f} %" and where.width > 100 and words == ""
    # how sure, in words and numbers, and the area
    assert f"{100 * location.confidence:.0f} % that tile 1 is the place" in status
    assert f"{location.area.places:,} tile" in status and "<th>probability</th>" in table
    # the page ranks as the query tool does
    [located] = locator.locate(["a red roof and two trees"])
    assert [c.file for c in located.candidates] == [c.file for c in location.candidates]

    long = answer(locator, "a red roof " * 1000)
    assert long.location is not None and len(long.location.query) == 2000
    assert any("first 2,000" in note for note in long.notes)
    assert any("reads the first 77 tokens" in note for note in long.notes)

    for text in ("屋根が赤い家と二本の木", "سقف أحمر وشجرتان", "Крыша красная"):
        found = answer(locator, text)
        assert found.location is not None and len(found.location.candidates) == 4
        assert any("English" in note for note in found.notes)

    status, table, *_, place = page.ask(HTML_TEXT)
    assert place.location.query == " ".join(HTML_TEXT.split()) and "<script>" not in table + status
    # a further description of the same place: the answer comes from both, and says so
    status, table, *_, both = page.more("a church on a roundabout <b>", place)
    assert both.descriptions == [place.location.query, "a church on a roundabout <b>"]
    assert "from 2 descriptions of this place" in status and "<b>" not in status and "&lt;b&gt;" in status
    [expected] = locator.locate([both.descriptions])
    assert [c.file for c in both.location.candidates] == [c.file for c in expected.candidates]
    assert both.location.confidence == pytest.approx(expected.confidence)
    # an empty further description keeps the place as it was
    status, *_, kept = page.more("  ", both)
    assert status.startswith("Describe the place you see") and kept is both


@pytest.mark.slow
def test_a_failure_inside_is_one_line_on_the_page(locator, monkeypatch, caplog):
    page = Page(locator)

    def broken(described, embeddings, top_k=None):
        raise RuntimeError("the index <went> away")

    monkeypatch.setattr(locator, "locate_embedded", broken)
    status, table, tiles, where, words, place = page.ask("a red roof")
    assert status == "Could not answer: RuntimeError: the index &lt;went&gt; away"
    assert "Traceback" not in status and place is None and tiles == []
    assert "Traceback" in caplog.text  # the server's log keeps it


@pytest.mark.slow
def test_the_shown_tiles_get_their_overlays_in_a_second_step(locator):
    import numpy as np

    page = Page(locator)
    *_, plain, _, _, place = page.ask("a red roof and two trees")
    location = place.location
    tiles, words, around = page.explain(place)
    assert len(tiles) == len(plain) == 4 and around.size == (440, 440)
    assert [caption for _, caption in tiles] == [caption for _, caption in plain]
    assert tiles[0][0].size == plain[0][0].size == (32, 32)  # the tiles as they are (at most 320 px)
    # the explained pairs are the candidates', in rank order: the fourth map is tile 4's own
    from cvgtext.reports.overlays import heat_overlay

    found = locator.explain(location, 4)
    assert np.array_equal(np.asarray(tiles[3][0]), np.asarray(heat_overlay(plain[3][0], found[3][0].image)))
    assert not np.array_equal(np.asarray(tiles[3][0]), np.asarray(plain[3][0]))
    assert words.startswith('<p class="relevance">') and "roof" in words and "trees" in words
    no_overlays = Page(locator, overlays=False)
    skipped, words, around = no_overlays.explain(place)
    assert words == "" and around is not None  # the neighbourhood is drawn all the same


@pytest.mark.slow
def test_the_page_is_served_on_127_0_0_1(locator, release_dir, tmp_path):
    from cvgtext.commands.app import serve

    port = free_port()
    checkpoint = tiny_checkpoint(tmp_path / "served.ckpt", seed=4)
    cfg = compose_config(
        "app",
        [
            f"paths.cache_dir={tmp_path}/cache",
            f"ckpt_path={checkpoint}",
            f"port={port}",
            *locate_overrides(release_dir),
        ],
        tmp_path,
    )
    blocks = serve(cfg, block=False)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=30) as response:
            config = json.loads(response.read())
        assert config["title"] == f"Where am I? {CITY}, sat tiles"
        ids = {component.get("props", {}).get("elem_id") for component in config["components"]}
        assert {"query", "ask", "more", "status", "tiles", "results", "map", "neighbourhood", "words"} <= ids
        # a second page on the same port is refused with the way out
        with pytest.raises(ConfigError, match=f"cannot serve on 127.0.0.1:{port}.*port="):
            serve(cfg, block=False)
    finally:
        blocks.close()


@pytest.mark.slow
def test_the_cli_reports_a_bad_port_in_one_line(release_dir, tmp_path):
    result = run_cli("app.py", *locate_overrides(release_dir), "port=70000", f"hydra.run.dir={tmp_path}/run")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["error: port=70000 must be a port number from 1 to 65535"]
