"""Every option of every config group composes, and the values reach the right places."""

import pytest
from hydra.errors import ConfigCompositionException
from hydra.utils import get_object
from omegaconf import OmegaConf

from helpers.runs import CONF_DIR, compose_config

CONFIGS = ("train", "eval", "locate", "build_city")


# Groups of conf/shared/stack.yaml that only some commands choose (the others leave them at null).
CHOSEN_BY = {
    "optim": {"train"},
    "callbacks": {"train"},
    "hparams_search": {"train"},
    "cluster": {"train"},
    "logger": {"train", "eval"},
    "reranker": {"eval", "locate", "app"},
}


def groups_of(config_name: str) -> list[str]:
    """The config groups ``conf/<config_name>.yaml`` chooses (its own and those of the stack it
    extends; Hydra's own and the shared ones aside), as Hydra reports its choices."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        choices = compose(config_name, overrides=["paths.root_dir=/"], return_hydra_config=True).hydra.runtime.choices
    return [
        group
        for group in choices
        if group != "hydra"
        and not group.startswith(("hydra/", "shared/"))
        and config_name in CHOSEN_BY.get(group, {config_name})
    ]


def options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))


def targets(node) -> list[str]:
    """Every ``_target_`` of a config, nested ones included."""
    if isinstance(node, dict):
        return ([node["_target_"]] if "_target_" in node else []) + [t for v in node.values() for t in targets(v)]
    if isinstance(node, list):
        return [t for v in node for t in targets(v)]
    return []


def test_every_group_is_in_a_config():
    # conf/shared holds what several options compose, not options of its own
    groups = {path.name for path in CONF_DIR.iterdir() if path.is_dir()} - {"hydra", "shared"}
    assert groups == {group for config in CONFIGS for group in groups_of(config)}
    assert {"protocol", "explain", "data", "model", "paths"} <= set(groups_of("eval")) & set(groups_of("locate"))


# Options that do not compose in a config, with the reason; each is checked to fail still.


@pytest.mark.parametrize("config", CONFIGS)
def test_every_option_composes_resolves_and_names_real_objects(tmp_path, config):
    """Every option of every group of the config, several groups' options at once: one
    composition per option of the largest group (a composition takes about half a second)."""
    groups = {group: options(group) for group in groups_of(config)}
    assert all(groups.values()), f"a group of {config} has no options: {groups}"
    for round in range(max(map(len, groups.values()))):
        overrides = [f"{group}={choices[round % len(choices)]}" for group, choices in groups.items()]
        try:
            cfg = OmegaConf.to_container(compose_config(config, overrides, tmp_path), resolve=True)
        except Exception as error:
            raise AssertionError(f"{config} {' '.join(overrides)}: {error}") from error
        for target in targets(cfg):
            assert callable(get_object(target)), f"{config} {' '.join(overrides)}: {target} is not callable"


DELIBERATELY_THE_SAME = {"callbacks": [("none", "skipped_images")]}


@pytest.mark.slow  # about 40 compositions
@pytest.mark.parametrize("group", groups_of("train"))
def test_every_option_of_a_group_changes_the_config(tmp_path, group):
    composed = {
        option: OmegaConf.to_yaml(compose_config("train", [f"{group}={option}"], tmp_path)) for option in options(group)
    }
    # An option that changes nothing is an empty file, or one whose package puts its keys elsewhere
    # (hparams_search changes only Hydra's own settings, which compose leaves out).
    same = [(a, b) for a in composed for b in composed if a < b and composed[a] == composed[b]]
    # callbacks=none keeps only the skipped-image count, which is what callbacks=skipped_images is
    same = [pair for pair in same if pair not in DELIBERATELY_THE_SAME.get(group, ())]
    assert not same, f"conf/{group}: these options compose the same config: {same}"


@pytest.mark.parametrize(
    "config, overrides, nearest",
    [
        ("train", [], 100),
        ("train", ["protocol=full"], None),
        ("eval", [], 100),
        ("eval", ["protocol=full"], None),
        ("eval", ["protocol=nearest100"], 100),
        ("locate", [], None),
        ("locate", ["protocol=nearest100"], 100),
    ],
)
def test_the_protocol_sets_the_candidates_each_query_ranks(tmp_path, config, overrides, nearest):
    cfg = compose_config(config, overrides, tmp_path)
    assert cfg.model.nearest == nearest and cfg.protocol.nearest == nearest
    assert cfg.protocol.name == ("full" if nearest is None else f"nearest{nearest}")


def test_eval_and_locate_defaults(tmp_path):
    evaluation = compose_config("eval", [], tmp_path)
    assert evaluation.task_name == "eval" and evaluation.split == "test" and evaluation.ckpt_path is None
    assert evaluation.logger is None or not evaluation.logger  # logger=none: nothing to instantiate
    assert evaluation.explain.overlays is True and evaluation.explain.enabled is False
    assert OmegaConf.to_container(evaluation, resolve=True)["run_name"] == "eval-Synthetic-sat-mixed-tiny"
    located = compose_config("locate", ["query=a church", "index=faiss_hnsw", "top_k=3"], tmp_path)
    assert located.task_name == "locate" and located.split == "all" and located.device == "cpu"
    assert located.query == "a church" and located.queries is None and located.draw is True
    assert located.index == "faiss_hnsw" and located.top_k == 3
    # the checkpoint's backbone and data settings are the training run's defaults
    trained = compose_config("train", [], tmp_path)
    for key in ("backbone", "data", "model", "city", "img", "text"):
        expected = OmegaConf.to_container(trained[key])
        if key == "model":  # the optimizer belongs to training
            expected = {name: value for name, value in expected.items() if name not in ("optimizer", "scheduler")}
        assert OmegaConf.to_container(located[key]) == expected, key
        assert OmegaConf.to_container(evaluation[key]) == expected, key
    assert "optim" not in evaluation and "optim" not in located


def test_the_optuna_search_names_keys_the_config_has(tmp_path):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose(
            "train", overrides=["hparams_search=optuna", f"paths.root_dir={tmp_path}"], return_hydra_config=True
        )
    assert cfg.hydra.sweeper.direction == "maximize" and cfg.hydra.mode.name == "MULTIRUN"
    params = cfg.hydra.sweeper.params
    assert set(params) == {"optim.optimizer.lr", "optim.optimizer.weight_decay", "model.loss.label_smoothing"}
    for key in params:
        assert OmegaConf.select(cfg, key) is not None, f"hparams_search/optuna.yaml searches {key}, absent from train"


def test_real_city_names_and_a_custom_city_name(tmp_path):
    cfg = compose_config(
        "train", ["city=Brisbane", "city.name=SomeTown", "paths.data_dir=/data/st", "img=osm"], tmp_path
    )
    assert cfg.data.city == "SomeTown" and cfg.data.data_dir == "/data/st"
    assert cfg.data.image_folder == "reference/{version}-OSM" and cfg.data.synthetic is None


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
