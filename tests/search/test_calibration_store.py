"""Stored calibrations: reused for what they were fitted for, fitted again when that changes,
never one fitted on the test split."""

from __future__ import annotations

import json
import logging

import pytest

from cvgtext.retrieval.calibration import Calibration
from cvgtext.search.calibration_store import (
    calibration_key,
    calibration_path,
    load_or_fit,
    read_calibration,
    validation_digest,
)


def gallery_key(**changes):
    key = {
        "format": 1,
        "weights": {"checkpoint_sha256": "aa", "model_name": "cvg-tiny"},
        "city": "Testville",
        "img": "sat",
        "text": "mixed",
        "split": "all",
        "preprocess": "Compose(...)",
        "tiles": "t1",
        "count": 36,
    }
    key.update(changes)
    return key


class Fits:
    def __init__(self, split="val", queries=100):
        self.count, self.split, self.queries = 0, split, queries

    def __call__(self):
        self.count += 1
        return Calibration(temperature=0.05 * self.count, queries=self.queries, split=self.split, nll=1.5)


def test_a_calibration_is_reused_for_the_same_key_and_fitted_again_for_another(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    key = calibration_key(gallery_key(), "full", "v1")
    fits = Fits()
    first, reused = load_or_fit(tmp_path, key, fits)
    assert (first.temperature, reused, fits.count) == (0.05, False, 1)
    again, reused = load_or_fit(tmp_path, calibration_key(gallery_key(), "full", "v1"), fits)
    assert again == first and reused and fits.count == 1 and "reusing the calibration" in caplog.text
    for changed, words in (
        (calibration_key(gallery_key(tiles="t2"), "full", "v1"), "changed: gallery tiles"),
        (calibration_key(gallery_key(tiles="t2"), "full", "v2"), "changed: validation)"),
    ):
        caplog.clear()
        refit, reused = load_or_fit(tmp_path, changed, fits)
        assert not reused and words in caplog.text
    # other weights, protocol or image type: a file of their own, the first one kept
    other = calibration_key(gallery_key(weights={"checkpoint_sha256": "bb"}), "full", "v1")
    assert calibration_path(tmp_path, other) != calibration_path(tmp_path, key)
    assert calibration_path(tmp_path, calibration_key(gallery_key(), "nearest100", "v1")) != calibration_path(
        tmp_path, key
    )
    stored = json.loads(calibration_path(tmp_path, key).read_text())
    assert stored["key"]["gallery"]["weights"]["checkpoint_sha256"] == "aa" and stored["split"] == "val"


def test_a_damaged_or_test_fitted_file_is_never_used(tmp_path, caplog):
    key = calibration_key(gallery_key(), "full", "v1")
    path = calibration_path(tmp_path, key)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert read_calibration(tmp_path, key) is None
    path.write_text(json.dumps({"key": key, "temperature": 0.1, "queries": 5, "split": "test", "nll": 1.0}))
    assert read_calibration(tmp_path, key) is None and "not fitted on the validation split" in caplog.text
    with pytest.raises(ValueError, match="fitted on the test split is refused"):
        load_or_fit(tmp_path, key, Fits(split="test"))
    assert load_or_fit(None, key, Fits())[1] is False  # no cache folder: fitted, nothing stored


def test_the_validation_digest_follows_names_and_captions():
    from types import SimpleNamespace

    pairs = [SimpleNamespace(name="a.jpg", caption="a red roof"), SimpleNamespace(name="b.jpg", caption="a park")]
    assert validation_digest(pairs) == validation_digest(list(pairs))
    assert validation_digest(pairs) != validation_digest(pairs[::-1])
    assert validation_digest(pairs) != validation_digest([pairs[0], SimpleNamespace(name="b.jpg", caption="a lake")])


@pytest.mark.parametrize("queries, rough", [(3, True), (49, True), (50, False), (400, False)])
def test_a_calibration_fitted_on_few_validation_queries_is_said_to_be_rough(tmp_path, caplog, queries, rough):
    key = calibration_key(gallery_key(), "full", "v1")
    for _ in range(2):  # fitted, then reused: said both times
        caplog.clear()
        load_or_fit(tmp_path, key, Fits(queries=queries))
        said = [r for r in caplog.records if r.levelno == logging.WARNING and "validation queries only" in r.message]
        assert bool(said) == rough, caplog.text
        assert (
            not said or f"fitted on {queries} validation" in said[0].message and "data.val_fraction" in said[0].message
        )
