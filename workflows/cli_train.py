"""``scenewatch train`` and ``scenewatch evaluate``: fine-tune a bundle on labelled scenes, and score it."""

from __future__ import annotations

import json
from typing import Any

import click

from workflows.cli_models import report_errors

__all__ = ["train", "evaluate"]


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


@click.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="YAML file of train options (keys as the flags, with underscores; scenes/labels as lists). "
                   "Flags given on the command line win.")
@click.option("--scene", "scenes", multiple=True, help="Labelled scene (repeatable; pairs with --labels in order).")
@click.option("--labels", "labels", multiple=True,
              help="Label raster (class numbers, nodata = unknown) or vector polygons (GeoJSON, GeoPackage, ...).")
@click.option("--label-attribute", default=None,
              help="Class attribute of vector labels (class names or numbers) [default: every polygon is class 1].")
@click.option("--out", "-o", default=None, help="Bundle folder to write.")
@click.option("--model", "-m", default=None, help="Bundle to fine-tune (transfer learning).")
@click.option("--weights", default=None, help="State dict (.pt, .pth, .safetensors) to start --arch/--encoder from.")
@click.option("--arch", default=None, help="smp architecture for a new network [default: Unet].")
@click.option("--encoder", default=None, help="smp encoder for a new network [default: resnet18].")
@click.option("--bands", "-b", default=None, help="Band map naming the model's bands in order: 'pan=1', "
              "'blue=1,nir=2,swir16=3', or a preset (naip, sentinel2, ...).")
@click.option("--classes", default=None, help="Class names, class 0 first: 'background,building'.")
@click.option("--region", default=None, metavar="ROW,COL,HEIGHT,WIDTH",
              help="Train only inside this pixel window of each scene (keep the rest for evaluation).")
