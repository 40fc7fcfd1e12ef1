"""An optional summary of what a street view shows, by direction, for the producer prompt.

The paper gives its producer an open-world segmentation of the scene. Here any semantic
segmentation model that ``transformers`` loads with ``AutoModelForSemanticSegmentation`` serves
(``segmentation.model``: a local folder or a Hugging Face name; e.g. a SegFormer trained on
ADE20k, whose 150 classes cover buildings, roads, signboards, trees, cars). Its label map becomes
a line such as ``building 31 % (left, ahead); tree 12 % (right); car 3 % (behind)`` and the
boxes of vehicles, inside which OCR text is dropped. Without a model the prompt says the objects
are "not available", the producer describes from the image alone, and text on vehicles is
recognised by its look only (``ocr.py``).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from PIL import Image

from cvgtext.data.town.ocr import Box
from cvgtext.utils.errors import ConfigError

VEHICLES = {"car", "truck", "bus", "van", "train", "motorcycle", "motorbike", "bicycle", "minibike", "vehicle"}
# Column sectors (fractions of the width): a panorama's middle is ahead; a photo is left to right.
SECTORS = {
    "panorama": [("behind", 0.0, 0.125), ("left", 0.125, 0.375), ("ahead", 0.375, 0.625), ("right", 0.625, 0.875),
                 ("behind", 0.875, 1.0)],
    "single": [("left", 0.0, 1 / 3), ("ahead", 1 / 3, 2 / 3), ("right", 2 / 3, 1.0)],
}  # fmt: skip


def vehicle_boxes(labels: np.ndarray, vehicle_ids: set[int]) -> list[Box]:
    """Bounding boxes ``(left, top, right, bottom)`` of each connected area of vehicle pixels."""
    from scipy import ndimage

    areas, _ = ndimage.label(np.isin(labels, list(vehicle_ids)))
    return [
        (float(s[1].start), float(s[0].start), float(s[1].stop), float(s[0].stop)) for s in ndimage.find_objects(areas)
    ]


def summarise_labels(labels: np.ndarray, names: Mapping[int, str], view: str, min_share: float) -> str:
    """``class share % (sectors)`` for each class covering at least ``min_share`` of the image,
    largest first; a sector is named where the class covers ``min_share`` of it."""
    width = labels.shape[1]
    ids, counts = np.unique(labels, return_counts=True)
    parts = []
    for label, count in sorted(zip(ids.tolist(), counts.tolist()), key=lambda pair: -pair[1]):
        share = count / labels.size
        if share < min_share:
            continue
        sectors = []
        for sector, start, stop in SECTORS[view]:
            columns = labels[:, round(start * width) : round(stop * width)]
            if columns.size and (columns == label).mean() >= min_share and sector not in sectors:
                sectors.append(sector)
        parts.append(f"{names.get(label, str(label))} {round(100 * share)} % ({', '.join(sectors)})")
    return "; ".join(parts)


class SceneSegmenter:
    """``summarise(image, view) -> (vehicle boxes, summary)`` with a ``transformers`` model."""

    def __init__(self, model: str, min_share: float = 0.02):
        if not 0 < min_share < 1:
            raise ConfigError(f"segmentation.min_share={min_share} must lie strictly between 0 and 1")
        try:
            from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation
        except ImportError:
            raise ConfigError("segmentation.model needs transformers: pip install transformers") from None
        try:
            self.processor = AutoImageProcessor.from_pretrained(model)
            self.model = AutoModelForSemanticSegmentation.from_pretrained(model).eval()
        except (OSError, ValueError) as error:
            raise ConfigError(
                f"segmentation.model={model!r} cannot be loaded as a segmentation model: {error}"
            ) from None
        self.name, self.min_share = model, min_share
        self.names = {int(k): str(v).split(";")[0].strip().lower() for k, v in self.model.config.id2label.items()}
        self.vehicle_ids = {k for k, v in self.names.items() if v in VEHICLES}

    def labels(self, image: Image.Image) -> np.ndarray:
        """``[height, width]`` class ids of the image's pixels."""
        import torch

        inputs = self.processor(images=image.convert("RGB"), return_tensors="pt")
        with torch.no_grad():
            outputs = self.model(**inputs)
        (labels,) = self.processor.post_process_semantic_segmentation(outputs, target_sizes=[image.size[::-1]])
        return labels.numpy()

    def summarise(self, image: Image.Image, view: str) -> tuple[list[Box], str]:
        labels = self.labels(image)
        return vehicle_boxes(labels, self.vehicle_ids), summarise_labels(labels, self.names, view, self.min_share)

    def describe(self) -> dict:
        return {"model": self.name, "min_share": self.min_share}
