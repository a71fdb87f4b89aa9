"""report.html written by real runs, read as HTML and opened in a real headless Chromium.

``scenewatch predict`` on the bundled sample (tile size 256) and ``scenewatch change`` on the bundled pair
run once per module, as a user runs them (the installed command, one worker). Then:

* the HTML itself: the area table agrees with an independent numpy count on the class COG, nothing points at
  the network, the quicklook is inline;
* Chromium (Debian's ``chromium``; CI installs it in ``.ci/setup``): ``--screenshot`` must show the map
  (the model's class colours, many colours, not all white), ``--dump-dom`` must hold the tables, and the
  browser's log (``--enable-logging=stderr``) must hold no console message: the page has no script, so
  any ``CONSOLE`` line or ``Uncaught`` is a fault. A page that throws is shown to be caught that way.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import rasterio

from pipeline.colours import class_colours
from pipeline.colours import rgba as hex_to_rgba
from pipeline.products import class_names_from_tags

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "examples" / "data"
BEFORE = DATA / "m_4709963_se_14_1_20090818.tif"
AFTER = DATA / "m_4709963_se_14_1_20200831.tif"
SCENEWATCH = Path(sys.executable).parent / "scenewatch"

pytestmark = pytest.mark.slow


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


needs_chromium = pytest.mark.skipif(chromium() is None,
                                    reason="no chromium on PATH (CI installs Debian's chromium in .ci/setup)")


def scenewatch(*args: str | Path) -> subprocess.CompletedProcess[str]:
    run = subprocess.run([str(SCENEWATCH), *map(str, args)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert run.returncode == 0, run.stderr
    return run


@pytest.fixture(scope="module")
def predicted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("predict")
    run = scenewatch("predict", AFTER, "--model", "vegetation", "--bands", "naip", "--tile-size", "256",
                     "--workers", "1", "--format", "gpkg", "--out", out, "-q")
    return out, run.stdout


@pytest.fixture(scope="module")
def changed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("change")
    scenewatch("change", BEFORE, AFTER, "--model", "vegetation", "--bands", "naip", "--tile-size", "256",
               "--workers", "1", "--out", out, "-q")
    return out


class _Tables(HTMLParser):
    """Every table's rows as lists of cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def tables_of(text: str) -> list[list[list[str]]]:
    parser = _Tables()
    parser.feed(text)
    return parser.tables


def independent_areas_ha(classes: Path) -> dict[str, float]:
    """Hectares per class straight from the COG: a bincount times the projected pixel area."""
    with rasterio.open(classes) as src:
        data = src.read(1)
        names = class_names_from_tags(src.tags())
        assert src.crs.is_projected and src.crs.linear_units_factor[1] == 1.0
        pixel_m2 = abs(src.transform.a * src.transform.e)
    counts = np.bincount(data[data != 255].ravel(), minlength=len(names))
    return {name: counts[i] * pixel_m2 / 1e4 for i, name in enumerate(names)}


def test_predict_prints_areas_and_writes_quicklook_and_report(predicted: tuple[Path, str]) -> None:
    out, stdout = predicted
    stem = AFTER.stem
    expected = independent_areas_ha(out / f"{stem}.classes.tif")
    for name, hectares in expected.items():
        assert f"  {name}: {hectares:,.2f} ha" in stdout
    quicklook = out / f"{stem}.quicklook.png"
    assert quicklook.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "report.html").exists()


def test_predict_report_tables_match_the_class_raster(predicted: tuple[Path, str]) -> None:
    out, _ = predicted
    text = (out / "report.html").read_text(encoding="utf-8")
    expected = independent_areas_ha(out / f"{AFTER.stem}.classes.tif")
    area_table = next(t for t in tables_of(text) if t[0][:2] == ["class", "area (ha)"])
    shown = {row[0]: float(row[1].replace(",", "")) for row in area_table[1:]}
    for name, hectares in expected.items():
        assert shown[name] == pytest.approx(hectares, abs=0.005)
    assert shown["total (valid)"] == pytest.approx(sum(expected.values()), abs=0.01)
    assert html.escape(AFTER.stem) in text and "vegetation" in text
    targets = re.findall(r'(?:src|href)="([^"]*)"', text)
    assert targets and not any("http" in t for t in targets)
    assert all(t.startswith(("data:image/png;base64,", "#")) or not os.path.isabs(t) for t in targets)


def test_change_report_lists_the_transitions(changed: Path) -> None:
    text = (changed / "report.html").read_text(encoding="utf-8")
    change_tif = next(changed.glob("*.change.tif"))
    with rasterio.open(change_tif) as src:
        codes = src.read(1)
        names = class_names_from_tags(src.tags())
        pixel_m2 = abs(src.transform.a * src.transform.e)
    table = next(t for t in tables_of(text) if t[0][:2] == ["transition", "area (ha)"])
    shown = {row[0]: float(row[1].replace(",", "")) for row in table[1:]}
    assert shown
    for name, hectares in shown.items():
        code = names.index(name)
        assert hectares == pytest.approx(np.sum(codes == code) * pixel_m2 / 1e4, abs=0.005)


