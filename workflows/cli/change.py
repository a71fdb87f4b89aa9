"""``scenewatch change`` and ``scenewatch timeline``: change between two dates, alerts over many."""

from __future__ import annotations

import time
from typing import Any

import click

from pipeline.change.transitions import DIFFERENCE_MODELS
from pipeline.config import TimelineConfig
from workflows.cli import options
from workflows.cli.options import build, report_errors

__all__ = ["change", "timeline"]

_BANDS_HELP = "Where the model's bands are in the scenes [default: from the band descriptions]."


def _predict_config(values: dict[str, Any]) -> Any:
    """How each date is classified: the PredictConfig part of the flags."""
    from pipeline.config import PredictConfig

    return build(PredictConfig, **values)


@click.command()
@click.argument("before", type=click.Path(dir_okay=False))
@click.argument("after", type=click.Path(dir_okay=False))
@options.model(help=f"Built-in model ({options.builtin_models()}), a model bundle folder, or an index difference "
                    f"({', '.join(DIFFERENCE_MODELS)}: vegetation loss/gain, burn severity in USGS classes).")
@options.out()
@options.grid(first="the BEFORE scene's")
@options.max_offset
@options.bands(_BANDS_HELP)
@options.model_settings
@options.date_pattern
@options.min_area
@options.change_sieve
@options.polygons
@click.option("--name", default=None, help="Output name [default: BEFORE__AFTER].")
@options.classify_options
@options.quiet()
@report_errors
@options.remote_out
def change(before: str, after: str, model: str, out: str, grid: str, max_offset: float | None,
           model_options: dict[str, Any], threshold: str | None, date_pattern: str | None, min_area: float | None,
           sieve: int | None, polygons: bool | None, name: str | None, quiet: bool, **predict_values: Any) -> None:
    """Compare BEFORE and AFTER (scenes, or existing *.classes.tif) on one grid.

    Writes OUT/<name>.change.tif (transition codes + confidence, COG), OUT/<name>.change.gpkg (change polygons
    with both dates, transition, area in m² and confidence), OUT/<name>.change.png (before/after/change) and
    OUT/report.html (quicklook, area per transition, model, timings, warnings).
    Pixels that are nodata on either date are nodata in the change raster, never "no change".

    \b
    Examples:
      scenewatch change examples/data/m_4709963_se_14_1_20090818.tif \\
          examples/data/m_4709963_se_14_1_20200831.tif --model vegetation --bands naip --max-offset 0.5 --out out/
      scenewatch change pre.tif post.tif --model dnbr --bands sentinel2-l2a --min-area 0.5ha --out burn/
      scenewatch change a.classes.tif b.classes.tif --grid reference.tif --out out/
      scenewatch change examples/data/m_4709963_se_14_1_20090818.tif examples/data/m_4709963_se_14_1_20200831.tif \
          --bands naip --threshold 0.2 --mask blue=255 --sieve 16 --min-area 0.05ha --out out/change-clean
    """
    from pipeline.config import ChangeConfig
    from workflows.change import detect_change
    from workflows.report import captured_warnings, change_section, safely

    model_options = options.model_options_of(model_options, threshold)
    config = build(ChangeConfig, predict=_predict_config(predict_values), grid=grid, date_pattern=date_pattern,
                   polygons=polygons, min_area=min_area, sieve=sieve, name=name, max_offset=max_offset)
    started = time.perf_counter()
    with captured_warnings() as warned:
        result = detect_change(before, after, _model_ref(model, model_options), out, config,
                               progress=False if quiet else None)
    changed = result.areas[result.areas.code != 0]
    click.echo(f"{result.name}: {result.before_date or '?'} -> {result.after_date or '?'} on a "
               f"{result.grid.width} x {result.grid.height} grid ({result.grid.crs})")
    for row in changed.itertuples():
        click.echo(f"  {row.transition}: {row.area_m2 / 1e4:,.2f} ha")
    written = [result.change_path, result.polygons_path, result.quicklook_path]
    click.echo("-> " + ", ".join(str(p) for p in written if p is not None))
    section = safely(change_section, result, out_dir=out, model_options=model_options,
                     config=config, seconds=time.perf_counter() - started, warnings=warned)
    _report(out, f"scenewatch change: {result.name}", section)


@click.command()
@click.argument("scenes", nargs=-1, required=False, type=click.Path(dir_okay=False))
@options.model()
@options.out()
@options.date_pattern
@options.grid(first="the earliest scene's")
@options.max_offset
@options.bands(_BANDS_HELP)
@options.model_settings
@click.option("--watch", default=None, metavar="FROM->TO",
              help="Transitions that raise alerts, e.g. 'vegetation->other' (several comma separated, * = any) "
                   "[default: any change of class].")
@click.option("--confirm", type=int, default=None,
              help="Observations that confirm an alert (high confidence) "
                   f"[default: {options.default_of(TimelineConfig, 'confirm')}].")
@options.min_area
@options.change_sieve
@options.polygons
@click.option("--name", default=None,
              help=f"Prefix of the output files [default: {options.default_of(TimelineConfig, 'name')}].")
