"""Objects of config groups that map names to ``_target_`` configs."""

from __future__ import annotations

from omegaconf import OmegaConf

from cvgtext.utils.instantiate import instantiate_group


def test_every_target_of_a_group_is_built_and_the_rest_left_out():
    group = OmegaConf.create(
        {
            "first": {"_target_": "builtins.dict", "a": 1},
            "comment_only": {"note": "no target"},
            "second": {"_target_": "builtins.list"},
        }
    )
    assert instantiate_group(group) == [{"a": 1}, []]
    assert instantiate_group(None) == [] and instantiate_group(OmegaConf.create({})) == []
