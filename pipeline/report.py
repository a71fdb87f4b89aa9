"""The run report: one self-contained ``report.html`` beside a run's products.

A report is built from values (:class:`Section`, :class:`Table`) by pure functions that return HTML text;
only :func:`write_report` touches the disk. The page needs nothing but itself: pictures are inline base64
PNGs, the style sheet is inline, there is no script, font or link to fetch, so it opens from a USB stick or
an air-gapped share exactly as it was written. Every value from a run (scene ids, class names, log lines) is
escaped with :func:`html.escape`.
"""

from __future__ import annotations

import base64
import html
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from pipeline.atomic import atomic_path

__all__ = ["REPORT_NAME", "Table", "Picture", "Section", "anchor_of", "render_section", "render_report",
           "write_report", "format_hectares", "format_share"]

REPORT_NAME = "report.html"
"""The report's file name in a run's output folder."""


@dataclass(frozen=True, slots=True)
class Table:
    """A table of text cells; columns listed in ``numeric`` are right-aligned (figures line up)."""

    caption: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    numeric: tuple[int, ...] = ()
    swatches: tuple[str, ...] = ()
    """Optional CSS colour per row, drawn as a small square before the first cell (a legend)."""


@dataclass(frozen=True, slots=True)
class Picture:
    """A PNG shown inline, with a caption."""

    caption: str
    png: bytes


@dataclass(frozen=True, slots=True)
class Section:
    """One scene, pair or timeline of a run: pictures first, then tables, facts and warnings."""

    title: str
    anchor: str = ""
    status: str = ""
    lead: str = ""
    """One line under the title with the figures that matter most (the answer before the details)."""
    pictures: tuple[Picture, ...] = ()
    tables: tuple[Table, ...] = ()
    facts: tuple[tuple[str, str], ...] = ()
    warnings: tuple[str, ...] = ()
    links: tuple[tuple[str, str], ...] = field(default=())
    """``(label, relative path)`` of the products, linked relative to the report (no absolute paths)."""


_ANCHOR_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def anchor_of(name: str) -> str:
    """An HTML id for a section: the name with anything but letters, digits, ``_.-`` replaced by ``-``."""
    return "s-" + (_ANCHOR_UNSAFE.sub("-", name).strip("-") or "section")


def format_hectares(area_m2: float) -> str:
    return f"{area_m2 / 1e4:,.2f}"


def format_share(part: float, whole: float) -> str:
    return f"{100.0 * part / whole:.1f} %" if whole > 0 else "–"


