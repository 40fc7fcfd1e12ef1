"""The end of a build: the split, the annotation files the loaders read, and the manifest.

Written every run from the places' records, each file atomically::

    annotation/<Town>/train.json, test.json            panoramas' captions {file name: caption}
    annotation/<Town>-photos/train.json, test.json     single views' captions
    annotation/<Town>/manifest.json                    sources, dates, zooms, models, prompts,
                                                       counts, left-out reasons, licences
    annotation/<Town>/statistics.md                    the captions' statistics beside the paper's

Both versions are always written (an empty ``{}`` when the town has no photo), so the default
``text=mixed`` reads the town as it reads the release.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from cvgtext.data.town.build import FOLDERS, GROUND, TownBuilder
from cvgtext.data.town.splits import nearest_distance_m
from cvgtext.data.town.statistics import caption_statistics, report
from cvgtext.utils.atomic import atomic_write
from cvgtext.utils.errors import DataError

MANIFEST_FORMAT = 1


def inspector_counts(records: Sequence[dict]) -> dict[str, int]:
    """How the inspector judged the captions it saw (first verdicts, and the final outcomes)."""
    judged = [r for r in records if r.get("verdicts")]
    return {
        "inspected": len(judged),
        "accepted": sum(r["verdicts"][0] == "accept" for r in judged),
        "rewritten": sum(r["verdicts"][0] == "rewrite" and r["status"] == "built" for r in judged),
        "rejected": sum(r.get("reason", "").startswith("inspector:") for r in judged),
    }


def write_json(path: Path, content) -> None:
    with atomic_write(path) as stream:
        json.dump(content, stream, ensure_ascii=False, indent=1, sort_keys=isinstance(content, dict))
        stream.write("\n")


def split_town(built: Sequence[dict], rule, test_fraction: float, seed: int) -> tuple[list[str], dict]:
    """Each built place's split, and what the manifest says of it (rule, seed, the distance kept)."""
    lat = np.array([r["lat"] for r in built], dtype=float)
    lon = np.array([r["lon"] for r in built], dtype=float)
    splits = rule.assign([r["name"] for r in built], lat, lon, test_fraction, seed)
    is_test, is_train = np.array([s == "test" for s in splits]), np.array([s == "train" for s in splits])
    closest = nearest_distance_m(lat[is_test], lon[is_test], lat[is_train], lon[is_train])
    described = {
        **rule.describe(),
        "seed": seed,
        "test_fraction": test_fraction,
        "counts": dict(Counter(splits)),
        "closest_test_to_train_m": round(float(closest.min()), 1) if len(closest) and is_train.any() else None,
    }
    return splits, described


def remove_stale_images(builder: TownBuilder, names: set[str]) -> int:
    """Delete images of the town's folders that no built place has (left by earlier builds), and
    the temporary files of writes that a kill interrupted."""
    removed = 0
    for version in (builder.version("panorama"), builder.version("single")):
        for folder in (GROUND, *FOLDERS.values()):
            directory = builder.data_dir / folder.format(version=version)
            for path in directory.glob("*") if directory.is_dir() else ():
                if not path.is_file():
                    continue
                if path.name.startswith(".") and path.name.endswith(".tmp"):
                    path.unlink()  # a temporary file of a killed write: not counted
                elif not path.name.startswith(".") and path.name not in names:
                    path.unlink()
                    removed += 1
    return removed


def finish_town(
    builder: TownBuilder, records: Sequence[dict], rule, test_fraction: float, seed: int, sources: dict
) -> dict:
    """Split the built places, write the annotation files and the manifest; return the manifest."""
    built = [r for r in records if r["status"] == "built"]
    left_out = Counter(r["reason"] for r in records if r["status"] == "left_out")
    if not built:
        reasons = ", ".join(f"{reason} {count}" for reason, count in left_out.most_common()) or "no place to build"
        raise DataError(
            f"no place of {builder.town} was built ({reasons}); see the log and {builder.work_dir / 'places'}"
        )
    splits, split_description = split_town(built, rule, test_fraction, seed)
    annotations = {(builder.version(view), s): {} for view in ("panorama", "single") for s in ("train", "test")}
    for record, split in zip(built, splits):
        if split != "gap":
            annotations[record["version"], split][record["name"]] = record["caption"]
    if not any(annotations[v, "train"] for v in {v for v, _ in annotations}) or not any(
        annotations[v, "test"] for v in {v for v, _ in annotations}
    ):
        raise DataError(
            f"the split of {builder.town}'s {len(built)} places left {split_description['counts']}: both train "
            "and test need places; build more places, or change test_fraction or town_split.block_m"
        )
    for (version, split), table in annotations.items():
        write_json(builder.data_dir / "annotation" / version / f"{split}.json", dict(sorted(table.items())))
    removed = remove_stale_images(builder, {r["name"] for r in built})
    used = [(r["caption"], r.get("scene_text", [])) for r, s in zip(built, splits) if s != "gap"]
    inspector = inspector_counts(records)
    statistics = caption_statistics([c for c, _ in used], [t for _, t in used], inspector)
    dates = sorted(r["date"] for r in built if r.get("date") and r["date"] != "0000-00")
    manifest = {
        "format": MANIFEST_FORMAT,
        "town": builder.town,
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "layout": {"versions": [builder.version("panorama"), builder.version("single")], "ground": GROUND, **FOLDERS},
        **sources,
        **builder.describe(float(np.mean([r["lat"] for r in built]))),
        "street_view_dates": [dates[0], dates[-1]] if dates else None,
        "split": split_description,
        "counts": {
            "places": len(records),
            "built": len(built),
            "panoramas": sum(r["view"] == "panorama" for r in built),
            "photos": sum(r["view"] == "single" for r in built),
            "annotated": {f"{v}/{s}": len(t) for (v, s), t in annotations.items()},
            "left_out": dict(left_out.most_common()),
            "stale_images_removed": removed,
        },
        "inspector": inspector,
        "statistics": statistics,
    }
    folder = builder.data_dir / "annotation" / builder.town
    write_json(folder / "manifest.json", manifest)
    with atomic_write(folder / "statistics.md") as stream:
        stream.write(f"# Captions of {builder.town}\n\n" + report(statistics, builder.town))
    return manifest
