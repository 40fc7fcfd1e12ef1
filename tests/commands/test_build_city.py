"""build_city.py end to end on 127.0.0.1: a fake tile server, a fake street-view folder with
painted signs read by the real OCR, a fake multimodal model; the town it builds is read by the
loaders unchanged, and from it a model trains, evaluates and answers locate.py."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from PIL import Image

from cvgtext.commands.build_city import build
from cvgtext.commands.cli import find_user_error
from cvgtext.data.annotations import load_pairs
from cvgtext.data.names import is_panorama
from cvgtext.data.town.http import SourceUnreachable
from cvgtext.utils.errors import ConfigError, DataError
from helpers.runs import compose_config, run_cli
from helpers.tile_server import TileServer, blob_tiles, bright_centroid
from helpers.town import build_overrides, grid_places, write_street_views
from helpers.town_chat import TownChatServer
from helpers.web import free_port

pytest.importorskip("rapidocr")
TOWN = "Testtown"
SIGNS = {0: ["BAKERY ROSSI"], 5: ["REJECT"], 6: ["GARBAGE"], 9: ["REWRITE"], 10: ["SORRY"]}


class Built:
    """A town built by the module's fixture, with its servers still answering."""

    def __init__(self, root: Path):
        self.root, self.data_dir, self.places = root, root / "data", grid_places(4, 4, 60)
        self.folder = write_street_views(root / "views", self.places, SIGNS)

    def overrides(self, *extra: str) -> list[str]:
        return build_overrides(
            self.data_dir, self.folder, self.tiles.url("sat"), self.tiles.url("osm"), self.chat.url, *extra
        )

    def requests(self) -> int:
        return len(self.tiles.requests) + len(self.chat.requests)


@pytest.fixture(scope="module")
def town(tmp_path_factory):
    built = Built(tmp_path_factory.mktemp("town"))
    with TileServer(blob_tiles(built.places)) as built.tiles, TownChatServer() as built.chat:
        built.manifest = build(compose_config("build_city", built.overrides(), built.root))
        yield built


def test_the_town_is_in_the_release_layout_and_the_loaders_read_it(town):
    pairs = {}
    for version in (TOWN, f"{TOWN}-photos"):
        for split in ("train", "test"):
            annotation = town.data_dir / "annotation" / version / f"{split}.json"
            pairs[version, split] = load_pairs(annotation, town.data_dir / "reference" / f"{version}-satellite")
            for pair in pairs[version, split]:
                assert (town.data_dir / "reference" / f"{version}-OSM" / pair.name).is_file()
                assert (town.data_dir / "query" / f"{version}-ground" / pair.name).is_file()
                assert pair.is_panorama == (version == TOWN) == is_panorama(pair.name)
    assert all(pairs.values())
    assert sum(map(len, pairs.values())) == 14  # 16 places, one refused by format filtering, one by the inspector
    bakery = next(
        p for p in pairs[TOWN, "train"] + pairs[TOWN, "test"] if p.name.startswith("-33.87000000,151.21000000")
    )
    assert "BAKERY ROSSI" in bakery.caption  # read by OCR from the painted sign, quoted by the model
    assert bakery.name == "-33.87000000,151.21000000_2024-03_pano000_d0_z20.jpg"
    # the tiles as written (JPEG) are still centred on the street-view point
    for folder in ("satellite", "OSM"):
        with Image.open(town.data_dir / "reference" / f"{TOWN}-{folder}" / bakery.name) as tile:
            x, y = bright_centroid(tile)
            assert tile.size == (512, 512) and abs(x - 256) < 1 and abs(y - 256) < 1


