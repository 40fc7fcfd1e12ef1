"""Pack a city into WebDataset shards:  python pack.py city=Brisbane img=sat"""

import hydra
from omegaconf import DictConfig

from cvgtext.commands.cli import reports_user_errors


@hydra.main(version_base="1.3", config_path="conf", config_name="pack")
@reports_user_errors
def main(cfg: DictConfig) -> None:
    from cvgtext.commands.pack import pack

    pack(cfg)


if __name__ == "__main__":
    main()
