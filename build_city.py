"""Build a town of your own:  python build_city.py city.name=MyTown street_views.folder=DIR sat.url=TEMPLATE"""

import hydra
from omegaconf import DictConfig

from cvgtext.commands.cli import reports_user_errors


@hydra.main(version_base="1.3", config_path="conf", config_name="build_city")
@reports_user_errors
def main(cfg: DictConfig) -> None:
    from cvgtext.commands.build_city import build

    build(cfg)


if __name__ == "__main__":
    main()