@options.stac_source_options("of SCENES: every item found is a date")
@options.classify_options
@options.quiet()
@report_errors
@options.remote_out
def timeline(scenes: tuple[str, ...], model: str, out: str, date_pattern: str | None, grid: str,
             max_offset: float | None, model_options: dict[str, Any], threshold: str | None, watch: str | None,
             confirm: int | None, min_area: float | None, sieve: int | None, polygons: bool | None, name: str | None,
             stac: str | None, stac_search: str | None, collections: str | None, bbox: str | None, aoi: str | None,
             datetime: str | None, query: tuple[str, ...], limit: int | None, quiet: bool,
             **predict_values: Any) -> None:
    """Follow a dated stack of SCENES of one place: areas per date, alerts and change events.

    The stack may instead be the items of a STAC catalog (--stac) or of a STAC API search (--stac-search
    with --collections, --bbox or --aoi, --datetime, --query, --limit), found as a job's inputs are: an item
    with one asset per band is dated by its datetime; an item whose one asset holds every band is that
    file, dated as a file is.

    Writes OUT/<name>.areas.csv and .parquet (area per class per date), OUT/<name>.alerts.tif (first detection
    day, confirming observations, confidence, last valid day; days since 1970-01-01), OUT/<name>.events.tif and
    OUT/<name>.events.gpkg (change events with their first-detection date), OUT/<name>.areas.png and
    OUT/report.html (area plot, area per class per date, model, timings, warnings).

    \b
    Examples:
      scenewatch timeline landsat/*.tif --model bare --bands swir16=1,nir=2,red=3 --threshold auto \\
          --date-pattern '(?P<year>\\d{4})' --watch 'canopy->bare' --out pucallpa/
      scenewatch timeline examples/data/m_4709963_se_14_1_*.tif --model vegetation --bands naip --out naip/
      scenewatch timeline examples/data/m_4709963_se_14_1_*.tif --bands naip --threshold 0.2 --mask blue=255 \
          --watch 'vegetation->other' --sieve 16 --out naip-clean/
      scenewatch timeline --stac examples/data/naip_items.json --model vegetation --bands naip --out naip-stac/
      scenewatch timeline --stac-search https://earth-search.aws.element84.com/v1 --collections sentinel-2-l2a \
          --bbox -63.1,-10.0,-63.0,-9.9 --datetime 2024-06-01/2024-09-30 --query 'eo:cloud_cover<10' \
          --model bare --bands nir=nir08 --mask scl --resolution 20 --out rondonia/
    """
    from workflows.change import run_timeline
    from workflows.report import captured_warnings, safely, timeline_section

    model_options = options.model_options_of(model_options, threshold)
    config = build(TimelineConfig, predict=_predict_config(predict_values), grid=grid, date_pattern=date_pattern,
                   watch=watch, confirm=confirm, min_area=min_area, sieve=sieve, polygons=polygons, name=name,
                   max_offset=max_offset)
    stacked = _stack(scenes, options.stac_source(stac=stac, stac_search=stac_search, collections=collections,
                                                 bbox=bbox, aoi=aoi, datetime=datetime, query=query, limit=limit))
    started = time.perf_counter()
    with captured_warnings() as warned:
        result = run_timeline(stacked, _model_ref(model, model_options), out, config,
                              progress=False if quiet else None)
    first, last = result.dates[0].date, result.dates[-1].date
    click.echo(f"{result.name}: {len(result.dates)} dates {first} .. {last} on a {result.grid.width} x "
               f"{result.grid.height} grid ({result.grid.crs})")
    written = [result.areas_csv, result.areas_parquet, result.alerts_path, result.events_path,
               result.events_polygons_path, result.plot_path]
    click.echo("-> " + ", ".join(str(p) for p in written if p is not None))
    section = safely(timeline_section, result, out_dir=out, model_options=model_options,
                     config=config, model_name=model, seconds=time.perf_counter() - started, warnings=warned)
    _report(out, f"scenewatch timeline: {result.name}", section)


def _stack(scenes: tuple[str, ...], source: Any) -> list[str]:
    """The timeline's scenes: SCENES, or what a STAC source finds (read as a job reads its inputs)."""
    from pipeline.errors import ConfigError

    if source is None:
        if not scenes:
            raise click.UsageError("Missing argument 'SCENES...': give SCENES, or a STAC source (--stac CATALOG "
                                   "or --stac-search URL)")
        return list(scenes)
    if scenes:
        raise ConfigError("give SCENES or a STAC source (`stac`, `stac_search`), not both")
    from workflows.job import discover_inputs

    return [scene.path for scene in discover_inputs(source)]


def _model_ref(model: str, model_options: dict[str, Any]) -> Any:
    """The model as given, or with its options a ModelRef (an index-difference name stays a name when bare)."""
    from pipeline.models.contract import ModelRef

    return ModelRef.of(model, **model_options) if model_options else model


def _report(out: str, title: str, section: Any) -> None:
    """Write OUT/report.html (never fails the run: a report error is a logged warning)."""
    from workflows.report import write_run_report

    if section is not None:
        written = write_run_report(out, title, [section])
        if written is not None:
            click.echo(f"-> {written}")
