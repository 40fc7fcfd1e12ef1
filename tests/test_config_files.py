"""The config files state each value and each defaults entry once: what several options or
commands share is composed, not copied."""

from __future__ import annotations

import collections
from pathlib import Path

import yaml

CONF = Path(__file__).resolve().parents[1] / "conf"

# Alternatives that happen to choose the same value (two options of one group, or the commands'
# own settings of a key that means something else in each), not one value copied.
ALTERNATIVES = {
    ("trainer.max_epochs", "1"): {"debug/fast.yaml", "debug/profiler.yaml"},
    ("data.num_workers", "0"): {"debug/fast.yaml", "debug/overfit.yaml"},
    ("aspect", "1"): {"img/osm.yaml", "img/sat.yaml"},
    ("devices", "1"): {"trainer/cpu.yaml", "trainer/gpu.yaml"},
    ("ckpt_path", "None"): {"train.yaml", "eval.yaml", "shared/search.yaml"},
    # tiles shown, and candidates re-ranked: two settings that happen to agree
    ("top_k", "5"): {"shared/search.yaml", "reranker/lmm.yaml"},
    # one device per job: the local submitit preset's, and the reproduce sweep's
    ("trainer.devices", "1"): {"cluster/local.yaml", "experiment/reproduce.yaml"},
}


def leaves(node, prefix=""):
    if isinstance(node, dict):
        for key, value in node.items():
            if key != "defaults":
                yield from leaves(value, f"{prefix}{key}.")
    else:
        yield prefix[:-1], repr(node)


def repeated_values(conf: Path) -> dict[tuple[str, str], set[str]]:
    """``(key, value) -> files`` for every leaf that two or more config files state alike."""
    where = collections.defaultdict(set)
    for path in sorted(conf.rglob("*.yaml")):
        for key, value in leaves(yaml.safe_load(path.read_text()) or {}):
            if key.rsplit(".", 1)[-1] != "name":  # each option's own label
                where[(key, value)].add(str(path.relative_to(conf)))
    return {leaf: files for leaf, files in where.items() if len(files) > 1}


def test_no_value_is_stated_in_two_config_files():
    repeated = {leaf: files for leaf, files in repeated_values(CONF).items() if ALTERNATIVES.get(leaf) != files}
    assert not repeated, f"values stated in several files (compose them from conf/shared/): {repeated}"


def test_a_copied_value_is_found(tmp_path):
    for name in ("a", "b"):
        (tmp_path / f"{name}.yaml").write_text("optimizer:\n  lr: 0.1\nname: x\n")
    assert repeated_values(tmp_path) == {("optimizer.lr", "0.1"): {"a.yaml", "b.yaml"}}


# Defaults entries that two files state alike on purpose, with the reason.
REPEATED_DEFAULTS = {
    # each stack's last entry (pack's own, and the model commands'), so that its values win
    "debug: null": {"pack.yaml", "shared/stack.yaml"},
}


def defaults_entries(path: Path) -> list[str]:
    """The entries of a config file's defaults list, as ``group: option`` or ``config``, without
    ``override`` and the leading ``/``. Left out: ``_self_``, and the shared configs of
    ``conf/shared/``, which files compose precisely so that they do not copy them."""
    entries = []
    for entry in (yaml.safe_load(path.read_text()) or {}).get("defaults", []):
        if isinstance(entry, dict):
            for group, option in entry.items():
                entries.append(f"{group.removeprefix('override ').lstrip('/')}: {'null' if option is None else option}")
        elif entry != "_self_" and not str(entry).lstrip("/").startswith("shared/"):
            entries.append(str(entry).lstrip("/"))
    return entries


def repeated_defaults(conf: Path) -> dict[str, set[str]]:
    """``entry -> files`` for every defaults entry stated in two or more files, unless the files
    are options of one group (those may all make the same choice)."""
    where = collections.defaultdict(set)
    for path in sorted(conf.rglob("*.yaml")):
        for entry in defaults_entries(path):
            where[entry].add(str(path.relative_to(conf)))
    return {entry: files for entry, files in where.items() if len(files) > 1 and not options_of_one_group(files)}


def options_of_one_group(files: set[str]) -> bool:
    folders = {Path(file).parent for file in files}
    return len(folders) == 1 and folders != {Path(".")}


def test_no_defaults_entry_is_stated_in_two_config_files():
    repeated = {
        entry: files for entry, files in repeated_defaults(CONF).items() if REPEATED_DEFAULTS.get(entry) != files
    }
    assert not repeated, f"defaults entries stated in several files (extend conf/shared/stack.yaml): {repeated}"


def test_a_copied_defaults_entry_is_found(tmp_path):
    (tmp_path / "group").mkdir()
    for name in ("train", "eval"):
        (tmp_path / f"{name}.yaml").write_text("defaults:\n  - _self_\n  - /paths: default\n  - logger: none\n")
    for option in ("a", "b"):  # options of one group composing the same file: not a copy
        (tmp_path / "group" / f"{option}.yaml").write_text("defaults:\n  - /shared/base@_here_\n")
    (tmp_path / "stack.yaml").write_text("defaults:\n  - override /logger: wandb\n")
    assert repeated_defaults(tmp_path) == {
        "paths: default": {"train.yaml", "eval.yaml"},
        "logger: none": {"train.yaml", "eval.yaml"},
    }
