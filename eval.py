"""Evaluate a checkpoint or zero-shot weights:  python eval.py city=Tokyo img=osm ckpt_path=PATH"""

import hydra
from omegaconf import DictConfig

from cvgtext.cli import reports_user_errors
from cvgtext.eval import evaluate


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
@reports_user_errors
def main(cfg: DictConfig) -> float | None:
    metrics = evaluate(cfg)
    return metrics.get(f"{cfg.split}/R@1")


if __name__ == "__main__":
    main()
