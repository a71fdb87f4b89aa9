"""Run reports: turn what a run returned into :mod:`pipeline.report` sections and write ``report.html``.

Orchestration only: the numbers come from the engine's results and from
:mod:`pipeline.inference.summary` (area per class, quicklook), the HTML from :mod:`pipeline.report`. A report
is a courtesy: :func:`write_run_report` never raises for a report's own failure (a bug in the report, a full
disk); it logs a warning and the run keeps its exit status.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.colours import class_colours
from pipeline.inference.summary import ClassAreas
from pipeline.report import (
    REPORT_NAME,
    Picture,
    Section,
    Table,
    format_hectares,
    format_share,
    render_report,
    write_report,
)

__all__ = ["captured_warnings", "class_area_table", "predict_section", "change_section", "timeline_section",
           "write_run_report", "report_path"]

log = logging.getLogger("scenewatch")


class _Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(record.getMessage())
        except Exception:  # noqa: BLE001 - a malformed log call must not break the run it reports on
            self.lines.append(str(record.msg))


@contextlib.contextmanager
def captured_warnings() -> Iterator[list[str]]:
    """Collect the scenewatch log's warnings (and errors) emitted inside the block, as their messages; the
    log itself is left as it was (its handlers still see every record)."""
    handler = _Collector()
    logger = logging.getLogger("scenewatch")
    logger.addHandler(handler)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)


def report_path(out_dir: str | os.PathLike[str]) -> Path:
    return Path(out_dir) / REPORT_NAME


def class_area_table(areas: ClassAreas, colors: Sequence[str] = (), caption: str = "Area per class") -> Table:
    """Class, hectares, share of the valid area and pixels; a last row for no data."""
    valid = areas.valid_m2
    rows = [(name, format_hectares(a), format_share(a, valid), f"{p:,}")
            for name, a, p in zip(areas.class_names, areas.area_m2, areas.pixels, strict=True)]
    rows.append(("total (valid)", format_hectares(valid), format_share(valid, valid), f"{sum(areas.pixels):,}"))
    rows.append(("no data", format_hectares(areas.nodata_m2), "–", f"{areas.nodata_pixels:,}"))
    swatches = tuple(colors[: len(areas.class_names)]) if colors else ()
    return Table(caption, ("class", "area (ha)", "share", "pixels"), tuple(rows), numeric=(1, 2, 3),
                 swatches=swatches)


def _model_facts(name: str, version: str, model_options: Mapping[str, Any], precision: str) -> list[tuple[str, str]]:
    options = ", ".join(f"{k}={v}" for k, v in sorted(model_options.items()) if v is not None and k != "precision")
    if precision == "auto":  # resolved inside each worker, per device; not reported back to the client
        precision = "auto (each worker picks: fp16 on a GPU; on a CPU the fastest backend it measured)"
    return [("model", f"{name} {version}".strip()), ("precision", precision),
            ("model options", options or "the model's defaults (threshold included)")]


def _links(out_dir: Path, paths: Sequence[Path | None]) -> tuple[tuple[str, str], ...]:
    found = []
    for path in paths:
        if path is None:
            continue
        try:
            href = os.path.relpath(path, out_dir)
        except ValueError:
            continue
        found.append((Path(path).name, Path(href).as_posix()))
    return tuple(found)


def _seconds(value: float) -> str:
    return f"{value:,.1f} s"


def predict_section(result: Any, areas: ClassAreas, quicklook_png: bytes | None, *, out_dir: str | os.PathLike[str],
                    model_options: Mapping[str, Any], config: Any, polygons: Any = None, seconds: float | None = None,
                    warnings: Sequence[str] = ()) -> Section:
    """A scene's section from a SceneResult (and the VectorResult of its layers, if written)."""
    info = result.model
    facts = [("scene", Path(result.scene).name), *_model_facts(info.name, info.version, model_options,
                                                                 str(config.precision))]
    backend = _backend_of(result.classes_path)
    if backend:
        facts.append(("backend", backend))  # what ran the network in the workers (SCENEWATCH_BACKEND)
    facts += [("tile size / halo", f"{result.grid.tile_size} / {result.grid.halo} px"),
              ("tiles", f"{result.tiles_planned:,} ({result.tiles_skipped:,} without data)"),
              ("grid", f"{result.grid.width:,} x {result.grid.height:,} px"),
              ("no data share", format_share(areas.nodata_pixels, areas.total_pixels)),
              ("masks applied", "the scene's nodata / mask (pixels without data are no data, never a class)")]
    if polygons is not None:
        facts += [("polygons", f"{polygons.features:,}"), ("vectorize time", _seconds(polygons.seconds))]
    facts.append(("predict time", _seconds(result.seconds)))
    for key in ("waiting_seconds", "writing_seconds", "finishing_seconds"):
        if key in result.extra:
            facts.append((key.replace("_seconds", "").replace("_", " ") + " (writer)", _seconds(result.extra[key])))
    if seconds is not None:
        facts.append(("total time", _seconds(seconds)))
    pictures = (Picture("classes, in the model's class colours (checkered: no data)", quicklook_png),) \
        if quicklook_png else ()
    paths = [result.classes_path, result.proba_path, *(polygons.paths.values() if polygons is not None else ())]
    valid = areas.valid_m2
    lead = f"{format_hectares(valid)} ha classified: " + ", ".join(
        f"{name} {format_hectares(a)} ha ({format_share(a, valid)})"
        for name, a in zip(areas.class_names, areas.area_m2, strict=True)) + \
        f"; no data {format_share(areas.nodata_pixels, areas.total_pixels)} of the pixels"
    return Section(title=str(result.scene_id), lead=lead, pictures=pictures,
                   tables=(class_area_table(areas, class_colours(info.class_names, info.class_colors)),),
                   facts=tuple(facts),
                   warnings=tuple(warnings), links=_links(Path(out_dir), [*paths, _quicklook_of(result)]))


