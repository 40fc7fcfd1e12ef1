"""The config files state each value once: what several options share is composed, not copied."""

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