_CSS = """
:root { color-scheme: light; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; margin: 0;
       color: #1f2328; background: #f6f7f9; }
header { background: #24323f; color: #fff; padding: 18px 32px; }
header h1 { margin: 0; font-size: 24px; font-weight: 600; }
header p { margin: 4px 0 0; color: #c9d3dc; }
main { max-width: 1100px; margin: 0 auto; padding: 16px 32px 48px; }
section { background: #fff; border: 1px solid #d8dee4; border-radius: 6px; padding: 16px 20px; margin: 16px 0; }
h2 { margin: 0 0 12px; font-size: 20px; }
h3 { margin: 16px 0 6px; font-size: 15px; color: #444c56; }
figure { margin: 0 0 12px; }
figure img { max-width: 100%; height: auto; border: 1px solid #d8dee4; background:
             repeating-conic-gradient(#eee 0% 25%, #fff 0% 50%) 50% / 16px 16px; image-rendering: pixelated; }
figcaption { color: #57606a; font-size: 13px; }
.cols { display: flex; flex-wrap: wrap; gap: 24px; }
.cols > div { flex: 1 1 320px; }
table { border-collapse: collapse; margin: 4px 0 12px; min-width: 320px; }
caption { text-align: left; font-weight: 600; padding: 4px 0; color: #444c56; }
th, td { padding: 4px 12px; border-bottom: 1px solid #e5e9ed; text-align: left; }
th { background: #f0f3f6; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.sw { display: inline-block; width: 12px; height: 12px; margin-right: 8px; vertical-align: -1px;
      border: 1px solid #0003; }
dl { display: grid; grid-template-columns: max-content auto; gap: 2px 16px; margin: 4px 0 12px; }
dt { color: #57606a; } dd { margin: 0; word-break: break-word; }
.status { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 13px; margin-left: 8px;
          vertical-align: 2px; background: #ddf4e4; color: #1a7f37; }
.status.failed { background: #ffebe9; color: #cf222e; } .status.skipped { background: #eef1f4; color: #57606a; }
.warnings { background: #fff8c5; border: 1px solid #e5d68a; border-radius: 4px; padding: 6px 12px; }
.warnings li { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 13px; }
.none { color: #57606a; }
.lead { font-size: 16px; margin: -4px 0 12px; color: #24323f; }
a { color: #0969da; }
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _png_src(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def render_table(table: Table) -> str:
    cls = [' class="num"' if i in table.numeric else "" for i in range(len(table.header))]
    head = "".join(f"<th{c}>{_e(h)}</th>" for c, h in zip(cls, table.header, strict=True))
    body = []
    for r, row in enumerate(table.rows):
        cells = []
        for i, cell in enumerate(row):
            swatch = ""
            if i == 0 and r < len(table.swatches) and table.swatches[r]:
                swatch = f'<span class="sw" style="background:{_e(table.swatches[r])}"></span>'
            cells.append(f"<td{cls[i] if i < len(cls) else ''}>{swatch}{_e(cell)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f"<table><caption>{_e(table.caption)}</caption><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>")


def render_section(section: Section) -> str:
    """One ``<section>``: title (and status), pictures, tables, facts, products and warnings."""
    anchor = section.anchor or anchor_of(section.title)
    status = ""
    if section.status:
        status = f'<span class="status {_e(section.status)}">{_e(section.status)}</span>'
    parts = [f'<section id="{_e(anchor)}"><h2>{_e(section.title)}{status}</h2>']
    if section.lead:
        parts.append(f'<p class="lead">{_e(section.lead)}</p>')
    for picture in section.pictures:
        parts.append(f'<figure><img alt="{_e(picture.caption)}" src="{_png_src(picture.png)}">'
                     f"<figcaption>{_e(picture.caption)}</figcaption></figure>")
    tables = "".join(render_table(t) for t in section.tables)
    facts = ""
    if section.facts:
        facts = "<h3>Run</h3><dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in section.facts) + "</dl>"
    parts.append(f'<div class="cols"><div>{tables}</div><div>{facts}</div></div>' if tables else facts)
    if section.links:
        parts.append("<h3>Products</h3><ul>" + "".join(
            f'<li><a href="{_e(href)}">{_e(label)}</a></li>' for label, href in section.links) + "</ul>")
    parts.append("<h3>Warnings</h3>")
    if section.warnings:
        parts.append('<ul class="warnings">' + "".join(f"<li>{_e(w)}</li>" for w in section.warnings) + "</ul>")
    else:
        parts.append('<p class="none">none</p>')
    parts.append("</section>")
    return "".join(parts)


def render_index(sections: Sequence[Section]) -> str:
    """A table of every section with its status, each linking to its section (a batch's scene list)."""
    rows = []
    for s in sections:
        anchor = s.anchor or anchor_of(s.title)
        status = f'<span class="status {_e(s.status)}">{_e(s.status)}</span>' if s.status else ""
        rows.append(f'<tr><td><a href="#{_e(anchor)}">{_e(s.title)}</a></td><td>{status}</td></tr>')
    return ('<section id="index"><h2>Scenes</h2><table><thead><tr><th>scene</th><th>status</th></tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></section>")


def render_report(title: str, subtitle: str, sections: Sequence[Section], *, index: bool = False,
                  preamble: Section | None = None) -> str:
    """The whole page: a header, an optional index of sections (batches), then each section."""
    body = [render_section(preamble)] if preamble is not None else []
    if index:
        body.append(render_index(sections))
    body.extend(render_section(s) for s in sections)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
            f"<header><h1>{_e(title)}</h1><p>{_e(subtitle)}</p></header><main>{''.join(body)}</main>"
            "</body></html>\n")


def write_report(path: str | os.PathLike[str], text: str) -> None:
    """Write the page atomically (a reader never sees half a report)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
