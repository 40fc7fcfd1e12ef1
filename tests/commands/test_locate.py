"""The query tool: descriptions in, ranked tiles out, the same ranking as eval.py, clear errors."""

from __future__ import annotations

import csv
import io
import json

import pytest
import torch

from cvgtext.utils.errors import ConfigError, DataError
from helpers.city import CITY, repaint_tiles
from helpers.models import tiny_checkpoint
from helpers.runs import compose_config, locate_overrides, run_cli, run_locate


@pytest.mark.slow
def test_locate_writes_the_table_and_three_files(release_dir, tmp_path, capsys):
    checkpoint = tiny_checkpoint(tmp_path / "model.ckpt", seed=1)
    locations = run_locate(
        tmp_path,
        release_dir,
        f"ckpt_path={checkpoint}",
        "top_k=3",
        "queries=-",
        stdin="a red roof and two trees\n\n  a blue roof  \n",
    )
    assert [location.query for location in locations] == ["a red roof and two trees", "a blue roof"]
    printed = capsys.readouterr().out
    assert "query 1: a red roof and two trees" in printed and "distance_m" in printed
    content = json.loads((tmp_path / "run" / "locations.json").read_text())
    assert [entry["query"] for entry in content] == ["a red roof and two trees", "a blue roof"]
    first = content[0]["candidates"]
    assert [c["rank"] for c in first] == [1, 2, 3]
    assert first[0]["score"] >= first[1]["score"] >= first[2]["score"]
    assert first[0]["distance_m"] == 0 and first[0]["file"].startswith(f"{first[0]['lat']:.4f}"[:6])
    geojson = json.loads((tmp_path / "run" / "locations.geojson").read_text())
    points = [f for f in geojson["features"] if f["geometry"]["type"] == "Point"]
    assert geojson["type"] == "FeatureCollection" and len(points) == 6
    point = points[0]
    assert point["geometry"]["coordinates"] == [first[0]["lon"], first[0]["lat"]]
    assert point["properties"]["rank"] == 1 and point["properties"]["file"] == first[0]["file"]
    # calibrated: each answer says how sure it is and gives the area holding the place with 80 %
    assert "that tile 1 is the place" in printed and "80 % area:" in printed
    for entry, location in zip(content, locations):
        area = entry["area"]
        assert entry["confidence"] == pytest.approx(entry["candidates"][0]["probability"])
        assert area["places"] == len(area["members"]) >= 1 and area["probability"] == 0.8
        held = [member["probability"] for member in area["members"]]
        assert sum(held) >= 0.8 - 1e-9 and sum(held[:-1]) < 0.8 and held == sorted(held, reverse=True)
        assert entry["confidence_words"] in (
            "likely",
            "possible: check the other candidates",
            "not sure: these are guesses",
        )
        assert location.area.radius_m == pytest.approx(area["radius_m"], abs=0.05)
    circles = [f for f in geojson["features"] if f["properties"].get("kind") == "area_radius"]
    assert len(circles) == 2
    ring = circles[0]["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1] and len(ring) == 65
    from cvgtext.retrieval.geo import haversine_km

    centre = torch.tensor([first[0]["lat"], first[0]["lon"]], dtype=torch.float64)
    for lon, lat in ring[:-1]:
        metres = 1000 * float(haversine_km(centre[0], centre[1], torch.tensor(lat), torch.tensor(lon)))
        assert metres == pytest.approx(max(content[0]["area"]["radius_m"], 1.0), rel=1e-3, abs=0.2)
    from PIL import Image

    with Image.open(tmp_path / "run" / "locations.png") as picture:
        assert picture.width > 300 and picture.height > 100
    # the drawn queries carry the relevance of their top-1 tile (explain.overlays, on by default)
    explanation = locations[0].explanation
    assert [word.replace("</w>", "") for word in explanation.words] == "a red roof and two trees".split()
    assert explanation.image.shape == (8, 8) and (explanation.image >= 0).all()  # cvg-tiny: 64 px, 8 px patches


def test_split_all_is_every_coordinate_named_image_annotated_or_not(release_dir, tmp_path):
    from hydra.utils import instantiate
    from PIL import Image

    from cvgtext.search.gallery import gallery_tiles

    folder = release_dir / "reference" / f"{CITY}-satellite"
    Image.new("RGB", (32, 32), "white").save(folder / "-27.49,153.29_unannotated.jpg")
    Image.new("RGB", (32, 32), "white").save(folder / "logo.jpg")
    (folder / "-27.5,153.3_notes.txt").write_text("not an image")
    datamodule = instantiate(compose_config("locate", locate_overrides(release_dir), tmp_path).data)
    names = [tile.name for tile in gallery_tiles(datamodule, "all")]
    assert "-27.49,153.29_unannotated.jpg" in names and "logo.jpg" not in names
    assert not any(name.endswith(".txt") for name in names)
    assert len(names) == len(set(names)) == 24 + 12 + 1
    test_names = [tile.name for tile in gallery_tiles(datamodule, "test")]
    assert len(test_names) == 6 + 3 and set(test_names) < set(names)


@pytest.mark.slow
def test_the_test_split_ranks_as_eval_on_the_whole_gallery(release_dir, tmp_path):
    """locate split=test and eval.py protocol=full split=test give each test caption the same top 5."""
    from cvgtext.commands.evaluate import evaluate

    repaint_tiles(release_dir)
    checkpoint = tiny_checkpoint(tmp_path / "model.ckpt", seed=2)
    settings = locate_overrides(release_dir, f"ckpt_path={checkpoint}", "protocol=full", "split=test")
    eval_cfg = compose_config("eval", settings, tmp_path / "eval")
    evaluate(eval_cfg)
    with open(tmp_path / "eval" / "run" / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    captions = tmp_path / "captions.txt"
    captions.write_text("".join(row["caption"] + "\n" for row in rows))
    # A separate cache: the gallery is embedded again, not taken from eval's.
    locations = run_locate(
        tmp_path / "locate", release_dir, f"ckpt_path={checkpoint}", "split=test", f"queries={captions}", "draw=false"
    )
    assert len(locations) == len(rows) == 9
    for row, location in zip(rows, locations):
        assert [c.file for c in location.candidates] == [row[f"top{rank}"] for rank in range(1, 6)]
        assert [c.score for c in location.candidates] == pytest.approx(
            [float(row[f"top{rank}_score"]) for rank in range(1, 6)], abs=1e-4
        )


def test_a_byte_order_mark_does_not_become_part_of_a_description(tmp_path):
    import io

    from cvgtext.commands.queries import read_queries

    path = tmp_path / "queries.txt"
    path.write_bytes("a green square\r\nthe river bend\r\n".encode("utf-8-sig"))
    assert read_queries(None, str(path)) == ["a green square", "the river bend"]
    assert read_queries(None, "-", stdin=io.StringIO("\ufeffa green square\n")) == ["a green square"]


def test_read_queries_refuses_what_is_not_a_description(tmp_path):
    from cvgtext.commands.queries import read_queries

    with pytest.raises(ConfigError, match=r"nothing to locate: give query="):
        read_queries(None, None)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n   \n")
    with pytest.raises(ConfigError, match=rf"queries file {empty} holds no description"):
        read_queries(None, str(empty))
    with pytest.raises(ConfigError, match=r"queries=.*missing.txt: no such file"):
        read_queries(None, str(tmp_path / "missing.txt"))
    with pytest.raises(ConfigError, match=r"queries=.* is a folder; expected a file with one description a line"):
        read_queries(None, str(tmp_path))
    with pytest.raises(ConfigError, match=r"stdin \(queries=-\) holds no description"):
        read_queries(None, "-", io.StringIO(""))
    with pytest.raises(ConfigError, match="either query=... or queries=FILE"):
        read_queries("a", str(empty))
    with pytest.raises(ConfigError, match="query= is empty"):
        read_queries("  ", None)
    assert read_queries(None, "-", io.StringIO("one\n\n two \n")) == ["one", "two"]


@pytest.mark.parametrize(
    "split, top_k, index, message",
    [
        ("holdout", 5, "exact", r"split='holdout' is not one of all, train, val, test"),
        ("all", 0, "exact", r"top_k=0 must be a positive number"),
        ("all", -2, "exact", r"top_k=-2 must be a positive number"),
        ("all", "five", "exact", r"top_k='five' must be a positive number"),
        ("all", 5, "annoy", r"index='annoy' is not one of exact, faiss_flat"),
    ],
)
def test_bad_options_are_named(split, top_k, index, message):
    from cvgtext.commands.queries import check_options

    with pytest.raises(ConfigError, match=message):
        check_options(split, top_k, index)


@pytest.mark.slow
def test_the_cli_reports_a_missing_query_in_one_line(release_dir, tmp_path):
    result = run_cli("locate.py", *locate_overrides(release_dir), f"hydra.run.dir={tmp_path}/run")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        'error: nothing to locate: give query="a description", queries=FILE (one description a line) '
        "or queries=- (read from stdin)"
    ]


def test_an_empty_gallery_folder_is_named(release_dir, tmp_path):
    from hydra.utils import instantiate

    from cvgtext.search.gallery import gallery_tiles

    datamodule = instantiate(compose_config("locate", locate_overrides(tmp_path / "nowhere"), tmp_path).data)
    with pytest.raises(DataError, match="nowhere/reference/Testville-satellite does not exist"):
        gallery_tiles(datamodule, "all")
    empty = tmp_path / "empty"
    for version in (CITY, f"{CITY}-photos"):
        (empty / "reference" / f"{version}-satellite").mkdir(parents=True)
    datamodule = instantiate(compose_config("locate", locate_overrides(empty), tmp_path).data)
    with pytest.raises(DataError, match="no image named 'lat,lon_...'"):
        gallery_tiles(datamodule, "all")


def test_the_map_of_a_city_across_the_antimeridian_shows_it_whole():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cvgtext.reports.locations import Candidate, Location, draw_map

    # Three tiles a few hundred metres apart, on both sides of longitude 180.
    places = [(-16.5, 179.999), (-16.501, -179.998), (-16.499, 179.996)]
    location = Location(
        "a pier",
        [Candidate(rank, f"{rank}.jpg", lat, lon, 1.0 / rank, 0.0) for rank, (lat, lon) in enumerate(places, 1)],
    )
    figure, axes = plt.subplots()
    draw_map(axes, location, city=([lat for lat, _ in places], [lon for _, lon in places]))
    left, right = axes.get_xlim()
    assert right - left < 0.05 and left < 179.999 < right  # degrees: the tiles, not the whole world
    assert axes.texts[-1].get_text() in {"100 m", "200 m", "500 m", "1 km"}  # the scale bar
    plt.close(figure)


@pytest.mark.slow
def test_further_descriptions_of_a_place_are_answered_together(release_dir, tmp_path, capsys):
    """also= and + lines: one answer from all descriptions, ranked by their summed scores."""
    repaint_tiles(release_dir)
    checkpoint = tiny_checkpoint(tmp_path / "model.ckpt", seed=6)
    first, second = "a red roof and two trees", "a blue pool next to it"
    [together] = run_locate(tmp_path, release_dir, f"ckpt_path={checkpoint}", f"query={first}", f"also={second}")
    assert together.descriptions == [first, second] and together.query == first
    assert f"    + {second}" in capsys.readouterr().out
    content = json.loads((tmp_path / "run" / "locations.json").read_text())
    assert content[0]["descriptions"] == [first, second]
    from cvgtext.commands.locator import Locator

    cfg = compose_config(
        "locate",
        [f"paths.cache_dir={tmp_path}/cache", *locate_overrides(release_dir, f"ckpt_path={checkpoint}")],
        tmp_path,
    )
    locator = Locator(cfg)
    embeddings = locator.embed([first, second])
    scores = embeddings @ locator.gallery.embeddings.T  # [2, tiles]
    best = scores.sum(0).topk(5).indices.tolist()
    assert [c.file for c in together.candidates] == [locator.gallery.names[i] for i in best]
    assert [c.score for c in together.candidates] == pytest.approx(scores.mean(0)[best].tolist(), abs=1e-6)
    p = torch.softmax(scores.double().sum(0) / locator.calibration.temperature, 0)
    assert together.confidence == pytest.approx(float(p.max()))
    # the same from a queries file: a line starting with + adds to the place above
    places = run_locate(
        tmp_path, release_dir, f"ckpt_path={checkpoint}", "queries=-", stdin=f"{first}\n+ {second}\na lake\n"
    )
    assert [place.descriptions for place in places] == [[first, second], ["a lake"]]
    assert [c.file for c in places[0].candidates] == [c.file for c in together.candidates]


def test_follow_up_lines_and_also_are_checked():
    from cvgtext.commands.queries import read_places

    assert read_places(None, "-", stdin=io.StringIO("one\n+ two\n+three\nfour\n")) == [
        ["one", "two", "three"],
        ["four"],
    ]
    assert read_places("one", None, also=["two", "three"]) == [["one", "two", "three"]]
    assert read_places("one", None, also="two") == [["one", "two"]]
    with pytest.raises(ConfigError, match="starts with '\\+', which adds to the place above"):
        read_places(None, "-", stdin=io.StringIO("+ two\none\n"))
    with pytest.raises(ConfigError, match="description 2 is a lone '\\+'"):
        read_places(None, "-", stdin=io.StringIO("one\n+\n"))
    with pytest.raises(ConfigError, match="also= adds descriptions to query="):
        read_places(None, "-", also="two", stdin=io.StringIO("one\n"))
    with pytest.raises(ConfigError, match="holds an empty description"):
        read_places("one", None, also=["two", " "])


@pytest.mark.slow
def test_the_calibration_is_fitted_on_validation_for_each_weights_and_reused(release_dir, tmp_path, caplog):
    import logging

    from cvgtext.commands.locator import Locator
    from cvgtext.retrieval.calibration import fit_temperature

    caplog.set_level(logging.INFO)
    first, second = tiny_checkpoint(tmp_path / "a.ckpt", seed=7), tiny_checkpoint(tmp_path / "b.ckpt", seed=8)

    def locator(checkpoint):
        overrides = [f"paths.cache_dir={tmp_path}/cache", *locate_overrides(release_dir, f"ckpt_path={checkpoint}")]
        return Locator(compose_config("locate", overrides, tmp_path))

    a = locator(first)
    assert "fitting the calibration" in caplog.text and "(none stored)" in caplog.text
    # the temperature is the validation captions' against the whole gallery, fitted independently here
    import json

    from cvgtext.data.annotations import in_validation

    validation = {
        name: caption
        for version in (CITY, f"{CITY}-photos")
        for name, caption in json.loads((release_dir / "annotation" / version / "train.json").read_text()).items()
        if in_validation(name, 0.3)
    }
    embeddings = a.embed(list(validation.values()))
    true = torch.tensor([a.rows[name] for name in validation])
    assert a.calibration.temperature == pytest.approx(
        fit_temperature(embeddings @ a.gallery.embeddings.T, true).temperature, rel=1e-6
    )
    caplog.clear()
    b = locator(second)
    assert "fitting the calibration" in caplog.text and b.calibration.temperature != a.calibration.temperature
    caplog.clear()
    again = locator(first)
    assert "reusing the calibration" in caplog.text and again.calibration == a.calibration
    # a gallery without the validation tiles (split=test) has them added for the fit, never test captions
    caplog.clear()
    overrides = [
        f"paths.cache_dir={tmp_path}/cache",
        *locate_overrides(release_dir, f"ckpt_path={first}", "split=test"),
    ]
    tested = Locator(compose_config("locate", overrides, tmp_path))
    assert f"the validation split's {len(validation)} tiles not in the gallery are added" in caplog.text
    assert len(tested.gallery.names) == 9 and tested.calibration.queries == len(validation)
