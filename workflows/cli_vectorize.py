"""``scenewatch vectorize`` and the polygon-layer options shared with ``scenewatch predict``."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from pipeline.errors import ConfigError

__all__ = ["vectorize", "vector_options", "write_layers"]

F = TypeVar("F", bound=Callable[..., Any])

_FORMAT_HELP = "Layer formats, comma-separated: gpkg, parquet (GeoParquet), fgb (FlatGeobuf), geojson (EPSG:4326)"


def _report_errors(func: F) -> F:
    """workflows.cli.report_errors, looked up when called: workflows.cli imports this module while loading."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from workflows.cli import report_errors

        return report_errors(func)(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def vector_options(func: F) -> F:
    """Clean-up options of polygon layers (all off by default: exact pixel-edge polygons of every class)."""
    options = [
        click.option("--min-area", default=None, metavar="AREA",
                     help="Drop polygons smaller than AREA: m² (5000) or with a unit (5000m2, 0.5ha, 1km2)."),
        click.option("--sieve", type=int, default=None, metavar="PIXELS",
                     help="Before polygonizing, merge pixel groups smaller than PIXELS into their largest neighbour."),
        click.option("--simplify", type=float, default=None, metavar="METRES",
                     help="Topology-preserving simplification tolerance in metres [default: 0, exact pixel edges]."),
        click.option("--classes", "keep_classes", default=None, metavar="NAMES",
                     help="Classes to keep, names or values, comma-separated (e.g. cleared) [default: all]."),
        click.option("--max-polygons", type=int, default=None,
                     help="Stop with an error past this many polygons [default: 2,000,000]."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _split(text: str | None) -> list[str] | None:
    return [part.strip() for part in text.split(",") if part.strip()] if text else None


def write_layers(classes_path: Path, out_dir: str, *, formats: str, proba_path: Path | None, quiet: bool,
                 min_area: str | None, sieve: int | None, simplify: float | None, keep_classes: str | None,
                 max_polygons: int | None, **options: Any) -> None:
    """Vectorize one class raster and print where the layers went."""
    from workflows.vectorize import vectorize_scene

    result = vectorize_scene(
        classes_path, out_dir, formats=formats, proba_path=proba_path, min_area=min_area or 0.0, sieve=sieve or 0,
        simplify=simplify or 0.0, classes=_split(keep_classes), max_polygons=max_polygons,
        progress=False if quiet else None, **{k: v for k, v in options.items() if v is not None},
    )
    paths = ", ".join(str(p) for p in result.paths.values())
    click.echo(f"{result.scene_id}: {result.features} polygons from {result.tiles} tiles in {result.seconds:.1f} s "
               f"-> {paths}")


def _parse_attributes(items: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--attr {item!r}: write it as name=value, e.g. --attr campaign=2021")
        out[key.strip()] = value.strip()
    return out


@click.command()
@click.argument("classes", type=click.Path(dir_okay=False))
@click.option("--out", "-o", "out_dir", type=click.Path(file_okay=False), required=True, help="Output folder.")
@click.option("--format", "-f", "formats", default="gpkg", show_default=True, help=_FORMAT_HELP + ".")
@click.option("--proba", "proba_path", type=click.Path(dir_okay=False), default=None,
              help="Probability raster for the confidence columns [default: <scene>.proba.tif beside CLASSES, if any].")
@vector_options
@click.option("--tile-size", type=int, default=None, help="Core tile size in pixels [default: 1024].")
@click.option("--workers", type=int, default=None, help="Local Dask worker processes [default: one per core].")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Run on an existing Dask scheduler, e.g. tcp://10.0.0.5:8786, instead of a local cluster.")
@click.option("--max-pixels", type=int, default=None, help="Refuse rasters with more pixels than this.")
@click.option("--assume-crs", default=None, metavar="CRS", help="CRS for a raster that has none, e.g. EPSG:32618.")
@click.option("--scene-id", default=None, help="Scene id of the layer [default: from the raster's tags or name].")
@click.option("--date", "acquired", default=None, metavar="YYYY-MM-DD",
              help="Acquisition date [default: from the raster's tags or a date in its name].")
@click.option("--attr", "attrs", multiple=True, metavar="NAME=VALUE", help="Constant text column on every polygon.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@_report_errors
def vectorize(classes: str, out_dir: str, formats: str, proba_path: str | None, attrs: tuple[str, ...],
              **options: Any) -> None:
    """Turn a class raster CLASSES into polygon layers OUT/<scene>.<format>, seamless across tiles.

    Every 4-connected patch of one class becomes one polygon, whatever tiles it spans, with a stable id,
    class, area (m²) and perimeter (m), mean and max class probability, scene, date and model.

    \b
    Examples:
      scenewatch vectorize out/naip.classes.tif --out out/
      scenewatch vectorize out/s2.classes.tif --out out/ --format gpkg,parquet --classes cleared --min-area 0.5ha
      scenewatch vectorize burn_mask.tif --out out/ --format fgb,geojson --sieve 20 --simplify 15
    """
    path = Path(classes)
    proba = Path(proba_path) if proba_path else _sibling_proba(path)
    write_layers(path, out_dir, formats=formats, proba_path=proba, attributes=_parse_attributes(attrs) or None,
                 **options)


def _sibling_proba(classes: Path) -> Path | None:
    name = classes.name
    if name.endswith(".classes.tif"):
        sibling = classes.with_name(name[: -len(".classes.tif")] + ".proba.tif")
        if sibling.exists():
            return sibling
    return None
