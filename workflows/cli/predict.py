"""``scenewatch predict``: segment one scene into class and probability COGs, then polygon layers."""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import click

from workflows.cli import options
from workflows.cli.options import build, report_errors
from workflows.cli.vectorize import write_layers

__all__ = ["predict"]

log = logging.getLogger("scenewatch")


@click.command()
@click.argument("scene", type=click.Path(dir_okay=False))
@options.model()
@options.out()
@options.bands("Where the model's bands are in SCENE [default: from the band descriptions].")
@options.model_settings
@options.classify_options
@options.formats(allow_none=True)
@options.vector_options
@options.quiet()
@report_errors
@options.remote_out
def predict(scene: str, model: str, out: str, model_options: dict[str, Any], threshold: str | None, formats: str,
            min_area: float | None, sieve: int | None, simplify: float | None, classes: str | None,
            max_polygons: int | None, quiet: bool, **predict_values: Any) -> None:
    """Segment SCENE into OUT/<scene>.classes.tif and OUT/<scene>.proba.tif (Cloud-Optimized GeoTIFFs), then
    polygon layers OUT/<scene>.<format> (see `scenewatch vectorize`), OUT/<scene>.quicklook.png (the classes
    in the model's colours) and OUT/report.html (quicklook, area per class, model, counts, timings, warnings).
    Prints the area per class in hectares.

    \b
    Examples:
      scenewatch predict examples/data/m_4709963_se_14_1_20200831.tif --model vegetation --bands naip --out out/ \\
          --timeout 3600
      scenewatch predict s2.tif --model ./my-unet --bands sentinel2 --tile-size 512 --halo 64 --out out/
      scenewatch predict big.tif --model vegetation --scheduler tcp://scheduler:8786 --out /shared/out
      scenewatch predict s2.tif --model water-mndwi --model-option threshold=0.1 --bands sentinel2 --out out/
      scenewatch predict naip.tif --bands naip --out out/ --format gpkg,parquet --classes vegetation --min-area 0.1ha
      scenewatch predict s2_l2a.tif --model vegetation --threshold 0.6 --bands sentinel2-l2a --mask scl --out out/
      scenewatch predict scene.tif --bands red=1,nir=2,clm=3 --mask clm=1 --mask-dilate 2 --out out/
      scenewatch predict examples/data/naip_20200831_item.json --model vegetation --out out/
      scenewatch predict s3://my-bucket/items/S2B_20LLQ_20210922.json --model bare --bands nir=nir08 --mask scl \
          --resolution 20 --resampling swir16=average --s3-endpoint http://127.0.0.1:9000 --out out/
    """
    from pipeline.config import PredictConfig, VectorizeConfig
    from pipeline.models.contract import ModelRef
    from workflows.cluster import dask_client
    from workflows.report import captured_warnings
    from workflows.scene import plan_scene, predict_scene

    model_options = options.model_options_of(model_options, threshold)
    config: PredictConfig = build(PredictConfig, **predict_values)
    layers: VectorizeConfig | None = None
    if formats.strip().lower() != "none":  # checked now, not after the rasters are written
        layers = build(VectorizeConfig, formats=formats, min_area=min_area, sieve=sieve, simplify=simplify,
                       classes=classes, max_polygons=max_polygons, max_pixels=config.max_pixels)
    ref = ModelRef.of(model, **model_options)
    plan = plan_scene(scene, ref, config)  # a bad scene, model or band map is refused before any cluster starts
    started = time.perf_counter()
    # one cluster for both passes; the log's warnings go into the report
    with captured_warnings() as warned, dask_client(config.workers, config.scheduler, model=plan.model) as client, \
            ThreadPoolExecutor(1, thread_name_prefix="scenewatch-summary") as beside:
        result = predict_scene(plan, out, client=client, progress=False if quiet else None,
                               preload=POLYGON_MODULES if layers is not None else ())
        click.echo(f"{result.scene_id}: {result.tiles_planned} tiles ({result.tiles_skipped} without data) "
                   f"in {result.seconds:.1f} s -> {result.classes_path}, {result.proba_path}")
        # the area per class and the quicklook need only the class COG, finished now: read here while the
        # polygon pass runs in the workers (this process only waits on it), then printed and written after it
        prepared = beside.submit(_prepare_summary, result)
        polygons = None
        if layers is not None:
            # A second pass over the written COGs, in Dask workers, rather than predict_scene's on_core hook:
            # polygonizing then runs in parallel instead of in the stitching process, and gives exactly what
            # `scenewatch vectorize` gives on the same files.
            polygons = write_layers(result.classes_path, out, layers, proba_path=result.proba_path, quiet=quiet,
                                    client=client)
    _summarize(result, out, model_options, config, polygons, started, warned, prepared)