def test_timeline_report_has_the_area_per_class_per_date(tmp_path: Path) -> None:
    import pandas as pd

    scenewatch("timeline", BEFORE, AFTER, "--model", "vegetation", "--bands", "naip", "--tile-size", "256",
               "--workers", "1", "--out", tmp_path, "-q")
    text = (tmp_path / "report.html").read_text(encoding="utf-8")
    table = next(t for t in tables_of(text) if t[0][0] == "date")
    areas = pd.read_csv(tmp_path / "timeline.areas.csv")
    assert [row[0] for row in table[1:]] == ["2009-08-18", "2020-08-31"]
    for row in table[1:]:
        for name, cell in zip(table[0][1:-1], row[1:-1], strict=True):
            m2 = areas[(areas["date"].astype(str).str[:10] == row[0]) & (areas["class"] == name)]["area_m2"].sum()
            assert float(cell.replace(",", "")) == pytest.approx(m2 / 1e4, abs=0.005)
    assert "timeline.areas.png" in text


def test_batch_report_links_every_item_to_its_section(tmp_path: Path) -> None:
    out = tmp_path / "batch"
    scenewatch("run", REPO / "workflows" / "jobs" / "naip_vegetation_change.yaml", "--out", out, "-q")
    text = (out / "report.html").read_text(encoding="utf-8")
    index = next(t for t in tables_of(text) if t[0] == ["scene", "status"])
    items = [row[0] for row in index[1:]]
    assert BEFORE.stem in items and AFTER.stem in items and len(items) == 3
    for anchor in re.findall(r'<td><a href="#([^"]+)">', text):
        assert f'id="{anchor}"' in text
    assert all(row[1] == "done" for row in index[1:])


def browse(page: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    browser = chromium()
    assert browser is not None
    return subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                           "--v=0", *flags, page.resolve().as_uri()], capture_output=True, text=True, timeout=120)


def console_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def screenshot(page: Path, png: Path) -> np.ndarray:
    from PIL import Image

    run = browse(page, f"--screenshot={png}", "--window-size=1200,2000")
    assert run.returncode == 0 and png.exists(), run.stderr[-2000:]
    assert console_lines(run.stderr) == []
    with Image.open(png) as image:
        return np.asarray(image.convert("RGB"))


def assert_not_blank(pixels: np.ndarray) -> None:
    flat = pixels.reshape(-1, 3)
    assert not np.all(flat == 255)
    assert len(np.unique(flat, axis=0)) > 20


@needs_chromium
def test_console_errors_are_caught(tmp_path: Path) -> None:
    """The control: a page that logs and throws shows up in the lines the tests scan."""
    page = tmp_path / "bad.html"
    page.write_text("<!DOCTYPE html><p>x</p><script>console.error('bad'); throw new Error('boom')</script>")
    lines = console_lines(browse(page, f"--screenshot={tmp_path / 'bad.png'}", "--window-size=400,300").stderr)
    assert any("boom" in line for line in lines)


@needs_chromium
def test_predict_report_in_chromium(predicted: tuple[Path, str], tmp_path: Path) -> None:
    out, _ = predicted
    pixels = screenshot(out / "report.html", tmp_path / "predict.png")
    assert_not_blank(pixels)
    # the map is drawn: many pixels in exactly the model's class colours (an undecoded image leaves none)
    with rasterio.open(out / f"{AFTER.stem}.classes.tif") as src:
        names = class_names_from_tags(src.tags())
    for colour in class_colours(names):
        rgb = np.array(hex_to_rgba(colour)[:3])
        assert np.sum(np.all(pixels == rgb, axis=-1)) > 10_000, colour
    dom = browse(out / "report.html", "--dump-dom")
    assert dom.returncode == 0
    tables = tables_of(dom.stdout)
    assert any(t[0][:2] == ["class", "area (ha)"] for t in tables)


@needs_chromium
def test_change_report_in_chromium(changed: Path, tmp_path: Path) -> None:
    pixels = screenshot(changed / "report.html", tmp_path / "change.png")
    assert_not_blank(pixels)
    dom = browse(changed / "report.html", "--dump-dom")
    assert any(t[0][:2] == ["transition", "area (ha)"] for t in tables_of(dom.stdout))


def test_a_report_that_cannot_be_written_is_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from pipeline.report import Section
    from workflows.report import captured_warnings, write_run_report

    blocker = tmp_path / "out"
    blocker.write_text("a file where the output folder should be")
    with captured_warnings() as warned, caplog.at_level(logging.WARNING, logger="scenewatch"):
        assert write_run_report(blocker, "t", [Section(title="s")]) is None
    assert len(warned) == 1 and "report" in warned[0] and "not written" in warned[0]
