"""Train a text -> place retrieval model:  python train.py city=Brisbane img=sat"""

import hydra
from omegaconf import DictConfig

from cvgtext.cli import reports_user_errors
from cvgtext.train import train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@reports_user_errors
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    # Sweepers (e.g. Optuna) optimise the value returned here.
    return metrics.get("val/R@1_best")


if __name__ == "__main__":
    main()
