"""Where am I?  python locate.py ckpt_path=CKPT city=Tokyo img=osm 'query="a description"'"""

import hydra
from omegaconf import DictConfig

from cvgtext.commands.cli import reports_user_errors


@hydra.main(version_base="1.3", config_path="conf", config_name="locate")
@reports_user_errors
def main(cfg: DictConfig) -> None:
    from cvgtext.commands.queries import check_options, read_queries

    # A missing description or a bad option is reported before torch and Lightning are loaded.
    if cfg.get("queries") != "-":
        read_queries(cfg.get("query"), cfg.get("queries"))
    check_options(cfg.split, cfg.top_k, cfg.index)
    from cvgtext.commands.locate import locate

    locate(cfg)


if __name__ == "__main__":
    main()
