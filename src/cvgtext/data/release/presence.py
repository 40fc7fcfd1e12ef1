"""Whether a run's city is on disk at all, and if not, the command that fetches it.

A newcomer's first ``python train.py city=Brisbane img=sat`` should end with one line naming
the missing file and the download command, before any logger or run folder exists. This looks
only for what a download makes (a version's annotation folder, its image folder): a release
that is there but broken is the loaders' to report, file by file.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

from cvgtext.data.release.facts import CITIES

DOWNLOAD_COMMAND = "python download.py"


def download_command(city: str, img: str, text: str | None, passed: Sequence[str] = ()) -> str:
    """The ``download.py`` command that fetches ``city``'s ``img`` into the same data folder
    (``passed``: the run's ``paths.*`` overrides, repeated)."""
    words = [DOWNLOAD_COMMAND, f"city={city}", f"img={img}"]
    if text and text != "mixed":
        words.append(f"text={text}")
    words += [shlex.quote(override) for override in passed]
    return " ".join(words)


def path_overrides(overrides: Sequence[str]) -> list[str]:
    """The overrides of ``paths.*`` among a run's, which decide where its data folder is."""
    return [override for override in overrides if override.lstrip("+~").startswith("paths.")]


def missing_release(
    data_dir: Path,
    city: str,
    versions: Sequence[str],
    annotation_file: str,
    image_folder: str,
    img: str,
    text: str | None = None,
    overrides: Sequence[str] = (),
) -> str | None:
    """The message for a city none of whose files are in ``data_dir``, or None when its folders are there.

    ``versions`` are the config's (``{city}``, ``{city}-photos``); ``annotation_file`` and
    ``image_folder`` its templates; ``img`` and ``text`` its choices; ``overrides`` the run's.
    """
    for template in versions:
        version = template.format(city=city)
        annotations = data_dir / annotation_file.format(version=version, split="train", city=city)
        images = data_dir / image_folder.format(version=version, city=city)
        if not annotations.parent.is_dir():
            missing = f"annotation file {annotations} does not exist"
        elif not images.is_dir():
            missing = f"image folder {images} does not exist"
        else:
            continue
        if city not in CITIES:
            return (
                f"{missing}: point paths.data_dir (or CVGTEXT_DATA_DIR) at the folder holding annotation/, "
                f"reference/ and query/ of {city}"
            )
        command = download_command(city, img, text, path_overrides(overrides))
        return (
            f"{missing}: the CVG-Text release of {city} ({img}) is not in {data_dir}; fetch it with "
            f"`{command}` (docs/release.md), or point paths.data_dir (or CVGTEXT_DATA_DIR) at a copy"
        )
    return None
