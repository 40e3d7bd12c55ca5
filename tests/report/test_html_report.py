"""The interactive report (index.html): built from run folders, then driven in headless Chromium via playwright."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from harness.report import write_report
from tests.report.html_report_fixture import synth_suite

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A report of the synthetic suite (one run lacks cost, timing and metrics); its folder."""
    root = tmp_path_factory.mktemp("html")
    synth_suite(root / "runs")
    write_report("tiny", root / "runs", root / "reports")
    return root / "reports" / "tiny"


def test_page_is_self_contained_and_names_what_is_missing(report: Path) -> None:
    page = (report / "index.html").read_text()
    assert "cdn" not in page.lower() and "https://" not in page.split('id="report-data"')[0]
    assert (report / "plotly.min.js").stat().st_size > 1_000_000
    assert "cost.json missing" in page and "metrics.json missing" in page
    assert len(list((report / "images" / "cfg-omega2").glob("*.png"))) == 16
    assert "Seed-to-seed spread" in page


def test_page_is_deterministic(report: Path, tmp_path: Path) -> None:
    synth_suite(tmp_path / "runs")
    write_report("tiny", tmp_path / "runs", tmp_path / "reports")
    assert (tmp_path / "reports" / "tiny" / "index.html").read_text() == (report / "index.html").read_text()


def test_search_suite_shows_pruned_points_and_rungs(tmp_path: Path) -> None:
    synth_suite(tmp_path / "runs", broken=False)
    evaluations = [{"run": r, "metrics": {"fd_testbed": 30.0 - i, "fd_testbed_ci": [29.0 - i, 31.0 - i]}}
                   for i, r in enumerate(["cfg-omega2", "sg-omega2", "cfg_sg"])]
    record = {"suite": "tiny", "metric": "fd_testbed", "cost": "gflops", "front": ["cfg_sg"], "samples": 16,
              "samples_spent": 40, "samples_full_grid": 48, "rung_samples": [8, 16], "budget": {"text": "48"},
              "complete": True, "rungs": [{"samples": 8, "scores": {}, "promoted": ["sg-omega2", "cfg_sg"],
                                           "evaluations": evaluations},
                                          {"samples": 16, "scores": {}, "promoted": [],
                                           "evaluations": evaluations[1:]}]}
    (tmp_path / "runs" / "tiny" / "search.json").write_text(json.dumps(record))
    write_report("tiny", tmp_path / "runs", tmp_path / "reports")
    page = (tmp_path / "reports" / "tiny" / "index.html").read_text()
    assert "pruned at 8 samples" in page and "Search rungs" in page


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium from the system package, driven by playwright; skips where either is missing."""
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no {CHROMIUM}: `make browser` installs Debian's chromium")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def test_page_in_a_browser(report: Path, browser, tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 2400})
    errors, outside = [], []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda err: errors.append(str(err)))

    def route(r) -> None:
        if r.request.url.startswith("file://"):
            r.continue_()
        else:
            outside.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.goto((report / "index.html").as_uri())
    page.wait_for_selector("#front-plot .scatterlayer .point")
    text = page.inner_text("body")
    for run in pd.read_csv(report / "results.csv")["run"]:
        assert run in text

    # every image of the side-by-side view loads; the two chosen runs show the same seeds in one row
    page.locator("#compare-grid").scroll_into_view_if_needed()
    page.wait_for_function("[...document.querySelectorAll('#compare-grid img')].every(i => i.complete)")
    widths = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
    assert widths and all(w > 0 for w in widths)
    first_row = page.locator("#compare-grid tbody tr").first
    cells = first_row.locator("td[data-key]")
    assert cells.count() == 2
    assert cells.nth(0).get_attribute("data-key") == cells.nth(1).get_attribute("data-key") == "s0"
    assert cells.nth(0).get_attribute("data-run") != cells.nth(1).get_attribute("data-run")

    # hovering a point shows its run id; clicking it opens the run's panel
    page.locator("#front").scroll_into_view_if_needed()
    expected = page.evaluate("document.getElementById('front-plot').data[0].customdata[0]")
    point = page.locator("#front-plot .scatterlayer .trace").first.locator(".point").first
    box = point.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)  # plotly's drag layer takes the pointer: hover by position
    page.wait_for_selector("#front-plot .hoverlayer .hovertext")
    assert expected in page.text_content("#front-plot .hoverlayer")
    page.screenshot(path=str(report / "screenshot.png"), full_page=True)
    shutil.copy(report / "screenshot.png", tmp_path / "screenshot.png")
    page.mouse.click(x, y)
    page.wait_for_selector("#panel:not([hidden])")
    assert expected in page.inner_text("#panel-body")
    page.click("#panel-close")

    # switching the metric redraws the front
    before = page.evaluate("document.getElementById('front-plot').layout.yaxis.title.text")
    options = page.eval_on_selector_all("#metric option", "os => os.map(o => o.value)")
    page.select_option("#metric", options[1])
    page.wait_for_function(f"document.getElementById('front-plot').dataset.drawn.startsWith('{options[1]}|')")
    assert page.evaluate("document.getElementById('front-plot').layout.yaxis.title.text") != before

    assert not errors, errors
    assert not outside, outside
    page.close()
