"""Sending with retries: which answers are asked again, how often, and when it stops."""

from __future__ import annotations

import io
import threading
import urllib.error
import urllib.request

import pytest

from cvgtext.utils.web import send_with_retries


class Opener:
    """Answers each request with the next of ``answers``: an exception raised, or bytes returned."""

    def __init__(self, *answers):
        self.answers, self.opened = list(answers), 0

    def open(self, request, timeout):
        self.opened += 1
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        response = urllib.request.addinfourl(io.BytesIO(answer), {}, request.full_url, code=200)
        return response


def http_error(status: int) -> urllib.error.HTTPError:
    return urllib.error.HTTPError("http://127.0.0.1/x", status, "status", {}, io.BytesIO(b""))


def send(opener: Opener, unreachable: threading.Event | None = None, retries: int = 3):
    return send_with_retries(
        opener,
        lambda: urllib.request.Request("http://127.0.0.1/x"),
        timeout_s=1,
        retries=retries,
        backoff_s=0,
        unreachable=unreachable or threading.Event(),
        retried={503}.__contains__,
    )


def test_a_refused_status_is_asked_once_and_a_retried_one_until_the_tries_run_out():
    opener = Opener(http_error(404))
    sent = send(opener)
    assert (sent.body, sent.failure, sent.status, opener.opened) == (None, "http_error", 404, 1)
    opener = Opener(*[http_error(503)] * 4)
    sent = send(opener)
    assert (sent.failure, sent.status, opener.opened) == ("http_error", 503, 4)


def test_an_answer_after_failures_is_returned_and_the_last_failure_is_named():
    opener = Opener(http_error(503), TimeoutError(), b"tile")
    sent = send(opener)
    assert (sent.body, sent.status, opener.opened) == (b"tile", 200, 3)
    sent = send(Opener(http_error(503), urllib.error.URLError(ConnectionRefusedError())), retries=1)
    assert (sent.failure, sent.stopped) == ("unreachable", False)


@pytest.mark.parametrize("answer, failure", [(TimeoutError(), "timeout"), (ConnectionRefusedError(), "unreachable")])
def test_a_service_marked_unreachable_is_not_asked_again(answer, failure):
    unreachable = threading.Event()
    opener = Opener(answer, answer)
    sent = send(opener, unreachable, retries=1)
    assert (sent.failure, sent.stopped, opener.opened) == (failure, False, 2)
    unreachable.set()
    sent = send(opener, unreachable)
    assert (sent.body, sent.stopped, opener.opened) == (None, True, 2)
