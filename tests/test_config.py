"""Every option of every config group composes, and the values reach the right places."""

import pytest
from hydra.errors import ConfigCompositionException
from hydra.utils import get_object
from omegaconf import OmegaConf

from conftest import CONF_DIR, compose_config

GROUPS = ["city", "img", "text", "backbone", "optim", "strategy", "trainer", "logger", "callbacks", "debug", "experiment"]


def options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))


def targets(node) -> list[str]:
    """Every ``_target_`` of a config, nested ones included."""
    if isinstance(node, dict):
        return ([node["_target_"]] if "_target_" in node else []) + [t for v in node.values() for t in targets(v)]
    if isinstance(node, list):
        return [t for v in node for t in targets(v)]
    return []


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_of_every_group_composes_resolves_and_names_real_objects(tmp_path, group):
    assert options(group), f"conf/{group}/ has no options"
    composed = {}
    for option in options(group):
        cfg = OmegaConf.to_container(compose_config("train", [f"{group}={option}"], tmp_path), resolve=True)
        for target in targets(cfg):
            assert callable(get_object(target)), f"{group}={option}: _target_ {target} is not callable"
        composed[option] = OmegaConf.to_yaml(cfg)
    # An option that changes nothing is an empty file, or one whose package puts its keys elsewhere.
    same = [(a, b) for a in composed for b in composed if a < b and composed[a] == composed[b]]
    assert not same, f"conf/{group}: these options compose the same config: {same}"


def test_real_city_names_and_a_custom_city_name(tmp_path):
    cfg = compose_config("train", ["city=Brisbane", "city.name=SomeTown", "paths.data_dir=/data/st", "img=osm"], tmp_path)
    assert cfg.data.city == "SomeTown" and cfg.data.data_dir == "/data/st"
    assert cfg.data.image_folder == "reference/{version}-OSM" and cfg.city.synthetic is None


def test_text_versions(tmp_path):
    versions = {t: list(compose_config("train", [f"text={t}"], tmp_path).data.versions) for t in options("text")}
    assert versions == {"mixed": ["{city}", "{city}-photos"], "panorama": ["{city}"], "photos": ["{city}-photos"]}


def test_real_backbones_default_to_the_paper_recipe_unless_told_otherwise(tmp_path):
    tiny = compose_config("train", [], tmp_path)
    paper = compose_config("train", ["backbone=vit_l14_336"], tmp_path)
    chosen = compose_config("train", ["backbone=vit_b16", "optim=fast"], tmp_path)
    assert tiny.optim.optimizer._target_ == "torch.optim.AdamW"
    assert paper.optim.optimizer._target_ == "torch.optim.Adam" and paper.optim.optimizer.lr == 1e-5
    assert paper.backbone.model_name == "ViT-L-14-336" and paper.backbone.pretrained == "openai"
    assert chosen.optim.optimizer._target_ == "torch.optim.AdamW"


def test_strategy_goes_to_the_trainer(tmp_path):
    cfg = compose_config("train", ["strategy=ddp"], tmp_path)
    assert cfg.trainer.strategy._target_ == "lightning.pytorch.strategies.DDPStrategy"


@pytest.mark.parametrize("override", ["city=Paris", "img=lidar", "backbone=resnet9000", "text=poems"])
def test_unknown_choices_list_the_options(tmp_path, override):
    group, _ = override.split("=")
    with pytest.raises(ConfigCompositionException, match="Available options") as error:
        compose_config("train", [override], tmp_path)
    for option in options(group):
        assert option in str(error.value)
