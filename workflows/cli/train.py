"""``scenewatch train`` and ``scenewatch evaluate``: fine-tune a bundle on labelled scenes, and score it."""

from __future__ import annotations

import json
from typing import Any

import click

from pipeline.config import EvaluateConfig, PredictConfig
from pipeline.errors import ConfigError
from workflows.cli import options
from workflows.cli.options import build, report_errors

__all__ = ["train", "evaluate"]


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _region(text: str | None) -> tuple[int, int, int, int] | None:
    """``"row,col,height,width"`` -> the config's tuple, through the one parser of regions."""
    from workflows.train import parse_region

    window = parse_region(text)
    return None if window is None else (window.row_off, window.col_off, window.height, window.width)


# TrainConfig lives beside torch (workflows.train); its defaults are quoted here so that --help stays fast.
@click.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="YAML file of train options (keys as the flags, with underscores; scenes/labels as lists). "
                   "Flags given on the command line win.")
@click.option("--scene", "scenes", multiple=True, help="Labelled scene (repeatable; pairs with --labels in order).")
@click.option("--labels", "labels", multiple=True,
              help="Label raster (class numbers, nodata = unknown) or vector polygons (GeoJSON, GeoPackage, ...).")
@options.label_attribute
@options.out(help="Bundle folder to write.", required=False)
@options.model(help="Bundle to fine-tune (transfer learning).", default=None)
@click.option("--weights", default=None, help="State dict (.pt, .pth, .safetensors) to start --arch/--encoder from.")
@click.option("--arch", default=None, help="smp architecture for a new network [default: Unet].")
@click.option("--encoder", default=None, help="smp encoder for a new network [default: resnet18].")
@options.bands("The model's bands, in order, and where they are in the scenes (e.g. pan=1).")
@click.option("--classes", default=None, metavar="NAMES", help="Class names, class 0 first: 'background,building'.")
@options.region
@click.option("--freeze-encoder", is_flag=True, default=None, help="Train only the decoder and head.")
@click.option("--epochs", type=int, default=None, help="At most this many epochs [default: 10].")
@click.option("--batch-size", type=int, default=None, help="Chips per training step [default: 8].")
@click.option("--chip-size", type=int, default=None, help="Chip size in px, a multiple of 32 [default: 128].")
@click.option("--chips-per-epoch", type=int, default=None, help="Chips drawn per epoch [default: 128].")
@click.option("--block-size", type=int, default=None, help="Split block size in px [default: 2 x chip size].")
@click.option("--val-fraction", type=float, default=None,
              help="Share of blocks held out for validation [default: 0.2].")
@click.option("--learning-rate", type=float, default=None, help="AdamW peak learning rate [default: 0.001].")
@click.option("--patience", type=int, default=None,
              help="Stop after this many epochs without a better validation IoU [default: 5].")
@click.option("--sampling", default=None, metavar="balanced|random", help="Chip sampling [default: balanced].")
@click.option("--seed", type=int, default=None, help="Seed of every random draw [default: 0].")
@click.option("--name", default=None, help="Model name in the bundle [default: the folder name].")
@options.assume_crs
@options.mask_options
@options.quiet()
@report_errors
def train(config_path: str | None, scenes: tuple[str, ...], labels: tuple[str, ...], region: str | None,
          quiet: bool, **flags: Any) -> None:
    """Train or fine-tune a segmentation model on labelled scenes; write a model bundle.

    Chips are drawn from blocks of the scene; a seeded share of the blocks is held out for validation (no
    pixel on both sides) and training stops when validation IoU stops improving. The bundle holds the
    band list, class names, normalization, training history and data sources.

    \b
    Examples:
      scenewatch train --scene examples/data/spacenet4_atlanta_pan.tif \\
          --labels examples/data/spacenet4_atlanta_buildings.geojson --bands pan=1 \\
          --classes background,building --region 0,0,900,600 --epochs 12 --out models/buildings
      scenewatch train --scene s2.tif --labels classes.tif --model models/base --freeze-encoder --out models/ft
      scenewatch train --config workflows/train_example.yaml --epochs 3
    """
    from workflows.train import TrainConfig, load_train_config
    from workflows.train import train as run_train

    flags["freeze_encoder"] = flags.get("freeze_encoder") or None  # unset, so a config file's value stands
    values = {**flags, "scenes": scenes or None, "labels": labels or None, "region": _region(region)}
    if config_path is not None:
        config = load_train_config(config_path, **values)
    else:
        if not scenes or not labels or not flags.get("out"):
            raise ConfigError("train: give `scenes`, `labels` and `out` (or `config_path` FILE)")
        config = build(TrainConfig, **values)
    run = run_train(config, progress=False if quiet else None)
    for record in run.result.history:
        click.echo(f"epoch {record['epoch']:3d}  loss {record['train_loss']:.4f}  "
                   f"val IoU {_fmt(record.get('val_iou'))}", err=True)
    click.echo(f"{run.bundle}: best epoch {run.result.best_epoch}, validation IoU {_fmt(run.result.best_score)}, "
               f"{len(run.split.train)} training / {len(run.split.validation)} validation blocks, "
               f"{run.result.seconds:.0f} s")


@click.command()
@click.argument("scene", type=click.Path(dir_okay=False))
@options.model(help=f"Model bundle folder or built-in model ({options.builtin_models()}); not for a change "
                    "product.", default=None)
