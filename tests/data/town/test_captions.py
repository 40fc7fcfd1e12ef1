"""Captions by the progressive method against a fake multimodal server: the order of the
prompt, the OCR'd sign text, format filtering, the inspector's verdicts, the reply cache."""

from __future__ import annotations

import re

import pytest
from hydra.utils import instantiate

from cvgtext.data.town.captions import clean, format_problem
from cvgtext.data.town.http import SourceUnreachable
from helpers.runs import compose_config
from helpers.town import street_view
from helpers.town_chat import TownChatServer
from helpers.web import free_port

ORDER = ("road runs", "Signs read", "buildings", "trees")


def captioner(tmp_path, url, *overrides, single_prompt=None):
    settings = [f"captioner.url={url}", "captioner.timeout_s=1", "captioner.retries=0", "captioner.backoff_s=0"]
    cfg = compose_config("build_city", [*settings, *overrides], tmp_path)
    if single_prompt is not None:
        cfg.captioner.producer.single = single_prompt
    return instantiate(cfg.captioner, cache_dir=tmp_path / "replies", _convert_="all")


def positions(text: str, markers=ORDER) -> list[int]:
    return [text.index(marker) for marker in markers]


def test_a_caption_follows_the_progressive_order_and_quotes_the_signs(tmp_path):
    image = street_view(["BAKERY ROSSI"])
    with TownChatServer() as server:
        result = captioner(tmp_path, server.url).caption(image, "panorama", ["BAKERY ROSSI", "CAFE LUNA"])
    assert result.left_out is None and result.verdicts == ["accept"]
    assert positions(result.text) == sorted(positions(result.text))
    assert "Signs read BAKERY ROSSI and CAFE LUNA." in result.text
    producer = server.requests[0]["messages"][0]["content"]
    prompt = producer[0]["text"]
    assert producer[1]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    steps = re.findall(r"^\d+\. ([A-Za-z ]+):", prompt, flags=re.MULTILINE)
    assert steps == ["Road characteristics", "Scene text", "Buildings", "The overall environment"]
    assert 'by OCR (it may hold errors; text on vehicles is left out): "BAKERY ROSSI"; "CAFE LUNA".' in prompt
    assert "sector by sector" in prompt and "{" not in prompt.replace('{"', "")


def test_the_order_is_the_prompts(tmp_path):
    """Another order in the config gives captions in that order (the model follows the prompt)."""
    reordered = (
        "1. Buildings: their colours.\n2. The overall environment: trees.\n3. Road characteristics: its direction."
        "\n4. Scene text: OCR: {scene_text}."
    )
    with TownChatServer() as server:
        writer = captioner(tmp_path, server.url, single_prompt=reordered)
        result = writer.caption(street_view(["DELI"]), "single", ["DELI"])
    markers = ("buildings", "trees", "road runs", "Signs read DELI")
    assert positions(result.text, markers) == sorted(positions(result.text, markers))


def test_single_views_have_their_own_prompt_and_no_text_is_said(tmp_path):
    with TownChatServer() as server:
        captioner(tmp_path, server.url).caption(street_view([]), "single", [])
    prompt = server.requests[0]["messages"][0]["content"][0]["text"]
    assert prompt.startswith("This street-view photo looks at one frontage")
    assert "by OCR (it may hold errors; text on vehicles is left out): none was read." in prompt
    assert "Objects found in the scene: not available." in prompt


@pytest.mark.parametrize(
    "signs, left_out, verdicts, requests",
    [
        (["GARBAGE"], "format:code", [], 2),  # the reply and its follow-up are code
        (["SORRY"], None, ["accept"], 3),  # a refusal, then a caption after the follow-up
        (["REJECT"], "inspector:rejected", ["reject"], 2),
        (["REWRITE"], None, ["rewrite", "accept"], 4),  # produce, inspect, rewrite, inspect
        (["NOJSON"], "inspector:invalid_reply", [], 3),  # produce, inspect, its follow-up
    ],
)
def test_format_filtering_and_the_inspector(tmp_path, signs, left_out, verdicts, requests):
    with TownChatServer() as server:
        result = captioner(tmp_path, server.url).caption(street_view(signs), "panorama", signs)
    assert (result.left_out, result.verdicts) == (left_out, verdicts)
    assert (result.text is None) == (left_out is not None)
    assert len(server.requests) == requests
    if signs == ["REWRITE"]:
        assert result.text.endswith("The crossing is twenty metres ahead of the camera.")
        assert result.notes == ["say how far the crossing is", "accurate, complete and clear"]
        rewrite = server.requests[2]["messages"]
        assert [m["role"] for m in rewrite] == ["user", "assistant", "user"]
        assert "say how far the crossing is" in rewrite[2]["content"]
    if signs == ["SORRY"]:
        follow_up = server.requests[1]["messages"][2]["content"]
        assert follow_up.startswith("That description cannot be used: it declined to describe the image.")


def test_a_timeout_is_named_and_retried_by_a_later_run(tmp_path):
    with TownChatServer(delay_s=3) as server:
        result = captioner(tmp_path, server.url).caption(street_view(["SLOW"]), "panorama", ["SLOW"])
    assert result.left_out == "model:timeout" and result.text is None


def test_replies_are_cached_so_a_rerun_asks_nothing(tmp_path):
    image = street_view(["FLORIST"])
    with TownChatServer() as server:
        first = captioner(tmp_path, server.url).caption(image, "panorama", ["FLORIST"])
        asked = len(server.requests)
        again = captioner(tmp_path, server.url).caption(image, "panorama", ["FLORIST"])
    assert asked == 2 and len(server.requests) == asked and again == first


def test_an_unreachable_model_stops_the_build_with_its_url(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(SourceUnreachable, match=rf"the caption model at {url}/chat/completions is unreachable"):
        captioner(tmp_path, url).caption(street_view([]), "panorama", [])


def test_the_plain_method_has_no_ocr_and_no_inspector(tmp_path):
    with TownChatServer() as server:
        writer = captioner(tmp_path, server.url, "captioner=plain")
        result = writer.caption(street_view(["DELI"]), "panorama", [])
    assert not writer.reads_scene_text and writer.inspector is None
    assert server.requests[0]["messages"][0]["content"][0]["text"] == "Describe this street-view panorama."
    assert len(server.requests) == 1 and result.verdicts == []


@pytest.mark.parametrize(
    "reply, problem",
    [
        ("", "empty"),
        ("I'm sorry, I can't help with that.", "refusal"),
        ('{"caption": "x"}', "code"),
        ("The road at -27.4700, 153.0200 runs north " + "and on " * 20, "coordinates"),
        ("A road.", "too_short"),
        ("word " * 300, "too_long"),
        ("A long quiet road " * 10, None),
    ],
)
def test_format_problems(reply, problem):
    assert format_problem(clean(reply), 25, 250) == problem


def test_markdown_is_undone():
    assert (
        clean('"## Road\n1. **A wide road** runs north.\n- Signs: BAKERY"')
        == "Road A wide road runs north. Signs: BAKERY"
    )
