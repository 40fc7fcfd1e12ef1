"""The bad input catalogue: each mistake a user can make ends the real CLI with a non-zero status
and one message naming the file or key and what was expected, without a traceback.

Broken data is checked by one ``train.py -m`` sweep over data folders, each broken in one way:
a job that fails fails only itself, so one process (one import of torch) tries them all, and
each job's log holds its one ``error:`` line. Checked elsewhere, through the CLI as well:

- a checkpoint that does not exist, is not a checkpoint, or is another backbone's:
  ``test_cli.py`` (``test_eval_refuses_bad_checkpoints_with_one_message``,
  ``test_eval_refuses_a_checkpoint_of_another_backbone``);
- a batch size that does not divide by the devices: ``test_distributed.py``
  (``test_a_global_batch_that_does_not_divide_by_the_devices_stops_with_one_message``);
- a single run's data error on stderr: ``test_cli.py``
  (``test_bad_data_stops_with_one_message_and_no_traceback``).
"""

from __future__ import annotations

import csv
import json
import resource
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from cvgtext.data.annotations import in_validation
from helpers.city import CITY, annotation_path, image_path, panorama_name, photo_name, training_names, write_release
from helpers.runs import ddp_overrides, eval_overrides, run_cli, tiny_overrides

# Every check here starts the real CLI in a subprocess: make test runs them, make test-fast does not.
pytestmark = pytest.mark.slow

PHOTOS = f"{CITY}-photos"


def edit_annotation(root: Path, change: Callable[[dict], None], version: str = CITY, split: str = "train") -> Path:
    path = annotation_path(root, version, split)
    content = json.loads(path.read_text())
    change(content)
    path.write_text(json.dumps(content))
    return path


def training_pairs(root: Path, val_fraction: float = 0.3) -> int:
    both = {**json.loads(annotation_path(root).read_text()), **json.loads(annotation_path(root, PHOTOS).read_text())}
    return sum(not in_validation(name, val_fraction) for name in both)


def a_real_jpeg(root: Path) -> bytes:
    return image_path(root, panorama_name(1)).read_bytes()


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "error: " in line]


def assert_one_message(output: str, *expected: str) -> None:
    """Exactly one ``error:`` line, holding every expected piece, and no traceback."""
    lines = error_lines(output)
    assert len(lines) == 1, output[-3000:]
    for piece in expected:
        assert piece in lines[0], (piece, lines[0])
    assert "Traceback" not in output, output[-3000:]


# Each case breaks a fresh release and returns what its message must name.
@dataclass(frozen=True)
class BadData:
    id: str
    breaks: Callable[[Path], list[str]]


def remove_annotation(root: Path) -> list[str]:
    path = annotation_path(root, PHOTOS, "test")
    path.unlink()
    return [str(path), "does not exist", "expected a JSON object"]


def replace_annotation(text: str, *problem: str) -> Callable[[Path], list[str]]:
    def breaks(root: Path) -> list[str]:
        annotation_path(root).write_text(text)
        return [str(annotation_path(root)), *problem]

    return breaks


def set_caption(caption: object) -> Callable[[Path], list[str]]:
    def breaks(root: Path) -> list[str]:
        path = edit_annotation(root, lambda content: content.update({panorama_name(1): caption}))
        return [str(path), panorama_name(1), "expected a non-empty string"]

    return breaks


def add_key(key: str, *problem: str) -> Callable[[Path], list[str]]:
    def breaks(root: Path) -> list[str]:
        path = edit_annotation(root, lambda content: content.update({key: "A street with two trees."}))
        return [str(path), repr(key), *problem]

    return breaks


def remove_image(root: Path) -> list[str]:
    image = image_path(root, photo_name(1), PHOTOS)
    image.unlink()
    return [str(image), "does not exist", str(annotation_path(root, PHOTOS))]


def break_image(content: Callable[[bytes], bytes]) -> Callable[[Path], list[str]]:
    def breaks(root: Path) -> list[str]:
        image = image_path(root, training_names(root)[0])
        image.write_bytes(content(a_real_jpeg(root)))
        return [str(image), "cannot be decoded"]

    return breaks


