"""The ``scenewatch`` command line: a thin click layer over :mod:`workflows`.

Every command has ``--help`` with an example. A user-facing error prints one line,
``scenewatch: error: <what and what to do>``, and exits non-zero; a bug still shows its traceback.
"""

from __future__ import annotations

import logging
from typing import Any

import click

from workflows.cli_options import report_errors, tiling_options  # noqa: F401 - re-exported for command modules


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="scenewatch")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """scenewatch: segment large satellite and aerial scenes into seamless GIS layers.

    \b
    Example:
      scenewatch predict examples/data/naip_sample.tif --model vegetation --bands naip --out out/
    """
    configure_logging(verbose)


def configure_logging(verbose: int) -> None:
    """scenewatch's own messages at INFO with -v, DEBUG with -vv; Dask's chatter (cluster start and stop,
    closed comms at shutdown) only with -vv."""
    log = logging.getLogger("scenewatch")
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("scenewatch: %(message)s"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(logging.WARNING - 10 * min(verbose, 2))
    dask_level = logging.DEBUG if verbose >= 2 else logging.CRITICAL
    import distributed  # noqa: F401  - its logging config must exist before it is overridden

    for name in [n for n in logging.root.manager.loggerDict if n.split(".")[0] in ("distributed", "bokeh", "tornado")]:
        logging.getLogger(name).setLevel(dask_level)


# Polygon-layer options live with `scenewatch vectorize`; that module needs report_errors, defined above.
from workflows.cli_vectorize import vector_options, write_layers  # noqa: E402


@main.command()
@click.argument("scene", type=click.Path(dir_okay=False))
@click.option("--model", "-m", default="vegetation", show_default=True,
              help="Built-in model (vegetation, water, water-mndwi, burn, bare) or a model bundle folder "
                   "(see `scenewatch models`).")
@click.option("--out", "-o", "out_dir", type=click.Path(file_okay=False), required=True, help="Output folder.")
@click.option("--bands", "-b", default=None,
              help="Band map 'red=1,green=2,blue=3,nir=4' or a preset: naip, rgb, rgbn, bgrn, sentinel2, "
                   "sentinel2-l2a, landsat8, landsat9, landsat7, landsat5 [default: from band descriptions].")
@tiling_options
@click.option("--overlap", type=int, default=None, help="Blend ramp half-width in pixels, at most the halo [default: halo/2].")
@click.option("--blend", type=click.Choice(["cosine", "linear", "none"]), default=None,
              help="How overlapping tiles are blended; 'none' crops each tile to its core [default: cosine].")
@click.option("--batch-size", type=int, default=None, help="Tiles per model call [default: 1, the fastest measured on CPU and on a GPU].")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16", "int8"]), default=None,
              help="Inference precision for neural networks; auto: fp16 on a GPU, else the bundle's int8 variant "
                   "if it has one (`scenewatch models quantize`), else bf16 where the CPU has it [default: auto].")
@click.option("--proba-dtype", type=click.Choice(["uint8", "float32"]), default=None,
              help="Storage of the probability raster: uint8 (p x 254, 255 = nodata) or float32 [default: uint8].")
@click.option("--model-option", "model_options", multiple=True, metavar="KEY=VALUE",
              help="Model setting, repeatable: threshold=0.2 or softness=0.1 for a spectral model, compile=true "
                   "for a network (see `scenewatch models show NAME`).")
@click.option("--format", "-f", "formats", default="gpkg", show_default=True,
              help="Polygon layers written after the rasters, comma-separated: gpkg, parquet, fgb, geojson; "
                   "'none' for rasters only.")
@vector_options
@report_errors
def predict(scene: str, model: str, out_dir: str, quiet: bool, model_options: tuple[str, ...], formats: str,
            min_area: str | None, sieve: int | None, simplify: float | None, keep_classes: str | None,
            max_polygons: int | None, **options: Any) -> None:
    """Segment SCENE into OUT/<scene>.classes.tif and OUT/<scene>.proba.tif (Cloud-Optimized GeoTIFFs), then
    polygon layers OUT/<scene>.<format> (see `scenewatch vectorize`).

    \b
    Examples:
      scenewatch predict naip.tif --model vegetation --bands naip --out out/
      scenewatch predict s2.tif --model ./my-unet --bands sentinel2 --tile-size 512 --halo 64 --out out/
      scenewatch predict big.tif --model vegetation --scheduler tcp://scheduler:8786 --out /shared/out
      scenewatch predict s2.tif --model water-mndwi --model-option threshold=0.1 --bands sentinel2 --out out/
      scenewatch predict naip.tif --bands naip --out out/ --format gpkg,parquet --classes vegetation --min-area 0.1ha
    """
    from pipeline.models.contract import ModelRef
    from workflows.cli_models import parse_model_options
    from workflows.scene import predict_scene

    from pipeline.config import PredictConfig
    from workflows.cluster import dask_client
    from workflows.scene import plan_scene

    parsed = parse_model_options(model_options)
    ref = ModelRef.of(model, **parsed) if parsed else model
    plan = plan_scene(scene, ref, PredictConfig.build(**options))  # bad scene or bands: refused before any cluster
    # one cluster for both passes
    with dask_client(options.pop("workers"), options.pop("scheduler"), model=plan.model) as client:
        result = predict_scene(scene, ref, out_dir, client=client, progress=False if quiet else None, **options)
        click.echo(f"{result.scene_id}: {result.tiles_planned} tiles ({result.tiles_skipped} without data) "
                   f"in {result.seconds:.1f} s -> {result.classes_path}, {result.proba_path}")
        if formats.strip().lower() != "none":
            # A second pass over the written COGs, in Dask workers, rather than the on_core hook: polygonizing
            # then runs in parallel instead of in the stitching process, and gives exactly what
            # `scenewatch vectorize` gives on the same files.
            write_layers(result.classes_path, out_dir, formats=formats, proba_path=result.proba_path, quiet=quiet,
                         min_area=min_area, sieve=sieve, simplify=simplify, keep_classes=keep_classes,
                         max_polygons=max_polygons, client=client)


# Each command family lives in its own module; they are registered here, after `main` exists.
from workflows.cli_batch import run, status  # noqa: E402
from workflows.cli_change import change, timeline  # noqa: E402
from workflows.cli_models import models  # noqa: E402
from workflows.cli_train import evaluate, train  # noqa: E402
from workflows.cli_vectorize import vectorize  # noqa: E402

for _command in (vectorize, models, change, timeline, train, evaluate, run, status):
    main.add_command(_command)

if __name__ == "__main__":  # pragma: no cover
    main()