def _quicklook_of(result: Any) -> Path | None:
    from pipeline.products import product_path

    path = product_path(Path(result.classes_path).parent, result.scene_id, "quicklook")
    return path if path.exists() else None


def _png(path: Path | None) -> bytes | None:
    return path.read_bytes() if path is not None and Path(path).exists() else None


def change_section(result: Any, *, out_dir: str | os.PathLike[str], model_options: Mapping[str, Any], config: Any,
                   seconds: float | None = None, warnings: Sequence[str] = ()) -> Section:
    """A pair's section from a ChangeResult: quicklook, area per transition, dates and model."""
    areas = result.areas
    total = float(areas.area_m2.sum()) if len(areas) else 0.0
    rows = tuple((str(r.transition), format_hectares(r.area_m2), format_share(r.area_m2, total), f"{int(r.pixels):,}")
                 for r in areas.itertuples())
    table = Table("Area per transition", ("transition", "area (ha)", "share", "pixels"), rows, numeric=(1, 2, 3))
    png = _png(result.quicklook_path)
    pictures = (Picture("before, after and change", png),) if png else ()
    dates = f"{result.before_date or '?'} -> {result.after_date or '?'}"
    facts = [("before", Path(result.before).name), ("after", Path(result.after).name), ("dates", dates),
             *_model_facts(str(result.model), "", model_options, str(config.predict.precision)),
             ("grid", f"{result.grid.width:,} x {result.grid.height:,} px ({result.grid.crs})"),
             ("min area / sieve", f"{config.min_area} m² / {config.sieve} px"),
             ("masks applied", "no data on either date is no data in the change, never 'no change'")]
    if result.polygons_path is not None:
        facts.append(("polygons", _count_features(result.polygons_path)))
    if seconds is not None:
        facts.append(("total time", _seconds(seconds)))
    changed = float(areas[areas.code != 0].area_m2.sum()) if len(areas) else 0.0
    lead = (f"{dates}: {format_hectares(changed)} ha changed ({format_share(changed, total)} of "
            f"{format_hectares(total)} ha compared)")
    return Section(title=str(result.name), lead=lead, pictures=pictures, tables=(table,), facts=tuple(facts),
                   warnings=tuple(warnings),
                   links=_links(Path(out_dir), [result.change_path, result.polygons_path, result.quicklook_path]))


def _count_features(path: Path) -> str:
    try:
        import pyogrio

        # a GeoPackage of ours also lists its layer_styles table: name the layer (the file's stem)
        layer = path.stem if path.suffix.lower() == ".gpkg" else None
        return f"{pyogrio.read_info(path, layer=layer)['features']:,}"
    except Exception:  # noqa: BLE001 - a count the report cannot read is shown as unknown, not fatal
        return "?"