def repeat_key(root: Path) -> list[str]:
    path = annotation_path(root)
    text = path.read_text()
    path.write_text(text[:-1] + f', {json.dumps(panorama_name(1))}: "The same place again."}}')
    return [str(path), repr(panorama_name(1)), "twice"]


def share_a_test_name(root: Path) -> list[str]:
    test_name = next(iter(json.loads(annotation_path(root, PHOTOS, "test").read_text())))
    train = edit_annotation(root, lambda content: content.update({test_name: "A street."}), version=PHOTOS)
    return [repr(test_name), str(train), str(annotation_path(root, PHOTOS, "test")), "kept out of training"]


def empty_test_split(root: Path) -> list[str]:
    for version in (CITY, PHOTOS):
        annotation_path(root, version, "test").write_text("{}")
    return ["the test split", "is empty", str(root)]


def shrink_training_split(root: Path) -> list[str]:
    """Keep 6 training texts per version: the training split holds fewer pairs than one batch."""
    for version in (CITY, PHOTOS):
        edit_annotation(root, lambda content: [content.pop(name) for name in list(content)[6:]], version=version)
    return ["the train split of", "pairs, fewer than data.batch_size=", "set data.batch_size to at most"]


BAD_DATA = [
    BadData("annotation-missing", remove_annotation),
    BadData("annotation-not-json", replace_annotation("{not json", "is not valid JSON")),
    BadData("annotation-a-list", replace_annotation("[1, 2]", "holds a JSON list", "expected one JSON object")),
    BadData("caption-not-a-string", set_caption(3)),
    BadData("caption-empty", set_caption("  ")),
    BadData("key-without-coordinates", add_key("no_coordinates.jpg", "does not start with 'lat,lon'")),
    BadData("coordinates-out-of-range", add_key("95.0,2.0_a.jpg", "out of range", "[-90, 90]")),
    BadData("key-parent-folder", add_key("../1.0,2.0_x.jpg", "not a plain file name")),
    BadData("key-absolute", add_key("/etc/passwd", "not a plain file name")),
    BadData("key-subfolder", add_key("a/b.jpg", "not a plain file name")),
    BadData("image-missing", remove_image),
    BadData("image-truncated", break_image(lambda jpeg: jpeg[: len(jpeg) // 2])),
    BadData("image-zero-bytes", break_image(lambda jpeg: b"")),
    BadData("image-text-named-jpg", break_image(lambda jpeg: b"this is text, not a JPEG\n")),
    BadData("key-repeated", repeat_key),
    BadData("name-in-train-and-test", share_a_test_name),
    BadData("split-empty", empty_test_split),
    BadData("train-split-smaller-than-a-batch", shrink_training_split),
]


@pytest.fixture(scope="module")
def bad_data_sweep(tmp_path_factory) -> tuple[object, Path, dict[str, list[str]]]:
    """One ``train.py -m`` job per broken data folder; returns the result, the sweep folder and,
    per case, what its message must name."""
    root = tmp_path_factory.mktemp("bad-data")
    folders, expected = [], {}
    for case in BAD_DATA:
        expected[case.id] = case.breaks(write_release(root / case.id))
        folders.append(str(root / case.id))
    sweep_dir = root / "sweep"
    # One batch holds every training pair, so a broken training image is loaded whatever the
    # shuffle; two workers check that their traceback is cut to its message.
    result = run_cli(
        "train.py",
        "-m",
        f"hydra.sweep.dir={sweep_dir}",
        *tiny_overrides(",".join(folders), root / "run", "data.num_workers=2"),
        f"data.batch_size={training_pairs(root / BAD_DATA[0].id)}",
    )
    return result, sweep_dir, expected


@pytest.mark.parametrize("job, case", list(enumerate(case.id for case in BAD_DATA)))
def test_bad_data_stops_its_job_with_one_message(bad_data_sweep, job, case):
    result, sweep_dir, expected = bad_data_sweep
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    assert f"/{case}\n" in (sweep_dir / str(job) / ".hydra" / "overrides.yaml").read_text()
    assert_one_message((sweep_dir / str(job) / "train.log").read_text(), *expected[case])


@pytest.mark.parametrize("group, choice", [("city", "Brisbane"), ("img", "osm"), ("backbone", "tiny")])
def test_an_unknown_choice_fails_with_hydra_listing_the_options(tmp_path, group, choice):
    result = run_cli("train.py", f"{group}=Atlantis", f"hydra.run.dir={tmp_path}/run")
    assert result.returncode != 0
    assert f"Could not find '{group}/Atlantis'" in result.stderr and choice in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_an_unknown_bad_image_policy_is_refused(release_dir, tmp_path):
    result = run_cli("train.py", *tiny_overrides(release_dir, tmp_path / "run", "data.on_bad_image=ignore"))
    assert result.returncode == 1
    assert_one_message(result.stderr + result.stdout, "data.on_bad_image='ignore'", "raise, skip")


def test_a_synthetic_city_cannot_be_generated_into_a_read_only_folder(read_only_dir, tmp_path):
    result = run_cli(
        "train.py",
        "city=synthetic",
        "city.synthetic.places=20",
        f"paths.data_dir={read_only_dir}",
        f"hydra.run.dir={tmp_path}/run",
        "trainer=cpu",
        "logger=none",
        "debug=fast",
    )
    assert result.returncode == 1
    assert_one_message(result.stderr, f"synthetic city in {read_only_dir}", "paths.data_dir", "CVGTEXT_DATA_DIR")


@pytest.mark.parametrize(
    "script, folder",
    [("train.py", "hydra.run.dir={}/run"), ("eval.py", "hydra.run.dir={}"), ("train.py", "hydra.sweep.dir={}/sweep")],
)
def test_a_read_only_run_folder_stops_before_hydra_writes(read_only_dir, script, folder):
    override = folder.format(read_only_dir)
    result = run_cli(script, *(["-m"] if "sweep" in override else []), override)
    assert result.returncode == 1
    key, path = override.split("=")
    assert_one_message(result.stderr, f"cannot write the run folder {path}", key)


def test_a_read_only_working_folder_with_the_default_paths_is_named(read_only_dir):
    # The default run folder lies under ${hydra:runtime.cwd}, which Hydra resolves only once the job runs.
    result = run_cli("train.py", cwd=read_only_dir)
    assert result.returncode == 1
    assert_one_message(
        result.stderr, f"cannot write the run folder {read_only_dir}/outputs/train/runs/", "hydra.run.dir"
    )


def limit_file_size(size: int) -> Callable[[], None]:
    """A ``preexec_fn``: files of the child may not grow past ``size`` bytes.

    Python ignores SIGXFSZ, so a write past the limit fails with EFBIG, as on a full disk.
    """
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))


def test_a_full_disk_leaves_the_previous_report_whole(release_dir, tmp_path):
    run_dir = tmp_path / "eval"
    run_dir.mkdir()
    previous = {"metrics.json": b'{"all": {"R@1": 50.0}}\n', "predictions.csv": b"query\n", "examples.png": b"PNG"}
    for name, content in previous.items():
        (run_dir / name).write_bytes(content)
    # The log and Hydra's own config copies would hit the limit first: keep them out of the way,
    # so that the first file past 1 KiB is metrics.json (about 1.7 KiB).
    result = run_cli(
        "eval.py",
        *eval_overrides(
            release_dir, run_dir, "hydra.output_subdir=null", "hydra.job_logging.handlers.file.filename=/dev/null"
        ),
        preexec_fn=limit_file_size(1024),
    )
    assert result.returncode == 1
    assert_one_message(result.stderr, f"cannot write {run_dir / 'metrics.json'}", "File too large")
    assert {path.name: path.read_bytes() for path in run_dir.iterdir()} == previous


def test_a_full_disk_while_a_checkpoint_is_written_stops_training_and_keeps_the_previous_one(release_dir, tmp_path):
    run_dir = tmp_path / "run"
    # A run planned for 2 epochs (the schedule's length), stopped after its first.
    first = run_cli("train.py", *tiny_overrides(release_dir, run_dir, "test=false", "optim.scheduler.T_max=2"))
    assert first.returncode == 0, first.stderr[-3000:]
    last = run_dir / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    # A checkpoint of the tiny model is about 90 MB: a 10 MB limit stops its write half-way.
    result = run_cli(
        "train.py",
        *tiny_overrides(
            release_dir,
            run_dir,
            "ckpt_path=last",
            "trainer.max_epochs=2",
            "optim.scheduler.T_max=2",
            "hydra.job_logging.handlers.file.filename=/dev/null",
        ),
        preexec_fn=limit_file_size(10 * 2**20),
    )
    assert result.returncode == 1
    assert_one_message(result.stderr, "cannot write", str(run_dir / "checkpoints"), "the previous file is unchanged")
    assert last.read_bytes() == before
    assert not list(last.parent.glob(".*.tmp"))


def test_a_bad_gallery_image_stops_evaluation_even_when_training_skips_them(release_dir, tmp_path):
    previous_dir = tmp_path / "outputs" / "previous"
    previous_dir.mkdir(parents=True)
    (previous_dir / "metrics.json").write_text('{"all": {"R@1": 50.0}}\n')
    test_image = image_path(release_dir, panorama_name(4))  # i % 4 == 0: a test pair
    test_image.write_bytes(b"")
    result = run_cli(
        "eval.py",
        *eval_overrides(release_dir, tmp_path / "outputs" / "eval", "data.on_bad_image=skip", "data.num_workers=2"),
    )
    assert result.returncode == 1
    assert_one_message(result.stderr, str(test_image), "cannot be decoded", "test split needs every image")
    assert not (tmp_path / "outputs" / "eval" / "metrics.json").exists()
    assert (previous_dir / "metrics.json").read_text() == '{"all": {"R@1": 50.0}}\n'


def test_skipped_training_images_are_warned_once_and_counted(release_dir, tmp_path):
    truncated, empty = (image_path(release_dir, name) for name in training_names(release_dir)[:2])
    truncated.write_bytes(a_real_jpeg(release_dir)[:100])
    empty.write_bytes(b"")
    run_dir = tmp_path / "run"
    # Two epochs of one batch holding every training pair: each bad image is met twice.
    result = run_cli(
        "train.py",
        *tiny_overrides(
            release_dir,
            run_dir,
            "data.on_bad_image=skip",
            "trainer.max_epochs=2",
            f"data.batch_size={training_pairs(release_dir)}",
        ),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = (run_dir / "train.log").read_text()
    for image in (truncated, empty):
        assert sum(f"image {image} cannot be decoded" in line for line in log.splitlines()) == 1, log
    assert "2 training images could not be decoded and were left out" in log
    assert "2 training images could not be decoded and were left out (data.on_bad_image=skip)" in result.stdout
    with open(next(run_dir.glob("csv/*/metrics.csv"))) as handle:
        counts = {row["train/skipped_images"] for row in csv.DictReader(handle) if row.get("train/skipped_images")}
    assert counts == {"2.0"}


@pytest.mark.heavy  # 2 processes, about 30 s: make test-slow
def test_under_ddp_the_skipped_images_of_both_ranks_are_counted(release_dir, tmp_path):
    for name in training_names(release_dir)[:4]:
        image_path(release_dir, name).write_bytes(b"")
    log_dir = tmp_path / "outputs"
    result = run_cli("train.py", *ddp_overrides(release_dir, log_dir, "data.on_bad_image=skip", "trainer.max_epochs=2"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run_dir,) = (log_dir / "train" / "runs").iterdir()
    warned = {
        line.split(" - ", 1)[1]
        for line in (run_dir / "train.log").read_text().splitlines()
        if "its pair is left out of training" in line
    }
    with open(next(run_dir.glob("csv/*/metrics.csv"))) as handle:
        counts = [
            float(row["train/skipped_images"]) for row in csv.DictReader(handle) if row.get("train/skipped_images")
        ]
    assert warned and counts[-1] == len(warned)
