"""Evaluate a checkpoint or zero-shot weights:  python eval.py city=Tokyo img=osm ckpt_path=PATH"""

import hydra
from omegaconf import DictConfig

from cvgtext.commands.cli import reports_user_errors


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
@reports_user_errors
def main(cfg: DictConfig) -> float | None:
    # Imported here: Hydra's own errors (an unknown option, an unwritable run folder) then come
    # before the seconds it takes to load torch and Lightning.
    from cvgtext.commands.evaluate import evaluate

    metrics = evaluate(cfg)
    return metrics.get(f"{cfg.split}/R@1")


if __name__ == "__main__":
    main()
