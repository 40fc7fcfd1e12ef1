"""A fake multimodal chat server on 127.0.0.1 for the town's captioner: producer and inspector.

A producer request (one without "verdict" in its prompt) is answered with one sentence per
numbered step of the prompt, in the prompt's order (road, scene text, buildings, environment),
the scene text sentence quoting the OCR lines the prompt gives. An inspector request is
answered with a JSON verdict. What the server does can be chosen per street view through the
words painted on its signs (and so read by OCR and put in the prompt):

- ``GARBAGE``: the producer answers code, also to the follow-up (format filtering refuses it);
- ``SORRY``: the producer refuses once, then answers the follow-up properly;
- ``SLOW``: the producer answers after ``delay_s`` (beyond the client's timeout);
- ``REJECT``: the inspector rejects; ``REWRITE``: it asks for a rewrite, then accepts;
- ``NOJSON``: the inspector answers prose, also to the follow-up.

``oracle`` (a callable image -> caption) answers producers with the caption it gives for the
street view sent, and the inspector accepts: the benchmark's stand-in for a perfect model.
"""

from __future__ import annotations

import base64
import io
import json
import re
import time
from collections.abc import Callable

from PIL import Image

from helpers.servers import LocalServer, QuietHandler, send_chat_reply

STEP_SENTENCES = {
    "road": "The road runs from north to south with two lanes and a zebra crossing ahead.",
    "scene text": "Signs read {signs}.",
    "buildings": "Red brick buildings of three storeys line the left side, a white tower stands behind.",
    "environment": "Plane trees shade the pavement and a small park opens on the right.",
}


def _content(message: dict) -> tuple[str, list[str]]:
    content = message["content"]
    if isinstance(content, str):
        return content, []
    text = " ".join(part["text"] for part in content if part["type"] == "text")
    return text, [part["image_url"]["url"] for part in content if part["type"] == "image_url"]


def decode_data_url(url: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")


class TownChatServer(LocalServer):
    def __init__(self, delay_s: float = 0.0, oracle: Callable[[Image.Image], str] | None = None):
        self.delay_s, self.oracle = delay_s, oracle
        server = self

        class Handler(QuietHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.record(body)
                send_chat_reply(self, server.answer(body))

        super().__init__(Handler)

    @property
    def url(self) -> str:
        return f"{self.root}/v1"

    def answer(self, body: dict) -> str:
        first, images = _content(body["messages"][0])
        follow_up = len(body["messages"]) > 1
        if '"verdict"' in first:
            return self.inspect(first, body["messages"][-1], follow_up)
        if self.oracle is not None:
            return self.oracle(decode_data_url(images[0]))
        return self.produce(first, body["messages"], follow_up)

    def produce(self, prompt: str, messages: list[dict], follow_up: bool) -> str:
        if "SLOW" in prompt:
            time.sleep(self.delay_s)
        if "GARBAGE" in prompt:
            return '```json\n{"caption": null}\n```'
        if "SORRY" in prompt and not follow_up:
            return "I'm sorry, but I can't help with identifying locations."
        steps = re.findall(r"^\d+\. ([A-Za-z ]+?):", prompt, flags=re.MULTILINE)
        if not steps:  # a plain prompt
            return "A street with some buildings, a road and a few trees."
        signs = " and ".join(re.findall(r'"([^"]+)"', prompt.split("OCR", 1)[-1].split("\n", 1)[0])) or "nothing"
        sentences = [
            text.format(signs=signs) for step in steps for key, text in STEP_SENTENCES.items() if key in step.lower()
        ]
        if len(messages) > 1 and "reviewer" in _content(messages[-1])[0]:
            sentences.append("The crossing is twenty metres ahead of the camera.")
        return " ".join(sentences)

    def inspect(self, prompt: str, last: dict, follow_up: bool) -> str:
        if "NOJSON" in prompt:
            return "Looks fine to me overall."
        if "REJECT" in prompt:
            return json.dumps({"verdict": "reject", "reason": "the image shows no street"})
        if "REWRITE" in prompt and "twenty metres" not in prompt:
            return json.dumps({"verdict": "rewrite", "reason": "say how far the crossing is"})
        return json.dumps({"verdict": "accept", "reason": "accurate, complete and clear"})
