"""The chat-completions client alone: replies cached where it is told, asked once, failures named."""

from __future__ import annotations

import json
import logging

from cvgtext.utils.chat import ChatEndpoint, read_json_object, request_key
from helpers.chat_server import ChatServer
from helpers.web import free_port


def body(text: str) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}]}


def test_a_reply_is_cached_in_the_folder_given_and_not_asked_again(tmp_path):
    with ChatServer("garbage") as server:
        endpoint = ChatEndpoint(server.url, None, 5.0, 0, 0.0, tmp_path / "replies")
        first, again = endpoint.ask(body("hello")), endpoint.ask(body("hello"))
    assert first.content == again.content and not first.cached and again.cached
    assert len(server.requests) == 1
    key = request_key(body("hello"))
    assert json.loads((tmp_path / "replies" / key[:2] / f"{key}.json").read_text()) == {"content": first.content}


def test_an_unreachable_endpoint_is_named_with_its_user_and_asked_no_more(caplog):
    url = f"http://127.0.0.1:{free_port()}/v1"
    endpoint = ChatEndpoint(url, None, 1.0, 1, 0.0, None, user="the caption model", unreachable_note="no caption")
    with caplog.at_level(logging.WARNING, logger="cvgtext.utils.chat"):
        replies = [endpoint.ask(body(f"q{i}")) for i in range(3)]
    assert [reply.failure for reply in replies] == ["unreachable"] * 3
    assert endpoint.sent == 2  # one request and its retry; the later ones fail at once
    assert f"The endpoint of the caption model, {url}/chat/completions, is unreachable: no caption" in caplog.text


def test_the_json_object_of_a_reply_is_found_in_prose_and_fences():
    assert read_json_object('Sure:\n```json\n{"a": 1}\n```') == {"a": 1}
    assert read_json_object("no object here") is None
    assert read_json_object("[1, 2]") is None
