"""Every command's composed configuration is what it was before the commands shared one defaults
stack and the modules moved into rooms, except where that change meant it to differ.

``fixtures/composed_before.json.gz`` holds each command's configuration at commit 6aa3847 for
every option of its groups alone and the round-robin combinations of the composition test,
resolved with fixed paths. Intended differences: ``_target_`` paths follow the modules to their
rooms, eval, locate and app no longer compose the optimizer (``optim``, ``model.optimizer``,
``model.scheduler``), which belongs to training, and the settings of :data:`ADDED` are new.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from helpers.runs import CONF_DIR

BEFORE = json.loads(gzip.decompress((Path(__file__).parent / "fixtures" / "composed_before.json.gz").read_bytes()))
FIXED = [
    "paths.root_dir=/ROOT",
    "paths.output_dir=/ROOT/run",
    "paths.data_dir=/ROOT/data",
    "paths.cache_dir=/ROOT/cache",
    "run_id=fixed",
]
# Where the classes of the configs moved (module paths before -> after).
MOVED = {
    "cvgtext.module.": "cvgtext.model.module.",
    "cvgtext.callbacks.": "cvgtext.training.callbacks.",
    "cvgtext.loggers.": "cvgtext.utils.loggers.",
    "cvgtext.checkpoints.": "cvgtext.utils.checkpoints.",
}
TRAINING_ONLY = (("optim",), ("model", "optimizer"), ("model", "scheduler"))
# Settings added since, on purpose, and the commands that compose them: the reports' bootstrap
# intervals and the calibrated confidence (in the shared stack), further descriptions of a place
# (locate), the page's queues and its neighbourhood map (app).
ADDED = {
    "eval": ("train", "eval", "locate", "app"),
    "calibration": ("train", "eval", "locate", "app"),
    "also": ("locate",),
    "concurrency": ("app",),
    "neighbourhood_tile_m": ("app",),
}


def moved(node):
    """``node`` with every ``_target_`` path as the modules are named now."""
    if isinstance(node, dict):
        return {key: moved(value) for key, value in node.items()}
    if isinstance(node, list):
        return [moved(value) for value in node]
    if isinstance(node, str):
        for before, after in MOVED.items():
            if node.startswith(before):
                return after + node[len(before) :]
    return node


def without_training(config: dict) -> dict:
    for path in TRAINING_ONLY:
        node = config
        for key in path[:-1]:
            node = node.get(key, {})
        node.pop(path[-1], None)
    return config


def composed(command: str, overrides: list[str]) -> dict:
    """The resolved configuration of ``command`` (inside ``initialize_config_dir`` of ``conf/``)."""
    extra = ["+sweep_id=fixed"] if any(o.startswith("cluster=") and o != "cluster=null" for o in overrides) else []
    return OmegaConf.to_container(compose(command, overrides=[*FIXED, *overrides, *extra]), resolve=True)


@pytest.fixture(autouse=True)
def conf():
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        yield


def differences(before, after, path=""):
    """``key: before -> after`` for every leaf that differs."""
    if isinstance(before, dict) and isinstance(after, dict):
        return [
            line
            for key in sorted(set(before) | set(after), key=str)
            for line in differences(before.get(key, "<absent>"), after.get(key, "<absent>"), f"{path}.{key}")
        ]
    return [] if before == after else [f"{path[1:]}: {before!r} -> {after!r}"]


@pytest.mark.slow  # about 260 compositions
@pytest.mark.parametrize("command", ["train", "eval", "locate", "app", "pack"])
def test_every_composition_is_as_before_where_no_change_was_meant(command):
    cases = {key: value for key, value in BEFORE.items() if key.split()[0] == command}
    assert len(cases) > 10, f"the fixture has {len(cases)} compositions of {command}"
    for case, before in cases.items():
        _, *overrides = case.split()
        expected, now = moved(before), composed(command, overrides)
        for key, commands in ADDED.items():
            if command in commands:
                assert key in now, f"{case}: {key} is not composed"
                del now[key]
        if command != "train":
            expected, now = without_training(expected), without_training(now)
        assert not differences(expected, now), f"{case}: " + "; ".join(differences(expected, now))


def test_the_commands_that_search_or_evaluate_compose_no_optimizer():
    for command in ("eval", "locate", "app"):
        config = composed(command, ["backbone=vit_b16"])
        assert "optim" not in config and "optimizer" not in config["model"], command
    trained = composed("train", ["backbone=vit_b16"])
    assert trained["model"]["optimizer"] == trained["optim"]["optimizer"]
    assert trained["optim"]["optimizer"]["_target_"] == "torch.optim.Adam"  # the backbone's recipe, as before


def test_a_changed_value_is_found():
    before = {"model": {"_target_": "cvgtext.module.CrossViewRetrieval", "nearest": 100}}
    after = {"model": {"_target_": "cvgtext.model.module.CrossViewRetrieval", "nearest": None}}
    assert differences(moved(before), after) == ["model.nearest: 100 -> None"]
