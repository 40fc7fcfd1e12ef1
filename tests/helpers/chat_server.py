"""A fake OpenAI-compatible chat-completions server on 127.0.0.1, for the re-ranker's tests.

Behaviours: ``oracle`` (knows each description's true tile: confidence 1 for it, 0 for the
others; in pairs, picks it), ``random`` (confidences and choices drawn from the seed and the
request), ``garbage`` (prose,
no JSON), ``out_of_range`` (confidence 7), ``slow`` (answers after ``delay_s``), ``error``
(HTTP 500). It records each request's body and headers.
"""

from __future__ import annotations

import json
import random
import re
import time

from helpers.servers import LocalServer, QuietHandler, send_chat_reply


class ChatServer(LocalServer):
    def __init__(self, behaviour: str, truth: dict[str, str] | None = None, delay_s: float = 0.0, seed: int = 0):
        self.behaviour, self.truth, self.delay_s = behaviour, truth or {}, delay_s
        self.seed = seed
        server = self

        class Handler(QuietHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.record({"path": self.path, "body": body, "headers": dict(self.headers)})
                if server.behaviour == "slow":
                    time.sleep(server.delay_s)
                if server.behaviour == "error":
                    self.send_response(500)
                    self.end_headers()
                    return
                send_chat_reply(self, server.answer(body))

        super().__init__(Handler)

    @property
    def url(self) -> str:
        return f"{self.root}/v1"

    def answer(self, body: dict) -> str:
        content = body["messages"][0]["content"]
        text = next(part["text"] for part in content if part["type"] == "text")
        images = [part["image_url"]["url"] for part in content if part["type"] == "image_url"]
        pairwise = "Image A and image B" in text
        if self.behaviour == "garbage":
            return "I think it is probably the second one, it has trees."
        if self.behaviour == "out_of_range":
            return '{"reason": "sure", "confidence": 7}'
        if self.behaviour == "random":  # drawn from the request itself: the same whatever the arrival order
            draw = random.Random(f"{self.seed}:{json.dumps(body, sort_keys=True)}")
            if pairwise:
                return json.dumps({"reason": "a coin", "better": draw.choice("AB")})
            return json.dumps({"reason": "a die", "confidence": round(draw.random(), 3)})
        match = re.search(r'"(.*)"', text)
        true_image = self.truth.get(match.group(1) if match else "")
        if pairwise:
            half = len(images) // 2
            better = "B" if true_image in images[half:] else "A"
            return f'```json\n{{"reason": "image {better} shows the place", "better": "{better}"}}\n```'
        correct = true_image == images[0]
        return json.dumps(
            {"reason": "the place described" if correct else "another place", "confidence": 1.0 if correct else 0.0}
        )
