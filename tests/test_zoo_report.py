"""`adapters zoo report`: one self-contained page from the cards, checked as text and as a browser draws it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_build import TINY

from adapterhub_lite.cli import cli
from adapterhub_lite.zoo import Zoo

pytestmark = pytest.mark.skipif(not os.environ.get("ADAPTERS_DATA"), reason="needs MNIST in ADAPTERS_DATA")
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


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


def test_the_page_holds_lineage_curves_charts_and_grids(built_zoo, tmp_path) -> None:
    counts = _report(built_zoo, tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    entries = list(built_zoo.entries())
    assert counts["entries"] == len(entries) == 6  # per seed 0, 1: a richboynet base and nines; a ddpm base, inv
    for entry in entries:  # every entry is a node of its model's lineage, and has its section
        assert f"<title>{entry.ref} ({entry.kind})</title>" in page and f'id="{entry.ref}"' in page
    trained = [e for e in entries if "training" in e.card]
    assert counts["curves"] == len(trained) > 0 and page.count('class="curve"') == len(trained)
    # each richboynet adapter: its task's per-digit chart for "all" and for its trained digits
    nines = [e for e in entries if e.name == "nines"]
    assert page.count("accuracy per digit (trained_classes)") == len(nines) == 2
    assert counts["grids"] == 1 and page.count("data:image/png;base64,") == 1
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
    counts = _report(zoo, tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert counts["damaged"] == 1 and "richboynet/nines@v2" in page.split("Damaged entries")[1][:300]


def test_no_zoo_is_one_line(tmp_path) -> None:
    result = CliRunner().invoke(cli, ["zoo", "report", "--zoo", str(tmp_path / "none")])
    assert result.exit_code == 1 and "no zoo at" in result.output and not (tmp_path / "none").exists()


def _browser() -> str:
    found = next((b for b in [os.environ.get("ADAPTERS_TEST_BROWSER", ""), *BROWSERS] if b and shutil.which(b)), None)
    if found is None:
        if os.environ.get("ADAPTERS_REQUIRE_BROWSER"):
            pytest.fail("ADAPTERS_REQUIRE_BROWSER is set but no Chromium was found (apt install chromium)")
        pytest.skip("no headless Chromium here (apt install chromium); .ci/run installs it and requires it")
    return shutil.which(found)


def test_a_headless_browser_draws_the_page(built_zoo, tmp_path) -> None:
    """Chromium parses the page into the same nodes, and its screenshot shows the lineage boxes' colours."""
    from PIL import Image

    browser = _browser()
    _report(built_zoo, tmp_path / "r.html")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={tmp_path}/p"]
    url = (tmp_path / "r.html").as_uri()
    dom = subprocess.run([browser, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    assert len(re.findall(r'<g class="node">', dom)) == len(list(built_zoo.entries()))
    assert len(re.findall(r"<svg class=\"bars\"", dom)) > 0 and "<img" in dom
    shot = tmp_path / "shot.png"
    subprocess.run([browser, *flags, f"--screenshot={shot}", "--window-size=1200,900", url],
                   capture_output=True, timeout=120, check=True)
    pixels = Image.open(shot).convert("RGB")
    colours = {c for _, c in pixels.getcolors(maxcolors=1 << 20)}
    assert (0xD9, 0xE7, 0xFB) in colours, "the base boxes' fill is on screen"
    assert (0xE3, 0xF4, 0xDF) in colours, "the adapter boxes' fill is on screen"