@click.option("--labels", "-l", "labels_path", required=True, help="Label raster or vector labels of SCENE.")
@click.option("--transition", "transitions", multiple=True,
              help="For a change product: a transition that counts as the change scored (repeatable), e.g. "
                   "other->water [default: every change].")
@options.label_attribute
@options.bands("Where the model's bands are in SCENE [default: from the band descriptions].")
@options.model_settings
@options.region
@click.option("--objects", "object_classes", multiple=True,
              help="Class to score as objects (repeatable) "
                   "[default: all but class 0 for vector labels, none for a raster].")
@click.option("--iou-threshold", type=float, default=None,
              help=f"Object match threshold [default: {options.default_of(EvaluateConfig, 'iou_threshold')}].")
@click.option("--min-object-pixels", type=int, default=None,
              help="Ignore predicted objects smaller than this "
                   f"[default: {options.default_of(EvaluateConfig, 'min_object_pixels')}].")
@options.out(help="Keep the predicted rasters in this folder [default: a temporary folder].", required=False)
@options.classify_options
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@options.quiet()
@report_errors
def evaluate(scene: str, model: str | None, labels_path: str, transitions: tuple[str, ...],
             label_attribute: str | None, model_options: dict[str, Any],
             threshold: str | None, region: str | None, object_classes: tuple[str, ...], iou_threshold: float | None,
             min_object_pixels: int | None, out: str | None, as_json: bool, quiet: bool,
             **predict_values: Any) -> None:
    """Score MODEL on SCENE against its labels: per-class IoU, F1, precision, recall, confusion matrix, and
    object precision/recall/F1 (polygons matched at IoU >= 0.5, as SpaceNet scores buildings).

    The whole scene is predicted (tiled and stitched, as `scenewatch predict` does) before scoring. For a
    trained bundle, the built-in index whose class matches one of its classes (water, vegetation/forest,
    bare/cleared, burned) is run on the same scene and scored on the same pixels, and printed beside it.
    SCENE may instead be a change product of `scenewatch change` (a *.change.tif raster or a *.change.gpkg
    layer): it is scored as change against no change, with no model, against a mask raster or polygons.

    \b
    Examples:
      scenewatch evaluate examples/data/spacenet4_atlanta_pan.tif --model models/buildings \\
          --labels examples/data/spacenet4_atlanta_buildings.geojson --bands pan=1 --region 0,600,900,300
      scenewatch evaluate s2.tif --model models/forest --labels classes.tif --json
      scenewatch evaluate out/before__after.change.tif --labels reference.tif --transition vegetation->other
    """
    from pipeline.models.contract import ModelRef
    from tiles.grid import PixelWindow
    from workflows.evaluate import evaluate_change, evaluate_scene, is_change_product

    if is_change_product(scene):
        window = _region(region)
        ev = evaluate_change(scene, labels_path, transitions=transitions or None, label_attribute=label_attribute,
                             region=None if window is None else PixelWindow(*window))
        _print_evaluation(ev, as_json)
        return
    if model is None:
        raise click.UsageError("Missing option '--model' (needed unless SCENE is a *.change.tif or *.change.gpkg)")

    model_options = options.model_options_of(model_options, threshold)
    config = build(EvaluateConfig, predict=build(PredictConfig, **predict_values), label_attribute=label_attribute,
                   region=_region(region), object_classes=object_classes or None, iou_threshold=iou_threshold,
                   min_object_pixels=min_object_pixels)
    ev = evaluate_scene(scene, ModelRef.of(model, **model_options), labels_path, config, out_dir=out,
                        progress=False if quiet else None)
    _print_evaluation(ev, as_json)


def _print_evaluation(ev: Any, as_json: bool) -> None:
    from workflows.evaluate import evaluation_dict

    if as_json:
        click.echo(json.dumps(evaluation_dict(ev), indent=2))
        return
    click.echo(f"{ev.scene} / {ev.model} vs {ev.labels}: {ev.pixels.pixels:,} pixels scored "
               f"({ev.unknown_pixels:,} unlabelled or nodata left out), accuracy {_fmt(ev.pixels.accuracy)}")
    click.echo(f"{'class':<16}{'IoU':>8}{'F1':>8}{'prec':>8}{'recall':>8}{'pixels':>12}")
    for c in ev.pixels.classes:
        click.echo(f"{c.name:<16}{_fmt(c.iou):>8}{_fmt(c.f1):>8}{_fmt(c.precision):>8}{_fmt(c.recall):>8}{c.support:>12,}")
    confusion = json.dumps([list(r) for r in ev.pixels.confusion])
    click.echo(f"confusion matrix (rows: true, columns: predicted): {confusion}")
    for o in ev.objects:
        click.echo(f"objects {o.name} (IoU >= {o.iou_threshold}): TP {o.true_positives}, FP {o.false_positives}, "
                   f"FN {o.false_negatives}; precision {_fmt(o.precision)}, recall {_fmt(o.recall)}, F1 {_fmt(o.f1)}")
    for b in ev.baselines:  # a trained network beside the built-in index that maps the same class
        verdict = "worse than" if b.network_iou < b.iou else "at least as good as"
        click.echo(f"baseline {b.class_name}: built-in index {b.model} ({b.description}) IoU {_fmt(b.iou)} on the "
                   f"same pixels; this model's {_fmt(b.network_iou)} is {verdict} the index")