def test_the_manifest_records_sources_prompts_counts_and_licences(town):
    manifest = json.loads((town.data_dir / "annotation" / TOWN / "manifest.json").read_text())
    cfg = compose_config("build_city", town.overrides(), town.root)
    assert manifest["captions"]["producer_prompts"] == dict(cfg.captioner.producer)
    assert manifest["captions"]["inspector"]["prompt"] == cfg.captioner.inspector.prompt
    assert manifest["captions"]["model"] == "fake-lmm" and manifest["captions"]["method"] == "progressive"
    assert manifest["counts"]["left_out"] == {"format:code": 1, "inspector:rejected": 1}
    assert manifest["counts"]["built"] == 14 and manifest["counts"]["places"] == 16
    assert manifest["inspector"] == {"inspected": 15, "accepted": 13, "rewritten": 1, "rejected": 1}
    assert manifest["tiles"]["osm"]["attribution"] == "© OpenStreetMap contributors"
    assert "ODbL" in manifest["tiles"]["osm"]["licence"]
    assert manifest["tiles"]["sat"]["zoom"] == 20 and manifest["tiles"]["sat"]["source"]["url"] == town.tiles.url("sat")
    assert manifest["split"]["rule"] == "blocks" and manifest["split"]["seed"] == 42
    assert manifest["split"]["closest_test_to_train_m"] >= manifest["split"]["gap_m"] == 50
    assert manifest["street_view_dates"] == ["2024-03", "2024-03"]
    assert manifest["statistics"]["ocr_words_used"] == 1.0
    assert "| CLIP tokens per caption, mean |" in (town.data_dir / "annotation" / TOWN / "statistics.md").read_text()
    assert all(agent == manifest["tiles"]["osm"]["source"]["user_agent"] for agent in
               [r["headers"]["User-Agent"] for r in town.tiles.requests])  # fmt: skip


def test_a_rerun_fetches_and_asks_nothing(town, capsys):
    before = town.requests()
    manifest = build(compose_config("build_city", town.overrides(), town.root))
    assert town.requests() == before
    assert manifest["this_run"] == {"sat_tiles": 0, "osm_tiles": 0, "model_requests": 0, "model_replies_from_cache": 0}
    assert manifest["counts"] == {**town.manifest["counts"]}
    assert "Next: python train.py city=town city.name=Testtown" in capsys.readouterr().out


def test_a_deleted_image_is_made_again_from_the_caches(town):
    tile = next((town.data_dir / "reference" / f"{TOWN}-OSM").iterdir())
    content = tile.read_bytes()
    tile.unlink()
    before = town.requests()
    build(compose_config("build_city", town.overrides(), town.root))
    assert tile.read_bytes() == content and town.requests() == before


def test_changed_prompts_rebuild_the_captions_not_the_tiles(town, tmp_path):
    before_tiles, before_chat = len(town.tiles.requests), len(town.chat.requests)
    cfg = compose_config("build_city", town.overrides("captioner.max_words=240"), town.root)
    build(cfg)
    assert len(town.tiles.requests) == before_tiles and len(town.chat.requests) > before_chat
    build(compose_config("build_city", town.overrides(), town.root))  # back as it was: all from the caches
    assert len(town.tiles.requests) == before_tiles


@pytest.mark.slow
def test_the_town_trains_evaluates_and_answers_locate(town, tmp_path, test_backbone):
    """The three commands of the README: build (the fixture), train.py, then locate.py."""
    from cvgtext.commands.train import train
    from helpers.runs import run_locate

    common = ["city=town", f"city.name={TOWN}", f"paths.data_dir={town.data_dir}", "trainer=cpu", "data.num_workers=0"]
    run = tmp_path / "train"
    metrics = train(
        compose_config(
            "train",
            [
                *common,
                f"backbone.model_name={test_backbone}",
                f"paths.output_dir={run}",
                "debug=fast",
                "logger=csv",
                "data.batch_size=4",
                "data.val_fraction=0.3",
                "~callbacks.rich_progress_bar",
                "~callbacks.model_summary",
                "++trainer.enable_progress_bar=false",
            ],
            tmp_path,
        )
    )
    assert 0 <= metrics["test/R@1"] <= 100 and "val/R@1" in metrics
    checkpoint = run / "checkpoints" / "best.ckpt"
    locations = run_locate(
        tmp_path, town.data_dir, "city=town", f"city.name={TOWN}", f"ckpt_path={checkpoint}", "top_k=3", "draw=false",
        f"backbone.model_name={test_backbone}",
        "query='a bakery on a corner with red brick buildings'",
    )  # fmt: skip
    (answer,) = locations
    names = {path.name for path in (town.data_dir / "reference" / f"{TOWN}-satellite").iterdir()}
    assert len(answer.candidates) == 3 and all(candidate.file in names for candidate in answer.candidates)


