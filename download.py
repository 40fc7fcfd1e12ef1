"""Fetch a city of the CVG-Text release, arranged and checked:  python download.py city=Brisbane img=sat"""

import hydra
from omegaconf import DictConfig

from cvgtext.commands.cli import reports_user_errors


@hydra.main(version_base="1.3", config_path="conf", config_name="download")
@reports_user_errors
def main(cfg: DictConfig) -> None:
    from cvgtext.commands.download import download

    download(cfg)


if __name__ == "__main__":
    main()