@click.option("--freeze-encoder", is_flag=True, default=None, help="Train only the decoder and head.")
@click.option("--epochs", type=int, default=None, help="At most this many epochs [default: 10].")
@click.option("--batch-size", type=int, default=None, help="Chips per step [default: 8].")
@click.option("--chip-size", type=int, default=None, help="Chip size in px, a multiple of 32 [default: 128].")
@click.option("--chips-per-epoch", type=int, default=None, help="Chips drawn per epoch [default: 128].")
@click.option("--block-size", type=int, default=None, help="Split block size in px [default: 2 x chip size].")
@click.option("--val-fraction", type=float, default=None, help="Share of blocks held out for validation [default: 0.2].")
@click.option("--learning-rate", type=float, default=None, help="AdamW peak learning rate [default: 0.001].")
@click.option("--patience", type=int, default=None, help="Stop after this many epochs without a better validation IoU [default: 5].")
@click.option("--sampling", type=click.Choice(["balanced", "random"]), default=None, help="Chip sampling [default: balanced].")
@click.option("--seed", type=int, default=None, help="Seed of every random draw [default: 0].")
@click.option("--name", default=None, help="Model name in the bundle [default: the folder name].")
@click.option("--assume-crs", default=None, metavar="CRS", help="CRS for scenes that have none.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@report_errors
def train(config_path: str | None, scenes: tuple[str, ...], labels: tuple[str, ...], quiet: bool,
          region: str | None, **flags: Any) -> None:
    """Train or fine-tune a segmentation model on labelled scenes; write a model bundle.

    Chips are drawn from blocks of the scene; a seeded share of the blocks is held out for validation (no
    pixel on both sides) and training stops when validation IoU stops improving. The bundle holds the
    band list, class names, normalization, training history and data sources.

    \b
    Examples:
      scenewatch train --scene atlanta.tif --labels buildings.geojson --bands pan=1 \\
          --classes background,building --region 0,0,900,600 --epochs 12 --out models/buildings
      scenewatch train --scene s2.tif --labels classes.tif --model models/base --freeze-encoder --out models/ft
      scenewatch train --config train.yaml --epochs 3
    """
    from pipeline.errors import ConfigError
    from workflows.train import TrainConfig, load_train_config, parse_region, train as run_train

    window = parse_region(region)
    flags["freeze_encoder"] = flags.get("freeze_encoder") or None  # unset, so a config file's value stands
    values = {**flags, "scenes": scenes or None, "labels": labels or None,
              "region": (window.row_off, window.col_off, window.height, window.width) if window else None}
    if config_path is not None:
        config = load_train_config(config_path, **values)
    else:
        if not scenes or not labels or not flags.get("out"):
            raise ConfigError("train: give --scene, --labels and --out (or --config FILE)")
        config = TrainConfig.build(**values)
    run = run_train(config, progress=False if quiet else None)
    for record in run.result.history:
        click.echo(f"epoch {record['epoch']:3d}  loss {record['train_loss']:.4f}  val IoU {_fmt(record.get('val_iou'))}",
                   err=True)
    click.echo(f"{run.bundle}: best epoch {run.result.best_epoch}, validation IoU {_fmt(run.result.best_score)}, "
               f"{len(run.split.train)} training / {len(run.split.validation)} validation blocks, "
               f"{run.result.seconds:.0f} s")


@click.command()
@click.argument("scene", type=click.Path(dir_okay=False))
@click.option("--model", "-m", required=True, help="Bundle or built-in model name.")
@click.option("--labels", "-l", "labels_path", required=True, help="Label raster or vector labels of SCENE.")
@click.option("--label-attribute", default=None, help="Class attribute of vector labels [default: every polygon is class 1].")
@click.option("--bands", "-b", default=None, help="Band map of SCENE, as for predict.")
@click.option("--region", default=None, metavar="ROW,COL,HEIGHT,WIDTH", help="Score only this pixel window (e.g. the part held out of training).")
@click.option("--objects", "object_classes", multiple=True,
              help="Class to score as objects (repeatable) [default: all but class 0 for vector labels, none for a raster].")
@click.option("--iou-threshold", type=float, default=0.5, show_default=True, help="Object match threshold.")
@click.option("--min-object-pixels", type=int, default=0, show_default=True, help="Ignore predicted objects smaller than this.")
@click.option("--out", "-o", "out_dir", default=None, help="Keep the predicted rasters in this folder.")
@click.option("--workers", type=int, default=None, help="Local Dask worker processes [default: one per core].")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@report_errors
def evaluate(scene: str, model: str, labels_path: str, label_attribute: str | None, bands: str | None,
             region: str | None, object_classes: tuple[str, ...], iou_threshold: float, min_object_pixels: int,
             out_dir: str | None, workers: int | None, as_json: bool, quiet: bool) -> None:
    """Score MODEL on SCENE against its labels: per-class IoU, F1, precision, recall, confusion matrix, and
    object precision/recall/F1 (polygons matched at IoU >= 0.5, as SpaceNet scores buildings).

    The whole scene is predicted (tiled and stitched, as `scenewatch predict` does) before scoring.

    \b
    Examples:
      scenewatch evaluate atlanta.tif --model models/buildings --labels buildings.geojson --bands pan=1 \\
          --region 0,600,900,300
      scenewatch evaluate s2.tif --model models/forest --labels classes.tif --json
    """
    from workflows.evaluate import evaluate_scene, evaluation_dict
    from workflows.train import parse_region

    ev = evaluate_scene(scene, model, labels_path, label_attribute=label_attribute, region=parse_region(region),
                        object_classes=object_classes or None, out_dir=out_dir, iou_threshold=iou_threshold,
                        min_object_pixels=min_object_pixels, progress=False if quiet else None, bands=bands,
                        workers=workers)
    if as_json:
        click.echo(json.dumps(evaluation_dict(ev), indent=2))
        return
    click.echo(f"{ev.scene} / {ev.model} vs {ev.labels}: {ev.pixels.pixels:,} pixels scored "
               f"({ev.unknown_pixels:,} unlabelled or nodata left out), accuracy {_fmt(ev.pixels.accuracy)}")
    click.echo(f"{'class':<16}{'IoU':>8}{'F1':>8}{'prec':>8}{'recall':>8}{'pixels':>12}")
    for c in ev.pixels.classes:
        click.echo(f"{c.name:<16}{_fmt(c.iou):>8}{_fmt(c.f1):>8}{_fmt(c.precision):>8}{_fmt(c.recall):>8}{c.support:>12,}")
    click.echo("confusion matrix (rows: true, columns: predicted): " + json.dumps([list(r) for r in ev.pixels.confusion]))
    for o in ev.objects:
        click.echo(f"objects {o.name} (IoU >= {o.iou_threshold}): TP {o.true_positives}, FP {o.false_positives}, "
                   f"FN {o.false_negatives}; precision {_fmt(o.precision)}, recall {_fmt(o.recall)}, F1 {_fmt(o.f1)}")
