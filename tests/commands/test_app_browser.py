"""The web page in a real headless browser: Debian's chromium, driven by Playwright.

A tiny model is trained on a small synthetic city (about a minute), ``app.py`` serves it in
a process of its own on 127.0.0.1, and the browser types descriptions as a person would.
The caption typed is one the model was trained on: this checks that the page shows what the
model ranks, not how well it generalises. ``CVGTEXT_SCREENSHOT=path.png`` keeps the
screenshot (the README's ``docs/app.png``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from helpers.runs import ROOT, compose_config
from helpers.web import HTML_TEXT, free_port

pytestmark = pytest.mark.heavy

PLACES = 80
CITY_SETTINGS = [f"city.synthetic.places={PLACES}", "city.synthetic.tile_size=128"]
STARTUP_S = 180  # bounded waits: the server's start (torch, Gradio, the gallery index), each answer
ANSWER_MS = 60_000
LAID_OUT = {"table": "#results table.candidates", "map": "#map", "neighbourhood": "#neighbourhood"}


def find_chromium() -> str:
    """The system's chromium (``CVGTEXT_CHROMIUM`` first); skips the test, saying why, without one."""
    for candidate in (os.environ.get("CVGTEXT_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        found = candidate and shutil.which(candidate)
        if found:
            return found
    pytest.skip("no chromium on this machine (apt-get install chromium, or set CVGTEXT_CHROMIUM)")


def wait_until_served(process: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"app.py exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "config", timeout=5):
                return
        except OSError:
            time.sleep(1)
    pytest.fail(f"app.py did not serve {url} within {STARTUP_S} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """``(data_dir, checkpoint)``: a tiny model trained for 30 epochs on an 80-place synthetic city."""
    from cvgtext.commands.train import train

    root = tmp_path_factory.mktemp("app-city")
    data_dir, run_dir = root / "data", root / "logs" / "train" / "runs" / "r"
    cfg = compose_config(
        "train",
        [
            f"paths.data_dir={data_dir}",
            f"paths.log_dir={root / 'logs'}",
            f"paths.output_dir={run_dir}",
            f"paths.cache_dir={root / 'cache'}",
            "trainer=cpu",
            "trainer.max_epochs=30",
            "test=false",
            "logger=csv",
            "data.num_workers=0",
            "run_id=r",
            *CITY_SETTINGS,
        ],
        root,
    )
    train(cfg)
    return data_dir, run_dir / "checkpoints" / "last.ckpt"


def check_layout(page) -> None:
    """At 1280 x 1000: the table, the map and the neighbourhood map do not overlap, the table's
    last column is inside the page, and no tile caption is cut."""
    boxes = {name: page.locator(selector).bounding_box() for name, selector in LAID_OUT.items()}
    assert all(boxes.values()), boxes

    def overlap(a, b) -> bool:
        return (
            a["x"] < b["x"] + b["width"] - 1
            and b["x"] < a["x"] + a["width"] - 1
            and a["y"] < b["y"] + b["height"] - 1
            and b["y"] < a["y"] + a["height"] - 1
        )

    names = list(boxes)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            assert not overlap(boxes[first], boxes[second]), f"{first} overlaps {second}: {boxes}"
    last = page.locator("#results table.candidates th").last
    assert last.inner_text().strip() == "metres from 1"
    header = last.bounding_box()
    assert header["x"] + header["width"] <= boxes["table"]["x"] + boxes["table"]["width"] + 1 <= 1280
    overflowing = page.eval_on_selector_all(
        "#results table.candidates td, #results table.candidates th",
        "cells => cells.filter(c => c.scrollWidth > c.clientWidth + 1).map(c => c.innerText)",
    )
    assert not overflowing, f"table cells cut or running into their neighbours: {overflowing}"
    cut = page.eval_on_selector_all(
        "#tiles .caption-label", "labels => labels.filter(l => l.scrollWidth > l.clientWidth + 1).map(l => l.innerText)"
    )
    captions = page.eval_on_selector_all("#tiles .caption-label", "labels => labels.map(l => l.innerText)")
    assert len(captions) == 5 and not cut, f"captions cut: {cut}"


def test_a_description_typed_in_the_browser_finds_its_tile(trained, tmp_path):
    chromium = find_chromium()
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    data_dir, checkpoint = trained
    captions = json.loads((data_dir / "annotation" / "Synthetic" / "train.json").read_text())
    (tile, caption), (_, second) = list(captions.items())[:2]
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    log = tmp_path / "app.log"
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "GRADIO_ANALYTICS_ENABLED": "False"}
    with open(log, "w") as output:
        server = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "app.py"),
                f"ckpt_path={checkpoint}",
                f"paths.data_dir={data_dir}",
                f"paths.cache_dir={tmp_path / 'cache'}",
                f"paths.log_dir={tmp_path / 'logs'}",
                f"port={port}",
                "top_k=5",
                *CITY_SETTINGS,
            ],
            cwd=tmp_path,
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_served(server, url, log)
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            outside, dialogs = [], []
            page.on(
                "request",
                lambda request: (
                    outside.append(request.url) if not request.url.startswith((url, "data:", "blob:")) else None
                ),
            )
            page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
            page.goto(url)

            def ask(text: str, wait_for: str) -> None:
                page.fill("#query textarea", text)
                page.click("#ask")
                page.wait_for_selector(wait_for, timeout=ANSWER_MS)

            def shown_files() -> list[str]:
                return page.eval_on_selector_all("#results tr[data-file]", "rows => rows.map(r => r.dataset.file)")

            # A person takes a few seconds to type: the page's front end has started by then (timed
            # at once, the first answer also paid for that start, about 0.4 s more).
            page.wait_for_timeout(3000)
            started = time.perf_counter()
            ask(caption, f'#results table.candidates[data-query^="{" ".join(caption.split())[:40]}"]')
            answered = time.perf_counter() - started
            assert tile in shown_files(), f"{tile} not among {shown_files()}"
            status = page.inner_text("#status")
            assert len(shown_files()) == 5 and "Best match" in status
            # how sure, in words and in numbers, and the area
            assert "% that tile 1 is the place" in status and "lies within" in status
            assert any(words in status for words in ("Likely", "Possible", "Not sure: these are guesses"))
            page.wait_for_selector("#words .relevance", timeout=ANSWER_MS)  # the overlays' second step
            page.wait_for_selector("#neighbourhood img", timeout=ANSWER_MS)  # and the neighbourhood map
            assert page.locator("#tiles img").count() == 5 and page.locator("#map img").count() == 1
            check_layout(page)
            screenshot = tmp_path / "app.png"
            page.screenshot(path=screenshot, full_page=True)
            print(f"the first answer shown in the browser {answered:.2f} s after the click; screenshot {screenshot}")
            if os.environ.get("CVGTEXT_SCREENSHOT"):
                shutil.copyfile(screenshot, os.environ["CVGTEXT_SCREENSHOT"])
            started = time.perf_counter()
            ask(second, f'#results table.candidates[data-query^="{" ".join(second.split())[:40]}"]')
            print(f"a second description answered in the browser {time.perf_counter() - started:.2f} s after the click")

            # a further description of the same place: the answer comes from both
            page.fill("#query textarea", "a roundabout with a park")
            page.click("#more")
            page.wait_for_selector("#status >> text=from 2 descriptions of this place", timeout=ANSWER_MS)
            assert page.locator("#status ol.descriptions li").count() == 2 and len(shown_files()) == 5
            page.wait_for_function(  # the second step of the further description, drawn
                "() => !document.querySelector('#neighbourhood').innerText.includes('processing')", timeout=ANSWER_MS
            )
            check_layout(page)
            if os.environ.get("CVGTEXT_SCREENSHOT_FOLLOW_UP"):
                page.screenshot(path=os.environ["CVGTEXT_SCREENSHOT_FOLLOW_UP"], full_page=True)

            ask("   ", "#status >> text=Describe the place you see")
            ask(HTML_TEXT, '#results table.candidates[data-query^="<script>"]')
            assert page.locator("#results script").count() == 0 and page.locator("#results b").count() == 0
            ask("a red roof " * 1000, "#status >> text=characters long")
            assert len(shown_files()) == 5
            ask("屋根が赤い家と二本の木", "#status >> text=English descriptions")
            assert len(shown_files()) == 5
            assert "Traceback" not in page.inner_text("body")
            assert not dialogs, f"the page ran script from the text: {dialogs}"
            assert not outside, f"the page fetched from outside 127.0.0.1: {outside}"
            browser.close()
        assert server.poll() is None, "the server stopped while answering"
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=30)
