"""``download.py``: the CVG-Text release of one city and image type, and its official checkpoint,
from the hub into the layout the loaders read, checked.

data: list the dataset repository, fetch the files the request needs (resumable), unpack the
archives among them, find the release tree wherever it lies, link it into ``out`` and check it.
checkpoints: fetch the official CrossText2Loc file of the city and image type into
``out/checkpoints/CrossText2Loc/`` under the hub's name. ``check_only`` checks ``out`` and
writes nothing; ``from_dir`` takes a release got another way instead of the hub.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cvgtext.data.release.check import Report, check_release, format_report
from cvgtext.data.release.choose import Request, choose_checkpoint, choose_data, covered, is_archive
from cvgtext.data.release.facts import CHECKPOINT_FOLDER, CHECKPOINT_IMGS, CITIES, FULL_DATASET, kind_of
from cvgtext.data.release.hub import Listing, list_repository
from cvgtext.data.release.layout import ARRANGE_MODES, arrange, find, places
from cvgtext.data.release.transfer import fetch, human
from cvgtext.data.release.unpack import unpack_all
from cvgtext.utils.errors import ConfigError, DataError

WHAT = ("data", "checkpoints")


def request_of(cfg: Any) -> Request:
    """The city, text versions and image kind the config names; a city that is not in the
    release is refused."""
    city = str(cfg.city.name)
    if cfg.city.get("synthetic") is not None:
        raise ConfigError(
            "city=synthetic is generated on first use, not downloaded: name a release city, e.g. "
            f"python download.py city=Brisbane img=sat ({', '.join(CITIES)})"
        )
    versions = tuple(str(version).format(city=city) for version in cfg.text.versions)
    return Request(city, versions, kind_of(str(cfg.img.folder)))


def download(cfg: Any) -> dict[str, Any]:
    """``download.py``: returns what was done (``data``: the check's report; ``checkpoint``: its path)."""
    what = [cfg.what] if isinstance(cfg.what, str) else list(cfg.what)
    if not what or set(what) - set(WHAT):
        raise ConfigError(f"what={what}: expected some of {', '.join(WHAT)}, e.g. what=[data,checkpoints]")
    if cfg.arrange not in ARRANGE_MODES:
        raise ConfigError(f"arrange={cfg.arrange!r}: expected one of {', '.join(ARRANGE_MODES)}")
    request, out = request_of(cfg), Path(cfg.out).absolute()
    done: dict[str, Any] = {}
    if cfg.check_only:
        done["data"] = report = checked(cfg, request, out, [])
        finish(cfg, out, report)
        return done
    if "checkpoints" in what:
        done["checkpoint"] = fetch_checkpoint(cfg, request, out)
    if "data" in what:
        report = fetch_data(cfg, request, out)
        if report is None:  # a dry run
            return done
        done["data"] = report
    finish(cfg, out, done.get("data"))
    return done


def fetch_data(cfg: Any, request: Request, out: Path) -> Report | None:
    """Fetch (or take from ``from_dir``), unpack, arrange and check; None for a dry run."""
    if cfg.from_dir:
        root = Path(cfg.from_dir).absolute()
        if not root.is_dir():
            raise ConfigError(f"from_dir={root} is not a folder")
        archives = sorted(
            path
            for path in root.rglob("*")
            if is_archive(path.name) and request.wants(path.relative_to(root).as_posix())
        )
    else:
        listing = list_repository(str(cfg.repo), "dataset", str(cfg.revision), endpoint=cfg.get("endpoint"))
        chosen = choose_data(listing.files, [request])
        print(plan(listing, chosen, request))
        refuse_uncovered(listing, chosen, request)
        if cfg.dry_run:
            return None
        root = out / "downloads" / listing.repo_id
        paths = fetch(listing, chosen, root, workers=int(cfg.workers), endpoint=cfg.get("endpoint"))
        archives = [path for path in paths if is_archive(path.name)]
    problems = []
    try:
        unpack_all(archives, request.wants, f"{request.city}|{'+'.join(request.versions)}|{request.kind}")
    except DataError as error:
        problems.append(str(error))
    found = find(
        [root], places(list(request.versions), str(cfg.data.annotation_file), str(cfg.img.folder), request.city)
    )
    for line in arrange(found, out, str(cfg.arrange)):
        print(line)
    return checked(cfg, request, out, problems)


def checked(cfg: Any, request: Request, out: Path, problems: list[str]) -> Report:
    report = check_release(
        out, request.city, list(request.versions), str(cfg.data.annotation_file), str(cfg.img.folder), request.kind
    )
    report.errors[:0] = problems
    print(format_report(report))
    return report


def plan(listing: Listing, chosen: list, request: Request) -> str:
    """What will be fetched, as printed before the transfer."""
    size = human(sum(file.size for file in chosen))
    head = (
        f"{listing.repo_id}@{listing.commit[:12]}: {len(chosen):,} of {len(listing.files):,} files ({size}) "
        f"for {request.city} {request.kind} ({', '.join(request.versions)})"
    )
    shown = [f"  {file.path}  {human(file.size)}" for file in chosen[:12]]
    more = [f"  ... and {len(chosen) - 12:,} more"] if len(chosen) > 12 else []
    return "\n".join([head, *shown, *more])


def refuse_uncovered(listing: Listing, chosen: list, request: Request) -> None:
    """Stop before fetching when the repository holds nothing for part of the request."""
    lacking = [part for part, present in covered(chosen, request).items() if not present]
    if not lacking:
        return
    hint = f"; repo={FULL_DATASET} holds street views too" if request.kind == "ground" else ""
    raise DataError(
        f"{listing.repo_id} holds no {' and no '.join(lacking)} of {request.city} {request.kind} "
        f"(nor an archive that could hold them); its top level: {', '.join(listing.top_level()[:20])}{hint}"
    )


def fetch_checkpoint(cfg: Any, request: Request, out: Path) -> Path:
    """The official checkpoint of the city and image type, in ``out/checkpoints/CrossText2Loc/``."""
    img = str(cfg.img.name)
    if img not in CHECKPOINT_IMGS or request.city not in CITIES:
        raise ConfigError(
            f"no official CrossText2Loc checkpoint for city={request.city} img={img}: there are six, of "
            f"{', '.join(CITIES)} with img={' or img='.join(CHECKPOINT_IMGS)}"
        )
    listing = list_repository(str(cfg.checkpoint_repo), "model", str(cfg.revision), endpoint=cfg.get("endpoint"))
    file = choose_checkpoint(listing.files, request.city, img)
    if file is None:
        raise DataError(
            f"{listing.repo_id} holds no long_model_{request.city}-mixed_..._{img}_epoch*_*.pth; its files: "
            + ", ".join(listing.top_level()[:20])
        )
    print(f"{listing.repo_id}@{listing.commit[:12]}: {file.path} ({human(file.size)})")
    if cfg.dry_run:
        return out / CHECKPOINT_FOLDER / file.name
    (path,) = fetch(listing, [file], out / CHECKPOINT_FOLDER, flat=True, endpoint=cfg.get("endpoint"))
    print(f"checkpoint: {path}")
    return path


def finish(cfg: Any, out: Path, report: Report | None) -> None:
    """Say which data folder to use; a report with problems fails the command."""
    if report is not None and report.errors:
        raise DataError(
            f"the {report.city} release in {out} has {len(report.errors)} problem(s), listed above; "
            f"the first: {report.errors[0]}"
        )
    default = Path(os.environ.get("CVGTEXT_DATA_DIR") or Path(str(cfg.paths.root_dir)) / "data").absolute()
    argument = "" if out == default else f" paths.data_dir={out}"
    print(
        f"Ready: paths.data_dir={out}\n"
        f"  python train.py city={cfg.city.name} img={cfg.img.name}{argument}\n"
        f"  (or export CVGTEXT_DATA_DIR={out} to use this folder from any working directory)"
    )
