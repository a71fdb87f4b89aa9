"""``scenewatch vectorize``: a class raster into polygon layers; :func:`write_layers` also serves ``predict``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from pipeline.errors import ConfigError
from workflows.cli import options
from workflows.cli.options import build, report_errors

__all__ = ["vectorize", "write_layers"]


def write_layers(classes_path: Path, out: str, config: Any, *, proba_path: Path | None, quiet: bool,
                 client: Any = None, scene_id: str | None = None, acquired: str | None = None,
                 attributes: dict[str, str] | None = None) -> Any:
    """Vectorize one class raster as ``config`` (a VectorizeConfig) says and print where the layers went;
    returns the VectorResult."""
    from workflows.vectorize import vectorize_scene

    result = vectorize_scene(classes_path, out, config, proba_path=proba_path, scene_id=scene_id, acquired=acquired,
                             attributes=attributes, client=client, progress=False if quiet else None)
    paths = ", ".join(str(p) for p in result.paths.values())
    click.echo(f"{result.scene_id}: {result.features} polygons from {result.tiles} tiles in {result.seconds:.1f} s "
               f"-> {paths}")
    return result


def parse_attributes(items: tuple[str, ...]) -> dict[str, str]:
    """``("campaign=2021",)`` -> ``{"campaign": "2021"}``: constant text columns."""
    found: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"`attributes` {item!r}: write it as name=value, e.g. campaign=2021")
        found[key.strip()] = value.strip()
    return found


def _sibling_proba(classes: Path) -> Path | None:
    """``NAME.proba.tif`` beside a ``NAME.classes.tif``, if it is there."""
    from pipeline.products import is_classes_path, proba_beside

    sibling = proba_beside(classes) if is_classes_path(classes) else None
    return sibling if sibling is not None and sibling.exists() else None


@click.command()
@click.argument("classes_path", metavar="CLASSES", type=click.Path(dir_okay=False))
@options.out()
@options.formats()
@click.option("--proba", "proba_path", type=click.Path(dir_okay=False), default=None,
              help="Probability raster for the confidence columns [default: <scene>.proba.tif beside CLASSES, if any].")
@options.vector_options
@options.tile_size(default="2048")
@options.scene_options
@options.cluster_options
@click.option("--scene-id", default=None, help="Scene id of the layer [default: from the raster's tags or name].")
@click.option("--date", "acquired", default=None, metavar="YYYY-MM-DD",
              help="Acquisition date [default: from the raster's tags or a date in its name].")
@click.option("--attr", "attributes", multiple=True, metavar="NAME=VALUE",
              help="Constant text column on every polygon.")
@options.quiet()
@report_errors
@options.remote_out
def vectorize(classes_path: str, out: str, proba_path: str | None, scene_id: str | None, acquired: str | None,
              attributes: tuple[str, ...], quiet: bool, **values: Any) -> None:
    """Turn a class raster CLASSES into polygon layers OUT/<scene>.<format>, seamless across tiles.

    Every 4-connected patch of one class becomes one polygon, whatever tiles it spans, with a stable id,
    class, area (m²) and perimeter (m), mean and max class probability, scene, date and model.

    \b
    Examples:
      scenewatch vectorize out/naip.classes.tif --out out/
      scenewatch vectorize out/s2.classes.tif --out out/ --format gpkg,parquet --classes cleared --min-area 0.5ha
      scenewatch vectorize burn_mask.tif --out out/ --format fgb,geojson --sieve 20 --simplify 15
    """
    from pipeline.config import VectorizeConfig

    config = build(VectorizeConfig, **values)
    path = Path(classes_path)
    write_layers(path, out, config, proba_path=Path(proba_path) if proba_path else _sibling_proba(path),
                 quiet=quiet, scene_id=scene_id, acquired=acquired, attributes=parse_attributes(attributes) or None)
