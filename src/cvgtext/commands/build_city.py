"""Build a town of one's own (``build_city.py``): places, street views, tiles centred on them,
progressive captions and a split that does not leak, in the release layout the loaders read.

Rerun the same command after a kill, a crash or an unreachable service: it goes on where it
stopped, fetching no tile and asking no question it already has an answer to.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.utils import instantiate

from cvgtext.data.names import check_plain_name
from cvgtext.data.town.build import Layer, TownBuilder
from cvgtext.data.town.manifest import finish_town
from cvgtext.data.town.ocr import SceneTextReader
from cvgtext.data.town.places import thin
from cvgtext.data.town.statistics import report
from cvgtext.data.town.tile_sources import open_tile_source
from cvgtext.utils.errors import ConfigError, DataError

log = logging.getLogger(__name__)

LAYERS = {"sat": "the satellite tile source", "osm": "the map tile source"}


def tile_layers(cfg: Any, work_dir: Path) -> list[Layer]:
    """The tile layers the config gives a source for (``sat.url``, ``osm.url``)."""
    http = {key: cfg.http[key] for key in ("user_agent", "min_interval_s", "timeout_s", "retries", "backoff_s")}
    layers = []
    for name, label in LAYERS.items():
        layer = cfg[name]
        if not layer.url:
            continue
        if not (0 <= layer.zoom <= 24 and layer.crop_px > 0 and layer.size > 0 and layer.tile_px > 0):
            raise ConfigError(
                f"{name}.zoom={layer.zoom}, crop_px={layer.crop_px}, size={layer.size}, tile_px={layer.tile_px}: "
                "expected a zoom in 0-24 and positive sizes"
            )
        if layer.zoom > layer.max_zoom:
            raise ConfigError(
                f"{name}.zoom={layer.zoom} is deeper than {name}.max_zoom={layer.max_zoom}, the source's last zoom"
            )
        xyz = {"key_env": layer.key_env, "max_zoom": layer.max_zoom, **http}
        source = open_tile_source(str(layer.url), work_dir / "tiles", label, **xyz)
        credits = {key: layer[key] for key in ("attribution", "licence") if layer.get(key)}
        layers.append(Layer(name, source, layer.zoom, layer.crop_px, layer.size, layer.tile_px, credits))
    return layers


def scene_readers(cfg: Any) -> tuple[SceneTextReader | None, Any]:
    """The OCR reader and the scene segmenter the config asks for (None where off)."""
    ocr = None
    if cfg.ocr.enabled:
        settings = ("min_score", "min_chars", "threads", "drop_plates", "det_max_side")
        ocr = SceneTextReader(**{name: cfg.ocr[name] for name in settings})
    segmenter = None
    if cfg.segmentation.model:
        from cvgtext.data.town.segmentation import SceneSegmenter

        segmenter = SceneSegmenter(cfg.segmentation.model, cfg.segmentation.min_share)
    return ocr, segmenter


def requests_made(builder: TownBuilder) -> dict[str, int]:
    """Requests this run sent to each service (tiles, street views, models) and replies read from the cache."""
    counts = {
        f"{layer.name}_tiles": layer.source.client.sent for layer in builder.layers if hasattr(layer.source, "client")
    }
    if hasattr(builder.street_views, "client"):
        counts["street_views"] = builder.street_views.client.sent
    counts["model_requests"] = builder.captioner.endpoint.sent
    counts["model_replies_from_cache"] = builder.captioner.endpoint.cached
    if builder.captioner.inspector_endpoint is not builder.captioner.endpoint:
        counts["inspector_requests"] = builder.captioner.inspector_endpoint.sent
    return counts


def build(cfg: Any) -> dict[str, Any]:
    """``build_city.py``: build (or go on building) town ``city.name`` in ``paths.data_dir``; return its manifest."""
    town = cfg.city.name
    check_plain_name(town)
    work_dir = Path(cfg.work_dir)
    street_views = instantiate(cfg.street_views)
    places_source = instantiate(cfg.places)
    places = thin(places_source.load(street_views), cfg.min_spacing_m)
    if cfg.max_places is not None:
        places = places[: cfg.max_places]
    if not places:
        raise DataError(f"no place to build: {places_source.describe()} gave none")
    if hasattr(street_views, "claim"):
        street_views.claim(places)
    ocr, segmenter = scene_readers(cfg)
    captioner = instantiate(cfg.captioner, cache_dir=work_dir / "replies", _convert_="all")
    builder = TownBuilder(
        town, cfg.paths.data_dir, work_dir, street_views, tile_layers(cfg, work_dir), captioner, ocr, segmenter,
        cfg.image_format, cfg.workers,
    )  # fmt: skip
    log.info("Building %s: %d places into %s", town, len(places), Path(cfg.paths.data_dir).resolve())
    records = builder.build_all(places)
    sources = {
        "places": {**places_source.describe(), "min_spacing_m": cfg.min_spacing_m, "max_places": cfg.max_places},
        "this_run": requests_made(builder),
    }
    manifest = finish_town(builder, records, instantiate(cfg.town_split), cfg.test_fraction, cfg.seed, sources)
    counts = manifest["counts"]
    left_out = ", ".join(f"{reason} {n}" for reason, n in counts["left_out"].items()) or "none"
    split = manifest["split"]["counts"]
    print(
        f"Built {town}: {counts['built']} of {counts['places']} places ({counts['panoramas']} panoramas, "
        f"{counts['photos']} photos); train {split.get('train', 0)}, test {split.get('test', 0)}, "
        f"left out by the split's gap {split.get('gap', 0)}; left out: {left_out}"
    )
    print(f"This run: {manifest['this_run']}")
    print(f"Manifest: {Path(cfg.paths.data_dir) / 'annotation' / town / 'manifest.json'}\n")
    print(report(manifest["statistics"], town))
    print(f"Next: python train.py city=town city.name={town} paths.data_dir={Path(cfg.paths.data_dir).resolve()}")
    return manifest
