"""The official CrossText2Loc checkpoints, by the city and gallery type they were trained on.

The authors published six files in the model repository ``CVG-Text/CrossText2Loc``, one per
city and gallery type, named ``long_model_<City>-mixed_1e-05_128_<img>_epoch<E>_<R@1>.pth``:
``state_dict()``s of OpenAI's CLIP ViT-L/14@336 with the text positional embedding stretched to
300 rows (what ``backbone=crosstext2loc`` builds). ``<R@1>`` is the best test R@1 over the
training epochs: the official script chose each checkpoint on the test split. ``download.py``
keeps them under their own names in ``${paths.data_dir}/checkpoints/CrossText2Loc/``, where
:func:`official_checkpoint` finds the one a run asks for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cvgtext.data.release.facts import CHECKPOINT_IMGS as IMAGE_TYPES
from cvgtext.data.release.facts import CHECKPOINT_NAME as NAME
from cvgtext.data.release.facts import CITIES
from cvgtext.utils.errors import ConfigError

# backbone.pretrained's value that stands for the official checkpoint of backbone.trained_on
TAG = "crosstext2loc"


@dataclass(frozen=True)
class OfficialCheckpoint:
    """What an official file's name says: the city and gallery type it was trained on, the epoch
    kept, and that epoch's R@1 on the test split (percent)."""

    path: Path
    city: str
    img: str
    epoch: int
    test_r1: float


def parse_name(path: str | Path) -> OfficialCheckpoint | None:
    """The official checkpoint a file name describes, or None for any other file."""
    match = NAME.match(Path(path).name)
    if match is None:
        return None
    return OfficialCheckpoint(Path(path), match["city"], match["img"], int(match["epoch"]), float(match["r1"]))


def download_command(city: str, img: str) -> str:
    return f"python download.py what=[checkpoints] city={city} img={img}"


def official_checkpoint(folder: str | Path, city: str, img: str) -> OfficialCheckpoint:
    """The official checkpoint trained on ``city`` and ``img`` in ``folder``.

    Refused, in one line each: a city or gallery type the authors published no checkpoint for
    (street views, a city of one's own), a folder without the file (with the command that
    downloads it), and a folder with two files for the same city and gallery type.
    """
    where = f"backbone=crosstext2loc (backbone.trained_on: city={city} img={img})"
    if img not in IMAGE_TYPES:
        raise ConfigError(
            f"{where}: the official CrossText2Loc checkpoints were trained on satellite and OpenStreetMap tiles "
            f"(img={' or img='.join(IMAGE_TYPES)}), none on img={img}; train one with "
            f"python train.py experiment=crosstext2loc img={img}"
        )
    if city not in CITIES:
        raise ConfigError(
            f"{where}: the official CrossText2Loc checkpoints are of {', '.join(CITIES)}, not {city}; evaluate one of "
            f"them on {city} with backbone.trained_on.city={CITIES[0]} (or {', '.join(CITIES[1:])})"
        )
    folder = Path(folder)
    found = sorted(
        (checkpoint for checkpoint in map(parse_name, _files(folder)) if checkpoint is not None),
        key=lambda checkpoint: checkpoint.path.name,
    )
    matching = [checkpoint for checkpoint in found if (checkpoint.city, checkpoint.img) == (city, img)]
    if not matching:
        pattern = f"long_model_{city}-mixed_1e-05_128_{img}_epoch*_*.pth"
        raise ConfigError(
            f"{where}: no official checkpoint {pattern} in {folder}; download it with: {download_command(city, img)} "
            "(or set backbone.checkpoints to the folder that holds it)"
        )
    if len(matching) > 1:
        names = ", ".join(checkpoint.path.name for checkpoint in matching)
        raise ConfigError(f"{where}: {folder} holds {len(matching)} checkpoints of {city} {img} ({names}); keep one")
    return matching[0]


def _files(folder: Path) -> list[Path]:
    try:
        return [path for path in folder.iterdir() if path.is_file()]
    except (FileNotFoundError, NotADirectoryError):
        return []
