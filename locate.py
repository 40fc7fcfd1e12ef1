"""Where am I?  python locate.py ckpt_path=CKPT city=Tokyo img=osm 'query="a description"'"""

import hydra
from omegaconf import DictConfig

from cvgtext.cli import reports_user_errors


@hydra.main(version_base="1.3", config_path="conf", config_name="locate")
@reports_user_errors
def main(cfg: DictConfig) -> None:
    # Imported here: Hydra's own errors (an unknown option, an unwritable run folder) then come
    # before the seconds it takes to load torch and Lightning.
    from cvgtext.locate import locate

    locate(cfg)


if __name__ == "__main__":
    main()
