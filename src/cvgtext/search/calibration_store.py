"""Fitted calibrations kept under ``paths.cache_dir`` beside the gallery indexes, with what they
were fitted for.

A calibration (:mod:`cvgtext.retrieval.calibration`) holds for one model and one kind of
gallery: the weights, city, image type and texts, the gallery it ranks (a split's tiles, or the
whole city) and the protocol, and the validation queries it was fitted on. The key records all
of them (the weights through the gallery index's key, which holds them); a stored calibration
whose key differs is never used: it is fitted again and replaced, and the log says what changed.
The file is JSON, written atomically.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cvgtext.retrieval.calibration import Calibration
from cvgtext.utils.atomic import atomic_write
from cvgtext.utils.errors import OutputError
from cvgtext.utils.fingerprint import changed_parts, digest

log = logging.getLogger(__name__)
# Fewer validation queries than this fit a temperature too loosely to trust its probabilities.
FEW_QUERIES = 50

CALIBRATION_FORMAT = 1  # bump when the fit or the stored layout changes


def validation_digest(pairs: Sequence[Any]) -> str:
    """A digest of the validation queries: each pair's file name and caption, in order."""
    return digest([[pair.name, pair.caption] for pair in pairs])


def calibration_key(gallery_key: dict[str, Any], protocol: str, validation: str, **extra: Any) -> dict[str, Any]:
    """What a calibration was fitted for: the gallery it ranks (its index key, which holds the
    weights, city, image type, texts, split, preprocessing and tiles), the protocol (``full`` or
    ``nearest100``), and the validation queries (:func:`validation_digest`) it was fitted on."""
    key = {
        "format": CALIBRATION_FORMAT,
        "fitted_on": "val",
        "gallery": gallery_key,
        "protocol": protocol,
        "validation": validation,
        **extra,
    }
    return json.loads(json.dumps(key, default=str))  # as it reads back from the file (tuples become lists)


def calibration_path(cache_dir: str | Path, key: dict[str, Any]) -> Path:
    """One file per city, image type, texts, gallery split, protocol, weights and preprocessing."""
    gallery = key["gallery"]
    lasting = {part: gallery.get(part) for part in ("format", "weights", "preprocess", "decode")}
    name = digest({"format": key["format"], "protocol": key["protocol"], "gallery": lasting})[:16]
    stem = f"{gallery['city']}-{gallery['img']}-{gallery['text']}-{gallery['split']}-{key['protocol']}-{name}"
    return Path(cache_dir) / "calibration" / f"{stem}.json"


def read_calibration(cache_dir: str | Path | None, key: dict[str, Any]) -> Calibration | None:
    """The stored calibration fitted for ``key``, or None (saying why it is fitted again)."""
    if cache_dir is None:
        return None
    path = calibration_path(cache_dir, key)
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        log.info("fitting the calibration %s on the validation split (none stored)", path)
        return None
    except (OSError, ValueError) as error:
        log.warning("the calibration %s cannot be read (%s); fitting it again", path, error)
        return None
    if not isinstance(stored, dict) or stored.get("key") != key:
        changed = changed_parts(stored.get("key") or {}, key) if isinstance(stored, dict) else ["all"]
        if "gallery" in changed:
            changed = [f"gallery {part}" for part in changed_parts(stored["key"]["gallery"], key["gallery"])] + [
                part for part in changed if part != "gallery"
            ]
        log.info("fitting the calibration %s again (changed: %s)", path, ", ".join(changed))
        return None
    try:
        calibration = Calibration(
            temperature=float(stored["temperature"]),
            queries=int(stored["queries"]),
            split=str(stored["split"]),
            nll=float(stored["nll"]),
        )
    except (KeyError, TypeError, ValueError) as error:
        log.warning("the calibration %s is incomplete (%s); fitting it again", path, error)
        return None
    if calibration.split != "val" or not calibration.temperature > 0:
        log.warning("the calibration %s was not fitted on the validation split; fitting it again", path)
        return None
    log.info("reusing the calibration %s (temperature %.4g)", path, calibration.temperature)
    return calibration


def store_calibration(cache_dir: str | Path | None, key: dict[str, Any], calibration: Calibration) -> Path | None:
    """Write ``calibration`` with its key; a folder that cannot be written costs a warning only."""
    if cache_dir is None:
        return None
    path = calibration_path(cache_dir, key)
    content = {
        "key": key,
        "temperature": calibration.temperature,
        "queries": calibration.queries,
        "split": calibration.split,
        "nll": calibration.nll,
    }
    try:
        with atomic_write(path) as stream:
            json.dump(content, stream, indent=1, default=str)
            stream.write("\n")
    except OutputError as error:
        log.warning("The calibration was not stored (%s); the next run fits it again", error)
        return None
    return path


def load_or_fit(
    cache_dir: str | Path | None, key: dict[str, Any], fit: Callable[[], Calibration]
) -> tuple[Calibration, bool]:
    """``(calibration, reused)``: the stored one for ``key``, or ``fit()`` stored for next time.
    Either way, a calibration fitted on fewer than :data:`FEW_QUERIES` validation queries is said
    to be rough."""
    stored = read_calibration(cache_dir, key)
    if stored is not None:
        warn_if_few(stored)
        return stored, True
    calibration = fit()
    if calibration.split != "val":
        raise ValueError(f"a calibration fitted on the {calibration.split} split is refused; fit it on val")
    store_calibration(cache_dir, key, calibration)
    log.info(
        "calibration fitted on %d validation queries: temperature %.4g (NLL %.3f)",
        calibration.queries,
        calibration.temperature,
        calibration.nll,
    )
    warn_if_few(calibration)
    return calibration, False


def warn_if_few(calibration: Calibration) -> None:
    if calibration.queries < FEW_QUERIES:
        log.warning(
            "the calibration was fitted on %d validation queries only (fewer than %d): its confidence "
            "and 80 %% areas are rough; hold out more captions for validation (data.val_fraction)",
            calibration.queries,
            FEW_QUERIES,
        )