def timeline_section(result: Any, *, out_dir: str | os.PathLike[str], model_options: Mapping[str, Any], config: Any,
                     model_name: str = "", seconds: float | None = None, warnings: Sequence[str] = ()) -> Section:
    """A timeline's section: the area plot, the area per class per date, alerts and events."""
    frame = result.areas
    names = list(result.class_names)
    rows = []
    for date, group in frame.groupby("date", sort=True):
        by_class = dict(zip(group["class"], group["area_m2"], strict=True))
        valid = float(group["valid_area_m2"].iloc[0]) if "valid_area_m2" in group else float(sum(by_class.values()))
        rows.append((str(date)[:10], *(format_hectares(by_class.get(n, 0.0)) for n in names),
                     format_hectares(valid)))
    table = Table("Area per class per date (ha)", ("date", *names, "valid"), tuple(rows),
                  numeric=tuple(range(1, len(names) + 2)))
    png = _png(result.plot_path)
    pictures = (Picture("area per class over time", png),) if png else ()
    facts = [("dates", f"{len(result.dates)}: {result.dates[0].date} .. {result.dates[-1].date}"),
             *_model_facts(model_name, "", model_options, str(config.predict.precision)),
             ("watch", ", ".join(config.watch) if config.watch else "any change of class"),
             ("confirm", str(config.confirm)),
             ("grid", f"{result.grid.width:,} x {result.grid.height:,} px ({result.grid.crs})"),
             ("masks applied", "no data on a date is skipped for that date")]
    if result.events_polygons_path is not None:
        facts.append(("event polygons", _count_features(result.events_polygons_path)))
    if seconds is not None:
        facts.append(("total time", _seconds(seconds)))
    links = _links(Path(out_dir), [result.areas_csv, result.alerts_path, result.events_path,
                                   result.events_polygons_path, result.plot_path])
    return Section(title=str(result.name), pictures=pictures, tables=(table,), facts=tuple(facts),
                   warnings=tuple(warnings), links=links)


def write_run_report(out_dir: str | os.PathLike[str], title: str, sections: Sequence[Section], *,
                     index: bool = False, subtitle: str | None = None) -> Path | None:
    """Write ``out_dir/report.html``; on any failure log a warning and return None (never fails the run)."""
    path = report_path(out_dir)
    try:
        if subtitle is None:
            from importlib.metadata import version

            subtitle = f"scenewatch {version('scenewatch')} run report"
        write_report(path, render_report(title, subtitle, sections, index=index))
    except Exception as err:  # noqa: BLE001 - a report is never worth failing a finished run for
        log.warning("report %s not written: %s: %s", path, type(err).__name__, err)
        return None
    return path


def safely(build: Any, *args: Any, **kwargs: Any) -> Any:
    """``build(*args, **kwargs)`` (a section, or what builds one), or None with a warning when it fails."""
    try:
        return build(*args, **kwargs)
    except Exception as err:  # noqa: BLE001 - see write_run_report
        log.warning("report section not built: %s: %s", type(err).__name__, err)
        return None


