"""Train a text -> place retrieval model:  python train.py city=Brisbane img=sat"""

import hydra
from omegaconf import DictConfig

from cvgtext.commands.cli import reports_user_errors


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@reports_user_errors
def main(cfg: DictConfig) -> float | None:
    # Imported here: Hydra's own errors (an unknown option, an unwritable run folder) then come
    # before the seconds it takes to load torch and Lightning.
    from cvgtext.commands.train import train

    metrics = train(cfg)
    # Sweepers (e.g. Optuna) optimise the value returned here.
    return metrics.get(cfg.optimized_metric) if cfg.get("optimized_metric") else None


if __name__ == "__main__":
    main()
