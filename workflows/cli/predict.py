"""``scenewatch predict``: segment one scene into class and probability COGs, then polygon layers."""

from __future__ import annotations

from typing import Any

import click

from workflows.cli import options
from workflows.cli.options import build, report_errors
from workflows.cli.vectorize import write_layers

__all__ = ["predict"]


@click.command()
@click.argument("scene", type=click.Path(dir_okay=False))
@options.model()
@options.out()
@options.bands("Where the model's bands are in SCENE [default: from the band descriptions].")
@options.model_options
@options.predict_options
@options.scene_options
@options.untrusted_options
@options.cluster_options
@options.formats(allow_none=True)
@options.vector_options
@options.quiet()
@report_errors
def predict(scene: str, model: str, out: str, model_options: dict[str, Any], formats: str, min_area: float | None,
            sieve: int | None, simplify: float | None, classes: str | None, max_polygons: int | None, quiet: bool,
            **predict_values: Any) -> None:
    """Segment SCENE into OUT/<scene>.classes.tif and OUT/<scene>.proba.tif (Cloud-Optimized GeoTIFFs), then
    polygon layers OUT/<scene>.<format> (see `scenewatch vectorize`).

    \b
    Examples:
      scenewatch predict examples/data/m_4709963_se_14_1_20200831.tif --model vegetation --bands naip --out out/
      scenewatch predict s2.tif --model ./my-unet --bands sentinel2 --tile-size 512 --halo 64 --out out/
      scenewatch predict big.tif --model vegetation --scheduler tcp://scheduler:8786 --out /shared/out
      scenewatch predict s2.tif --model water-mndwi --model-option threshold=0.1 --bands sentinel2 --out out/
      scenewatch predict naip.tif --bands naip --out out/ --format gpkg,parquet --classes vegetation --min-area 0.1ha
    """
    from pipeline.config import PredictConfig, VectorizeConfig
    from pipeline.models.contract import ModelRef
    from workflows.cluster import dask_client
    from workflows.scene import plan_scene, predict_scene

    config: PredictConfig = build(PredictConfig, **predict_values)
    layers: VectorizeConfig | None = None
    if formats.strip().lower() != "none":  # checked now, not after the rasters are written
        layers = build(VectorizeConfig, formats=formats, min_area=min_area, sieve=sieve, simplify=simplify,
                       classes=classes, max_polygons=max_polygons, max_pixels=config.max_pixels)
    ref = ModelRef.of(model, **model_options)
    plan = plan_scene(scene, ref, config)  # a bad scene, model or band map is refused before any cluster starts
    with dask_client(config.workers, config.scheduler, model=plan.model) as client:  # one cluster for both passes
        result = predict_scene(plan, out, client=client, progress=False if quiet else None)
        click.echo(f"{result.scene_id}: {result.tiles_planned} tiles ({result.tiles_skipped} without data) "
                   f"in {result.seconds:.1f} s -> {result.classes_path}, {result.proba_path}")
        if layers is not None:
            # A second pass over the written COGs, in Dask workers, rather than predict_scene's on_core hook:
            # polygonizing then runs in parallel instead of in the stitching process, and gives exactly what
            # `scenewatch vectorize` gives on the same files.
            write_layers(result.classes_path, out, layers, proba_path=result.proba_path, quiet=quiet, client=client)
