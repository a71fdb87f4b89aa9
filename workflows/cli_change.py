"""``scenewatch change`` and ``scenewatch timeline``: change between two dates, alerts over many."""

from __future__ import annotations

from typing import Any

import click

from workflows.cli_options import report_errors, tiling_options

__all__ = ["change", "timeline"]

_BANDS_HELP = ("Band map 'red=1,green=2,blue=3,nir=4' or a preset: naip, rgb, rgbn, bgrn, sentinel2, "
               "sentinel2-l2a, landsat8, landsat9, landsat7, landsat5 [default: from band descriptions].")
_MODEL_HELP = ("Built-in model (vegetation, water, water-swir, burn, bare, ...), a model bundle path, or an index difference: dndvi "
               "(vegetation loss/gain) or dnbr (burn severity, USGS classes).")


def _predict_options(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if v is not None}


@click.command()
@click.argument("before", type=click.Path(dir_okay=False))
@click.argument("after", type=click.Path(dir_okay=False))
@click.option("--model", "-m", default="vegetation", show_default=True, help=_MODEL_HELP)
@click.option("--out", "-o", "out_dir", type=click.Path(file_okay=False), required=True, help="Output folder.")
@click.option("--grid", default="first", show_default=True, metavar="first|PATH",
              help="Grid both dates are compared on: the BEFORE scene's, or the grid of the raster at PATH.")
@click.option("--bands", "-b", default=None, help=_BANDS_HELP)
@click.option("--date-pattern", default=None, metavar="REGEX",
              help="Read dates from file names with named groups year[, month, day], e.g. '(?P<year>\\d{4})'.")
@click.option("--min-area", type=float, default=0.0, show_default=True,
              help="Drop change polygons below this area (m²).")
@click.option("--no-polygons", is_flag=True, help="Write the change raster only.")
@click.option("--name", default=None, help="Output name [default: BEFORE__AFTER].")
@tiling_options
@report_errors
def change(before: str, after: str, model: str, out_dir: str, grid: str, bands: str | None, date_pattern: str | None,
           min_area: float, no_polygons: bool, name: str | None, quiet: bool, **options: Any) -> None:
    """Compare BEFORE and AFTER (scenes, or existing *.classes.tif) on one grid.

    Writes OUT/<name>.change.tif (transition codes + confidence, COG), OUT/<name>.change.gpkg (change polygons
    with both dates, transition, area in m² and confidence) and OUT/<name>.change.png (before/after/change).
    Pixels that are nodata on either date are nodata in the change raster, never "no change".

    \b
    Examples:
      scenewatch change naip_2009.tif naip_2020.tif --model vegetation --bands naip --out out/
      scenewatch change pre.tif post.tif --model dnbr --bands sentinel2-l2a --out burn/
      scenewatch change a.classes.tif b.classes.tif --grid reference.tif --out out/
    """
    from workflows.change import detect_change

    predict_options = _predict_options(options)
    if bands is not None:
        predict_options["bands"] = bands
    result = detect_change(before, after, model, out_dir, grid=grid, date_pattern=date_pattern,
                           polygons=not no_polygons, min_area=min_area, progress=False if quiet else None,
                           name=name, **predict_options)
    changed = result.areas[result.areas.code != 0]
    click.echo(f"{result.name}: {result.before_date or '?'} -> {result.after_date or '?'} on a "
               f"{result.grid.width} x {result.grid.height} grid ({result.grid.crs})")
    for row in changed.itertuples():
        click.echo(f"  {row.transition}: {row.area_m2 / 1e4:,.2f} ha")
    written = [result.change_path, result.polygons_path, result.quicklook_path]
    click.echo("-> " + ", ".join(str(p) for p in written if p is not None))


@click.command()
@click.argument("scenes", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--model", "-m", default="vegetation", show_default=True,
              help="Built-in model (vegetation, water, water-swir, burn, bare, ...) or a model bundle path.")
@click.option("--out", "-o", "out_dir", type=click.Path(file_okay=False), required=True, help="Output folder.")
@click.option("--date-pattern", default=None, metavar="REGEX",
              help="Dates from file names, named groups year[, month, day], e.g. '(?P<year>\\d{4})' "
                   "[default: STAC item beside the scene, TIFF date tags, or YYYYMMDD in the name].")
@click.option("--grid", default="first", show_default=True, metavar="first|PATH",
              help="Common grid: the earliest scene's, or the grid of the raster at PATH.")
@click.option("--bands", "-b", default=None, help=_BANDS_HELP)
@click.option("--watch", default=None, metavar="FROM->TO",
              help="Transitions that raise alerts, e.g. 'vegetation->other' (several comma separated, * = any) "
                   "[default: any change of class].")
@click.option("--confirm", type=int, default=2, show_default=True,
              help="Observations that confirm an alert (high confidence).")
@click.option("--min-area", type=float, default=0.0, show_default=True,
              help="Drop event polygons below this area (m²).")
@click.option("--name", default="timeline", show_default=True, help="Prefix of the output files.")
@tiling_options
@report_errors
def timeline(scenes: tuple[str, ...], model: str, out_dir: str, date_pattern: str | None, grid: str,
             bands: str | None, watch: str | None, confirm: int, min_area: float, name: str, quiet: bool,
             **options: Any) -> None:
    """Follow a dated stack of SCENES of one place: areas per date, alerts and change events.

    Writes OUT/<name>.areas.csv and .parquet (area per class per date), OUT/<name>.alerts.tif (first detection
    day, confirming observations, confidence, last valid day; days since 1970-01-01), OUT/<name>.events.tif and
    OUT/<name>.events.gpkg (change events with their first-detection date) and OUT/<name>.areas.png.

    \b
    Examples:
      scenewatch timeline landsat/*.tif --model vegetation --bands red=3,nir=2 \\
          --date-pattern '(?P<year>\\d{4})' --watch 'vegetation->other' --out pucallpa/
      scenewatch timeline m_*_2009*.tif m_*_2020*.tif --model vegetation --bands naip --out naip/
    """
    from workflows.change import run_timeline

    predict_options = _predict_options(options)
    if bands is not None:
        predict_options["bands"] = bands
    result = run_timeline(list(scenes), model, out_dir, date_pattern=date_pattern, grid=grid, watch=watch,
                          confirm=confirm, min_area=min_area, name=name, progress=False if quiet else None,
                          **predict_options)
    first, last = result.dates[0].date, result.dates[-1].date
    click.echo(f"{result.name}: {len(result.dates)} dates {first} .. {last} on a {result.grid.width} x "
               f"{result.grid.height} grid ({result.grid.crs})")
    written = [result.areas_csv, result.areas_parquet, result.alerts_path, result.events_path,
               result.events_polygons_path, result.plot_path]
    click.echo("-> " + ", ".join(str(p) for p in written if p is not None))
