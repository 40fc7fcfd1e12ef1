"""Where am I, in a browser:  python app.py ckpt_path=CKPT city=Tokyo img=osm  (then open http://127.0.0.1:7860)"""

import hydra
from omegaconf import DictConfig

from cvgtext.commands.cli import reports_user_errors


@hydra.main(version_base="1.3", config_path="conf", config_name="app")
@reports_user_errors
def main(cfg: DictConfig) -> None:
    from cvgtext.commands.app import check_page_options, serve
    from cvgtext.commands.queries import check_options

    # A bad option is reported before the model and the gallery are loaded.
    check_options(cfg.split, cfg.top_k, cfg.index)
    check_page_options(cfg.server_name, cfg.port, cfg.max_chars)

    serve(cfg)


if __name__ == "__main__":
    main()
