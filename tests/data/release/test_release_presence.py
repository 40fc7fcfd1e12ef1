"""A run whose city is not on disk stops with one line, before its run folder and any logger
exist, naming the missing file and the download command; the synthetic city is untouched."""

from __future__ import annotations

import shutil

import pytest

from cvgtext.data.release.presence import missing_release
from helpers.releases import hub_layout, write_files
from helpers.runs import run_cli

VERSIONS = ["{city}", "{city}-photos"]
ANNOTATION_FILE = "annotation/{version}/{split}.json"
SATELLITE = "reference/{version}-satellite"


def message(data_dir, city="Brisbane", img="sat", folder=SATELLITE, **kwargs):
    return missing_release(data_dir, city, VERSIONS, ANNOTATION_FILE, folder, img, **kwargs)


def test_a_release_city_without_data_names_the_file_and_the_download_command(tmp_path):
    text = message(tmp_path, text="panorama", overrides=["city=Brisbane", f"paths.data_dir={tmp_path}", "seed=3"])
    assert text.startswith(f"annotation file {tmp_path}/annotation/Brisbane/train.json does not exist")
    assert f"`python download.py city=Brisbane img=sat text=panorama paths.data_dir={tmp_path}`" in text


def test_a_missing_image_folder_names_the_folder_and_the_img_to_fetch(tmp_path):
    write_files(tmp_path, hub_layout("Tokyo", panoramas=4, photos=4, quirks=False))
    shutil.rmtree(tmp_path / "reference/Tokyo-OSM")
    assert message(tmp_path, "Tokyo", folder=SATELLITE) is None
    text = message(tmp_path, "Tokyo", "osm", folder="reference/{version}-OSM")
    assert text.startswith(f"image folder {tmp_path}/reference/Tokyo-OSM does not exist")
    assert "`python download.py city=Tokyo img=osm`" in text


def test_a_city_of_ones_own_is_pointed_at_paths_data_dir(tmp_path):
    text = message(tmp_path, "Atlantis")
    assert "download.py" not in text and "point paths.data_dir (or CVGTEXT_DATA_DIR)" in text


@pytest.mark.slow
@pytest.mark.parametrize("sweep", [[], ["-m", "img=sat,osm", "seed=1,2"]], ids=["run", "sweep"])
def test_a_newcomer_without_data_gets_one_line_and_nothing_is_written(tmp_path, sweep):
    result = run_cli("train.py", *sweep, "city=Brisbane", f"paths.root_dir={tmp_path}", "logger=wandb", cwd=tmp_path)
    assert result.returncode == 1
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: annotation file {tmp_path}/data/annotation/Brisbane")
    assert "`python download.py city=Brisbane img=sat paths.root_dir=" in lines[0]
    assert list(tmp_path.iterdir()) == []  # no outputs/, no wandb/
    if sweep:
        assert lines[0].endswith("(and 1 more of the sweep's data choices are not there either)")
