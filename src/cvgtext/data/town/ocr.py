"""Scene text of a street view, read offline on the CPU with RapidOCR (PaddleOCR's models in ONNX,
shipped inside the ``rapidocr`` wheel: nothing is downloaded).

The paper leaves out text on vehicles and other moving objects. With a segmentation of the
scene (``segmentation.py``) the text inside a vehicle's area is dropped; without one, text that
looks like a number plate (a short run of capitals and digits, both present) is.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from cvgtext.utils.errors import ConfigError

# Number plates: 4 to 10 capitals, digits, spaces or dashes, at least two letters and two digits.
_PLATE = re.compile(r"^(?=(?:.*[A-Z]){2})(?=(?:.*\d){2})[A-Z0-9 \-]{4,10}$")
Box = tuple[float, float, float, float]  # left, top, right, bottom in pixels


@dataclass(frozen=True)
class SceneText:
    """One line of text found in the image."""

    text: str
    score: float  # the recogniser's confidence, 0..1
    box: Box


def inside(box: Box, areas: Sequence[Box], share: float = 0.5) -> bool:
    """Whether at least ``share`` of ``box`` lies inside one of ``areas``."""
    left, top, right, bottom = box
    size = max(right - left, 1e-9) * max(bottom - top, 1e-9)
    for a_left, a_top, a_right, a_bottom in areas:
        width = min(right, a_right) - max(left, a_left)
        height = min(bottom, a_bottom) - max(top, a_top)
        if width > 0 and height > 0 and width * height >= share * size:
            return True
    return False


def reading_order(lines: Sequence[SceneText]) -> list[SceneText]:
    """Lines in rows (a line whose middle lies above the row's lowest bottom joins the row), rows
    top to bottom, each left to right."""
    rows: list[list[SceneText]] = []
    for line in sorted(lines, key=lambda t: (t.box[1] + t.box[3]) / 2):
        if rows and (line.box[1] + line.box[3]) / 2 <= max(t.box[3] for t in rows[-1]):
            rows[-1].append(line)
        else:
            rows.append([line])
    return [line for row in rows for line in sorted(row, key=lambda t: t.box[0])]


def looks_like_plate(text: str) -> bool:
    return bool(_PLATE.match(text.strip()))


class SceneTextReader:
    """Reads the text of a street view: ``read(image, vehicles) -> [SceneText]``.

    Lines below ``min_score`` or shorter than ``min_chars`` characters are dropped, and so is
    text on vehicles (see the module's docstring). ``threads`` bounds ONNX Runtime's threads.
    The detector sees the image with its shorter side scaled to 736 pixels (RapidOCR's
    default: about a second a panorama on one core), or with ``det_max_side`` its longer side
    scaled to that (faster; small text is lost).
    """

    def __init__(
        self,
        min_score: float = 0.6,
        min_chars: int = 2,
        threads: int = 1,
        drop_plates: bool = True,
        det_max_side: int | None = None,
    ):
        if not 0 <= min_score <= 1:
            raise ConfigError(f"ocr.min_score={min_score} must lie in [0, 1]")
        if det_max_side is not None and det_max_side < 32:
            raise ConfigError(f"ocr.det_max_side={det_max_side} must be at least 32 pixels (or null)")
        self.min_score, self.min_chars, self.threads, self.drop_plates = min_score, min_chars, threads, drop_plates
        self.det_max_side = det_max_side
        self._engine = None
        self._lock = threading.Lock()

    def engine(self):
        if self._engine is None:
            try:
                from rapidocr import RapidOCR
            except ImportError:
                raise ConfigError(
                    "OCR of street views needs rapidocr: pip install 'cvgtext[town]' (or ocr.enabled=false)"
                ) from None
            params = {
                "Global.log_level": "error",  # not a warning for each image without text
                "EngineConfig.onnxruntime.intra_op_num_threads": self.threads,
                "EngineConfig.onnxruntime.inter_op_num_threads": 1,
            }
            if self.det_max_side:
                params.update({"Det.limit_type": "max", "Det.limit_side_len": self.det_max_side})
            self._engine = RapidOCR(params=params)
        return self._engine

    def read(self, image: Image.Image, vehicles: Sequence[Box] = ()) -> list[SceneText]:
        """The image's text lines, top to bottom then left to right."""
        with self._lock:  # one engine, one image at a time
            result = self.engine()(image.convert("RGB"))
        found = []
        for text, score, corners in zip(
            result.txts or (), result.scores or (), result.boxes if result.boxes is not None else ()
        ):
            corners = np.asarray(corners, dtype=float)
            box = (
                float(corners[:, 0].min()),
                float(corners[:, 1].min()),
                float(corners[:, 0].max()),
                float(corners[:, 1].max()),
            )
            text = " ".join(str(text).split())
            if score < self.min_score or len(text.replace(" ", "")) < self.min_chars:
                continue
            if inside(box, vehicles) or (self.drop_plates and not vehicles and looks_like_plate(text)):
                continue
            found.append(SceneText(text, round(float(score), 4), tuple(round(v, 1) for v in box)))
        return reading_order(found)

    def describe(self) -> dict:
        return {
            "engine": "rapidocr",
            "min_score": self.min_score,
            "min_chars": self.min_chars,
            "drop_plates": self.drop_plates,
        }