def test_bad_street_views_and_points_out_of_range_are_left_out_and_named(tmp_path, caplog):
    places = grid_places(2, 3, 80)
    folder = write_street_views(tmp_path / "views", places, {})
    broken = sorted(folder.iterdir())[0]
    broken.write_bytes(b"not a jpeg")
    points = tmp_path / "points.csv"
    points.write_text("lat,lon\n" + "".join(f"{lat},{lon}\n" for lat, lon in places) + "86.5,10.0\n")
    with TileServer(blob_tiles(places)) as tiles, TownChatServer() as chat:
        overrides = build_overrides(tmp_path / "data", folder, tiles.url("sat"), tiles.url("osm"), chat.url)
        points_overrides = [*overrides, "places=points", f"places.file={points}", "ocr.enabled=false"]
        cfg = compose_config("build_city", points_overrides, tmp_path)
        with caplog.at_level(logging.WARNING, logger="cvgtext.data.town.build"):
            manifest = build(cfg)
    assert manifest["counts"]["left_out"] == {"street_view_unreadable": 1, "out_of_range": 1}
    assert f"street view {broken} cannot be read as an image" in caplog.text
    assert "the point (86.5, 10.0) is outside the range of Web Mercator tiles" in caplog.text


def test_unreachable_services_stop_the_build_with_their_address(tmp_path):
    places = grid_places(1, 2, 80)
    folder = write_street_views(tmp_path / "views", places, {})
    nowhere = f"http://127.0.0.1:{free_port()}"
    with TileServer(blob_tiles(places)) as tiles, TownChatServer() as chat:
        sat = build_overrides(tmp_path / "data", folder, f"{nowhere}/{{z}}/{{x}}/{{y}}.png", tiles.url("osm"), chat.url)
        with pytest.raises(
            SourceUnreachable, match=rf"the satellite tile source at {nowhere}/\{{z\}}.* is unreachable"
        ):
            build(compose_config("build_city", [*sat, "ocr.enabled=false"], tmp_path))
        model = build_overrides(tmp_path / "data", folder, tiles.url("sat"), tiles.url("osm"), f"{nowhere}/v1")
        with pytest.raises(
            SourceUnreachable, match=rf"the caption model at {nowhere}/v1/chat/completions is unreachable"
        ):
            build(compose_config("build_city", [*model, "ocr.enabled=false"], tmp_path))


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        (["street_views.folder=null"], ConfigError, "street_views=folder needs street_views.folder"),
        (["sat.url=null", "osm.url=null"], ConfigError, "a town needs tiles: give sat.url or osm.url"),
        (["osm.url=tiles.png"], ConfigError, "the map tile source url 'tiles.png' is neither an http"),
        (["city.name=../up"], DataError, "file name '../up' is not a plain file name"),
        (["places=points"], ConfigError, "places=points needs places.file"),
        (["image_format=gif"], ConfigError, "image_format='gif' is not one of jpg, png"),
        (["osm.zoom=20"], ConfigError, "osm.zoom=20 is deeper than osm.max_zoom=19"),
    ],
)
def test_bad_settings_are_named(tmp_path, overrides, error, message):
    folder = write_street_views(tmp_path / "views", grid_places(1, 1, 10), {})
    base = build_overrides(
        tmp_path / "data",
        folder,
        "http://127.0.0.1:9/{z}/{x}/{y}.png",
        "http://127.0.0.1:9/{z}/{x}/{y}.png",
        "http://127.0.0.1:9/v1",
    )
    with pytest.raises(Exception) as raised:  # noqa: B017  (instantiate wraps what a constructor raises)
        build(compose_config("build_city", [*base, *overrides], tmp_path))
    found = find_user_error(raised.value)
    assert isinstance(found, error) and message in str(found)


@pytest.mark.slow
def test_the_command_prints_one_line_for_an_unreachable_service(tmp_path):
    folder = write_street_views(tmp_path / "views", grid_places(1, 1, 10), {})
    nowhere = f"http://127.0.0.1:{free_port()}"
    overrides = build_overrides(
        tmp_path / "data",
        folder,
        f"{nowhere}/{{z}}/{{x}}/{{y}}.png",
        f"{nowhere}/{{z}}/{{x}}/{{y}}.png",
        f"{nowhere}/v1",
    )
    result = run_cli("build_city.py", *overrides, f"hydra.run.dir={tmp_path / 'run'}", "ocr.enabled=false")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: the satellite tile source at http://127.0.0.1:")
    assert "Traceback" not in result.stderr
