"""Decoding and resizing images where the model runs (``data.decode=device``).

With a GPU the model can take images faster than CPU workers decode 512 px JPEGs and resize
them. With ``data.decode=device`` the loader's workers only read each image file's bytes; once
the batch is on the device, its JPEGs are decoded there in one call
(``torchvision.io.decode_jpeg(..., device=...)``, nvJPEG on a GPU) and the backbone's own
preprocessing (resize, crop, scaling, normalisation) runs on the decoded ``uint8`` tensors,
images of one size together. Files that are not JPEGs, or that the device's decoder refuses
(CMYK JPEGs on nvJPEG), are decoded by PIL as ``load_image`` does and join the batch.

The tensors are close to, not bitwise, those of the CPU path: JPEG decoders may round
differently (nvJPEG against libjpeg-turbo) and torchvision's tensor resize is not PIL's
(both bicubic with antialiasing). ``tests/data/test_device_decode.py`` states the tolerance.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torchvision import transforms
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.functional import pil_to_tensor

from cvgtext.data.dataset import decode_image
from cvgtext.utils.errors import ConfigError, DataError

DECODES = ("cpu", "device")
JPEG_START = b"\xff\xd8\xff"


class DevicePreprocess:
    """The steps of a backbone's torchvision preprocessing, on batches of ``uint8`` image tensors.

    ``Resize`` and ``CenterCrop`` run as they are (torchvision runs them on tensors, rounding
    ``uint8`` results as PIL does); PIL's mode conversions are not needed (the decoder gives RGB);
    ``ToTensor`` becomes a division by 255; ``Normalize`` runs as it is. Any other step is refused
    when the data module is built, not at the first batch.
    """

    def __init__(self, preprocess: Callable):
        steps = preprocess.transforms if isinstance(preprocess, transforms.Compose) else [preprocess]
        self.steps = [tensor_step for tensor_step in map(_tensor_step, steps) if tensor_step is not None]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """``[N, 3, H, W]`` uint8 -> the model's input ``[N, 3, h, w]`` float32."""
        for step in self.steps:
            images = step(images)
        return images


def _tensor_step(step: Any) -> Callable | None:
    if isinstance(step, (transforms.Resize, transforms.CenterCrop, transforms.Normalize)):
        return step
    if isinstance(step, transforms.ToTensor):  # open_clip's MaybeToTensor too
        return lambda images: images.float().div_(255)
    name = type(step).__name__
    if name == "MaybeConvertMode" or (isinstance(step, transforms.Lambda) and step.lambd.__name__ == "_rgb"):
        return None  # a PIL mode conversion: the decoder already gives RGB
    raise ConfigError(
        f"data.decode=device cannot run the backbone's preprocessing step {name} on tensors; use data.decode=cpu"
    )


def decode_on_device(
    data: Sequence[bytes],
    sources: Sequence[str],
    preprocess: DevicePreprocess,
    device: torch.device,
) -> tuple[torch.Tensor | None, list[int], list[str]]:
    """Decode and preprocess a batch of image files' bytes on ``device``.

    Returns the model's input for the images that could be decoded (None if none), their
    positions in the batch, and a message naming each file that could not be (``sources``:
    how each file is named in messages).
    """
    decoded: list[torch.Tensor | None] = [None] * len(data)
    failed: dict[int, str] = {}
    jpegs = [i for i, item in enumerate(data) if item[:3] == JPEG_START]
    if jpegs:
        try:
            for i, image in zip(jpegs, _decode_jpegs([data[i] for i in jpegs], device)):
                decoded[i] = image
        except RuntimeError:  # one bad file fails the whole call: decode them one by one
            for i in jpegs:
                try:
                    decoded[i] = _decode_jpegs([data[i]], device)[0]
                except RuntimeError:
                    pass  # PIL below names what is wrong, or decodes what this decoder cannot
    for i, item in enumerate(data):
        if decoded[i] is None:
            try:
                decoded[i] = pil_to_tensor(decode_image(io.BytesIO(item), sources[i])).to(device)
            except DataError as error:
                failed[i] = str(error)
    kept = [i for i in range(len(data)) if i not in failed]
    return _preprocessed([decoded[i] for i in kept], preprocess), kept, list(failed.values())


def _decode_jpegs(data: Sequence[bytes], device: torch.device) -> list[torch.Tensor]:
    encoded = [torch.frombuffer(bytearray(item), dtype=torch.uint8) for item in data]
    return decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)


def _preprocessed(images: list[torch.Tensor], preprocess: DevicePreprocess) -> torch.Tensor | None:
    """Images of one size go through the preprocessing together; the batch keeps its order."""
    if not images:
        return None
    sizes: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        sizes.setdefault(tuple(image.shape), []).append(i)
    out = None
    for positions in sizes.values():
        done = preprocess(torch.stack([images[i] for i in positions]))
        if out is None:
            out = done.new_empty((len(images), *done.shape[1:]))
        out[positions] = done
    return out


def check_decode(decode: str) -> str:
    if decode not in DECODES:
        raise ConfigError(f"data.decode={decode!r} is not one of {', '.join(DECODES)}")
    return decode