# What the polygon pass's first tasks import, imported while the scene ends (predict_scene's preload): its
# module, and pandas, which pyarrow imports at its first pa.array (0.5 CPU-s off each worker's first tile)
POLYGON_MODULES = ("workflows.vectorize", "pandas")


def _prepare_summary(result: Any) -> tuple[Any, bytes | Exception]:
    """In a thread beside the polygon pass: the area per class (its error raised, from the future) and the
    quicklook's PNG bytes or the error that made them (:func:`_summarize` warns of either)."""
    from pipeline.inference.summary import encode_classes_png, read_class_areas, read_classes_preview

    areas = read_class_areas(result.classes_path, result.model.class_names)
    try:
        return areas, encode_classes_png(read_classes_preview(result.classes_path), class_colors(result.model))
    except Exception as err:  # noqa: BLE001 - see _summarize
        return areas, err


def _summarize(result: Any, out: str, model_options: dict[str, Any], config: Any, polygons: Any, started: float,
               warned: list[str], prepared: Future[tuple[Any, bytes | Exception]]) -> None:
    """The area per class (printed), the quicklook PNG and report.html, from what :func:`_prepare_summary`
    ``prepared``. The products are written by now: a failure here is a warning, never a failed run."""
    from pipeline.products import product_path
    from workflows.report import predict_section, safely, write_run_report

    try:
        areas, made = prepared.result()
    except Exception as err:  # noqa: BLE001 - see the docstring
        log.warning("area per class not counted: %s: %s", type(err).__name__, err)
        return
    quicklook = product_path(out, result.scene_id, "quicklook")
    png = _quicklook(quicklook, made)
    print_class_areas(areas)
    if png is not None:
        click.echo(f"-> {quicklook}")
    section = safely(predict_section, result, areas, png, out_dir=out, model_options=model_options, config=config,
                     polygons=polygons, seconds=time.perf_counter() - started, warnings=warned)
    if section is not None:
        written = write_run_report(out, f"scenewatch predict: {result.scene_id}", [section])
        if written is not None:
            click.echo(f"-> {written}")


def _quicklook(path: Path, png: bytes | Exception) -> bytes | None:
    """The classes quicklook PNG written atomically, or None with a warning (``png`` the error its encoding
    raised): a picture never fails a finished run."""
    from pipeline.atomic import atomic_path

    try:
        if isinstance(png, Exception):
            raise png
        with atomic_path(path) as tmp:
            tmp.write_bytes(png)
        return png
    except Exception as err:  # noqa: BLE001 - see the docstring
        log.warning("quicklook %s not written: %s: %s", path, type(err).__name__, err)
        return None


def class_colors(info: Any) -> tuple[str, ...]:
    """The colour of each class: the model's class colours, or the project's fallback (pipeline.colours)."""
    from pipeline.colours import class_colours

    return class_colours(info.class_names, info.class_colors)


def print_class_areas(areas: Any) -> None:
    """Area per class in hectares, as `change` prints per transition, then the no-data share."""
    for name, area in zip(areas.class_names, areas.area_m2, strict=True):
        click.echo(f"  {name}: {area / 1e4:,.2f} ha")
    click.echo(f"  no data: {100 * areas.nodata_share:.1f} % of the pixels")
