"""Pack the configured city into WebDataset shards (``pack.py``): the tar files open_clip and
webdataset read, with the manifest that ``data.format=shards`` streams them by."""

from __future__ import annotations

from typing import Any

from hydra.utils import instantiate

from cvgtext.data.shards.write import SPLITS, pack_splits
from cvgtext.utils.errors import ConfigError


def pack(cfg: Any) -> dict[str, Any]:
    """``pack.py``: the configured city's splits as shards under ``cfg.out``."""
    datamodule = instantiate(cfg.data, cache=False)
    datamodule.prepare_data()
    datamodule.setup()
    splits = list(cfg.get("splits") or SPLITS)
    unknown = [split for split in splits if split not in SPLITS]
    if unknown or not splits:
        raise ConfigError(f"splits={splits!r}: expected some of {', '.join(SPLITS)}")
    description = {
        "city": cfg.city.name,
        "img": cfg.img.name,
        "text": cfg.text.name,
        "val_fraction": cfg.data.val_fraction,
        "data_dir": str(cfg.paths.data_dir),
        # what a reader checks against its own settings
        "versions": list(datamodule.versions),
        "image_folder": datamodule.image_folder,
    }
    manifest = pack_splits(
        {split: datamodule.pairs[split] for split in splits}, cfg.out, cfg.samples_per_shard, description
    )
    total = sum(entry["samples"] for entry in manifest["splits"].values())
    size = sum(shard["bytes"] for entry in manifest["splits"].values() for shard in entry["shards"])
    print(f"Packed {total:,} samples ({size / 2**20:,.1f} MiB) of {cfg.city.name} {cfg.img.name} into {cfg.out}")
    for split, entry in manifest["splits"].items():
        print(f"  {split}: {entry['samples']:,} samples, {len(entry['shards'])} shards  {entry['pattern'] or ''}")
    return manifest