def batch_sections(summary: Any, *, warnings: Sequence[str] = (),
                   max_scenes: int = 500) -> tuple[Section, list[Section]]:
    """A batch's overview (job, counts, the run's warnings) and one section per item of the run, with its status;
    a scene with a class raster in the output folder gets its quicklook and area per class. The products are
    found by name anywhere under the output folder, so the report follows whatever layout the batch writes."""
    from pipeline.inference.summary import encode_classes_png, read_class_areas, read_classes_preview
    from pipeline.names import safe_name
    from pipeline.products import PRODUCTS, name_of

    out_dir = Path(summary.out_dir)
    found: dict[str, Path] = {}
    for suffix in (PRODUCTS["classes"].suffix, PRODUCTS["change_quicklook"].suffix, PRODUCTS["areas_plot"].suffix):
        for path in sorted(out_dir.rglob(f"*{suffix}")):
            found.setdefault(f"{name_of(path)}{suffix}", path)
    sections = []
    for outcome in summary.outcomes[:max_scenes]:
        facts = [("kind", outcome.kind), ("status", outcome.status), ("time", _seconds(outcome.seconds))]
        if outcome.status == "failed":
            facts += [("stage", outcome.stage), ("error", f"{outcome.error_class}: {outcome.message}")]
        pictures: list[Picture] = []
        tables: list[Table] = []
        links: list[Path | None] = []
        key = _safe(safe_name, outcome.item_id)
        classes = found.get(key + PRODUCTS["classes"].suffix)
        if classes is not None:
            try:
                areas = read_class_areas(classes)
                colors = _colors_of(classes)
                facts.append(("model", _model_of(classes)))
                pictures.append(Picture("classes (checkered: no data)",
                                        encode_classes_png(read_classes_preview(classes, 800), colors)))
                tables.append(class_area_table(areas, colors))
                facts.append(("no data share", format_share(areas.nodata_pixels, areas.total_pixels)))
            except Exception as err:  # noqa: BLE001 - one unreadable scene leaves its section without a table
                facts.append(("report", f"classes not read: {err}"))
            links.append(classes)
        for suffix in (PRODUCTS["change_quicklook"].suffix, PRODUCTS["areas_plot"].suffix):
            picture = next((p for k, p in found.items() if k.endswith(suffix) and _names_item(k[: -len(suffix)], key)),
                           None)
            if picture is not None:
                pictures.append(Picture(picture.name, picture.read_bytes()))
                links.append(picture)
        sections.append(Section(title=str(outcome.item_id), status=str(outcome.status), pictures=tuple(pictures),
                                tables=tuple(tables), facts=tuple(facts), links=_links(out_dir, links)))
    counts = {s: summary.count(s) for s in ("done", "skipped", "failed")}
    overview = Section(title=f"job {summary.job}", anchor="run",
                       facts=(("run", str(summary.run_id)), ("done", str(counts["done"])),
                              ("up to date", str(counts["skipped"])), ("failed", str(counts["failed"])),
                              ("items", f"{len(summary.outcomes):,}" + (f" (first {max_scenes} shown)"
                                                                        if len(summary.outcomes) > max_scenes
                                                                        else ""))),
                       warnings=tuple(warnings),
                       links=_links(out_dir, [summary.catalog]))
    return overview, sections


def _names_item(name: str, item_key: str) -> bool:
    """Whether product ``name`` belongs to the item: the item's own name, or its id is ``<kind>_<name>``
    (``change_A__B`` for the pair ``A__B``)."""
    return item_key == name or item_key.endswith("_" + name)


def _safe(fn: Any, text: str) -> str:
    try:
        return str(fn(text))
    except Exception:  # noqa: BLE001 - an id safe_name refuses is looked up as it is
        return text


def _model_of(classes: Path) -> str:
    """The model (name and version) a class raster's tags record."""
    import rasterio

    from pipeline.products import Tag

    with rasterio.open(classes) as src:
        tags = src.tags()
    return f"{tags.get(Tag.MODEL, '?')} {tags.get(Tag.MODEL_VERSION, '')}".strip()


def _backend_of(classes: Path) -> str:
    """The backends a class raster's tags say ran the network ("" if none is recorded)."""
    import rasterio

    from pipeline.products import Tag

    try:
        with rasterio.open(classes) as src:
            return str(src.tags().get(Tag.BACKEND, ""))
    except rasterio.errors.RasterioIOError:
        return ""


def _colors_of(classes: Path) -> tuple[str, ...]:
    """The class colours a class raster carries in its colour table (the model's, written by predict)."""
    import rasterio

    with rasterio.open(classes) as src:
        try:
            cmap = src.colormap(1)
        except ValueError:
            return ()
    return tuple("#{:02x}{:02x}{:02x}".format(*cmap[i][:3]) for i in range(min(len(cmap), 255)))


def write_batch_report(out_dir: str | os.PathLike[str], title: str, overview: Section,
                       sections: Sequence[Section]) -> Path | None:
    """``report.html`` of a batch: the overview, an index of items with their status, then each item."""
    path = report_path(out_dir)
    try:
        from importlib.metadata import version

        write_report(path, render_report(title, f"scenewatch {version('scenewatch')} run report", sections,
                                         index=True, preamble=overview))
    except Exception as err:  # noqa: BLE001 - see write_run_report
        log.warning("report %s not written: %s: %s", path, type(err).__name__, err)
        return None
    return path
