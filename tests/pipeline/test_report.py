"""The report's HTML from values (no files, no browser) and the class-area counting it shows."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

from pipeline.colours import rgba as hex_to_rgba
from pipeline.inference.summary import colorize_classes, count_class_areas, encode_classes_png
from pipeline.report import Picture, Section, Table, anchor_of, render_report, render_section

PNG = encode_classes_png(np.zeros((2, 3), dtype=np.uint8), ("#d9cfb4",))


def section(title: str = "scene", **values: object) -> Section:
    table = Table("Area per class", ("class", "area (ha)"), (("vegetation", "1.00"),), numeric=(1,),
                  swatches=("#00ff00",))
    return Section(title=title, pictures=(Picture("classes", PNG),), tables=(table,),
                   facts=(("model", "vegetation 1.0"),), **values)  # type: ignore[arg-type]


def test_every_value_is_escaped() -> None:
    evil = '<script>alert("x")</script>'
    page = render_report(evil, evil, [Section(title=evil, facts=((evil, evil),), warnings=(evil,),
                                              tables=(Table(evil, (evil,), ((evil,),)),),
                                              links=((evil, evil),))])
    assert "<script>" not in page
    assert page.count("&lt;script&gt;") >= 7


def test_page_is_self_contained() -> None:
    page = render_report("t", "s", [section(links=(("a.tif", "a.tif"),))])
    for target in re.findall(r'(?:src|href)="([^"]*)"', page):
        assert not target.startswith(("http:", "https:", "//")), target
    assert "http" not in " ".join(re.findall(r'(?:src|href)="([^"]*)"', page))
    assert "<link" not in page and "<script" not in page and "@import" not in page and "url(" not in page
    src = re.search(r'<img alt="classes" src="data:image/png;base64,([^"]+)"', page)
    assert src is not None and base64.b64decode(src.group(1)) == PNG


def test_batch_index_links_to_each_section() -> None:
    sections = [section("a b", status="done"), section("c/d", status="failed")]
    page = render_report("run", "s", sections, index=True)
    for s in sections:
        anchor = anchor_of(s.title)
        assert f'href="#{anchor}"' in page and f'id="{anchor}"' in page
    assert 'class="status failed"' in page


def test_section_without_warnings_says_none() -> None:
    assert '<p class="none">none</p>' in render_section(section())
    assert '<ul class="warnings"><li>careful</li></ul>' in render_section(section(warnings=("careful",)))


def test_class_areas_match_a_direct_count() -> None:
    rng = np.random.default_rng(0)
    classes = rng.integers(0, 3, size=(40, 30)).astype(np.uint8)
    classes[rng.random((40, 30)) < 0.1] = 255
    classes[0, 0] = 7  # no such class: counted as no data
    row_areas = np.linspace(1.0, 2.0, 40)
    pixels, area = count_class_areas(classes, row_areas, 3)
    for value in range(3):
        assert pixels[value] == np.sum(classes == value)
        assert area[value] == pytest.approx(np.sum((classes == value) * row_areas[:, None]))
    assert pixels[3] == np.sum((classes == 255) | (classes == 7))
    assert pixels.sum() == classes.size


def test_colorize_makes_nodata_transparent() -> None:
    classes = np.array([[0, 1], [255, 1]], dtype=np.uint8)
    rgba = colorize_classes(classes, ("#d9cfb4", "#1a9641"))
    assert tuple(rgba[0, 0]) == hex_to_rgba("#d9cfb4")
    assert tuple(rgba[0, 1]) == (0x1a, 0x96, 0x41, 255)
    assert rgba[1, 0, 3] == 0
    # the report's palette PNG decodes to the same RGBA pixels
    with Image.open(io.BytesIO(encode_classes_png(classes, ("#d9cfb4", "#1a9641")))) as png:
        assert png.mode == "P"
        np.testing.assert_array_equal(np.asarray(png.convert("RGBA")), rgba)
