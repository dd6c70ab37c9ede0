"""`adapters zoo report`: a static page from the cards, checked as text and as a real browser loads it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from capabilities import mnist_data, need
from click.testing import CliRunner
from test_build import TINY

from adapterhub_lite.cli import cli
from adapterhub_lite.zoo import Zoo

need("mnist-data", mnist_data())
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")
DRIVERS = ("chromedriver",)


@pytest.fixture(scope="module")
def built_zoo(tmp_path_factory) -> Zoo:
    """The tiny build of test_build: bases, adapters with metrics and curves, a sample grid."""
    root = tmp_path_factory.mktemp("report")
    (root / "recipes.json").write_text(json.dumps(TINY))
    result = CliRunner().invoke(cli, ["zoo", "build", "--profile", "tiny", "--recipes", str(root / "recipes.json"),
                                      "--zoo", str(root / "zoo")])
    assert result.exit_code == 0, result.output
    return Zoo(root / "zoo")


def _report(zoo: Zoo, out: Path) -> dict:
    result = CliRunner().invoke(cli, ["zoo", "report", "--zoo", str(zoo.root), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def _page(folder: Path) -> str:
    return (folder / "index.html").read_text()


def test_the_page_holds_lineage_curves_charts_and_grids(built_zoo, tmp_path) -> None:
    counts = _report(built_zoo, tmp_path / "r")
    page = _page(tmp_path / "r")
    entries = list(built_zoo.entries())
    assert counts["entries"] == len(entries) == 6  # per seed 0, 1: a richboynet base and nines; a ddpm base, inv
    for entry in entries:  # every entry is a node of its model's lineage, and has its section
        assert f"<title>{entry.ref} ({entry.entry_type})</title>" in page and f'id="{entry.ref}"' in page
    trained = [e for e in entries if "training" in e.card]
    assert counts["curves"] == len(trained) > 0 and page.count('class="curve"') == len(trained)
    # each richboynet adapter: its task's per-digit chart for "all" and for its trained digits
    nines = [e for e in entries if e.name == "nines"]
    assert page.count("accuracy per digit (trained_classes)") == len(nines) == 2
    assert counts["grids"] == 1 and page.count('src="img/inv-half-seed0.png"') == 1
    assert (tmp_path / "r" / "img" / "inv-half-seed0.png").read_bytes() == (built_zoo.root / "grids" /
                                                                            "inv-half-seed0.png").read_bytes()
    # the build's results table: each evaluated step's headline, mean over the seeds it ran
    assert counts["results"] == 1 and "results-tiny.json" in page and "<td>nines-half</td>" in page
    edges = page.count('class="edge"')
    assert edges == sum(1 for e in entries if e.card.get("parents")), "one edge per parent link"


def test_card_text_is_escaped_and_a_damaged_card_is_listed(built_zoo, tmp_path) -> None:
    zoo = Zoo(tmp_path / "zoo")
    shutil.copytree(built_zoo.root, zoo.root)
    card_path = next(zoo.entries("richboynet")).path / "card.json"
    card = json.loads(card_path.read_text())
    card["created"] = "<script>alert(1)</script>"
    card_path.write_text(json.dumps(card))
    (zoo.root / "richboynet" / "nines" / "v2" / "card.json").write_text("[]")
    counts = _report(zoo, tmp_path / "r")
    page = _page(tmp_path / "r")
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert counts["damaged"] == 1 and "richboynet/nines@v2" in page.split("Damaged entries")[1][:300]


def test_no_zoo_is_one_line(tmp_path) -> None:
    result = CliRunner().invoke(cli, ["zoo", "report", "--zoo", str(tmp_path / "none")])
    assert result.exit_code == 1 and "no zoo at" in result.output and not (tmp_path / "none").exists()


def test_an_unrelated_folder_is_never_overwritten(built_zoo, tmp_path) -> None:
    (tmp_path / "mine" / "img").mkdir(parents=True)
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    result = CliRunner().invoke(cli, ["zoo", "report", "--zoo", str(built_zoo.root), "--out", str(tmp_path / "mine")])
    assert result.exit_code == 1 and "holds something other than a zoo report" in result.output
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["img", "notes.txt"]
    _report(built_zoo, tmp_path / "again")
    _report(built_zoo, tmp_path / "again")  # a report folder is rewritten
    assert (tmp_path / "again" / "index.html").is_file()


def _tool(names: tuple[str, ...], variable: str) -> str:
    found = next((shutil.which(n) for n in [os.environ.get(variable, ""), *names] if n and shutil.which(n)), None)
    if found is None:
        need("browser", False)  # .ci/run installs them and requires this test
    return found


def test_a_real_browser_loads_the_page_without_errors(built_zoo, tmp_path, monkeypatch) -> None:
    """Selenium drives Chromium: no console error, every image loads, the lineage shows every entry, and the
    screenshot shows the lineage boxes; a deleted image is caught by the same check."""
    from PIL import Image
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = _tool(BROWSERS, "ADAPTERS_TEST_BROWSER"), _tool(DRIVERS, "ADAPTERS_TEST_DRIVER")
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must not look for downloads
    _report(built_zoo, tmp_path / "r")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,900",
                 f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    images_js = "return [...document.images].map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0])"
    try:
        driver.get((tmp_path / "r" / "index.html").as_uri())
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
        images = driver.execute_script(images_js)
        assert images and all(ok for _, ok in images), images
        nodes = driver.execute_script(
            "return [...document.querySelectorAll('svg.lineage g.node title')].map(t => t.textContent)")
        assert sorted(nodes) == sorted(f"{e.ref} ({e.entry_type})" for e in built_zoo.entries())
        shot = tmp_path / "shot.png"
        shot.write_bytes(driver.get_screenshot_as_png())
        colours = {c for _, c in Image.open(shot).convert("RGB").getcolors(maxcolors=1 << 20)}
        assert (0xD9, 0xE7, 0xFB) in colours and (0xE3, 0xF4, 0xDF) in colours, "base and adapter boxes drawn"
        for image in (tmp_path / "r" / "img").iterdir():  # the same checks catch a missing image
            image.unlink()
        driver.get((tmp_path / "r" / "index.html").as_uri())
        assert not all(ok for _, ok in driver.execute_script(images_js))
        assert any(e["level"] == "SEVERE" for e in driver.get_log("browser"))
    finally:
        driver.quit()
