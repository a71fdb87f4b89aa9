"""``scenewatch models``: list, show, create, import and quantize models (built-in spectral models and
bundles)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from pipeline.errors import ConfigError, ModelError
from workflows.cli import options
from workflows.cli.options import band_names, report_errors

__all__ = ["models", "MODELS_ENV"]

MODELS_ENV = "SCENEWATCH_MODELS"


def _search_path(path: str | None) -> Path | None:
    chosen = path or os.environ.get(MODELS_ENV)
    return Path(chosen) if chosen else None


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


@click.group(invoke_without_command=True)
@click.option("--path", "search", type=click.Path(file_okay=False), default=None,
              help=f"Folder of model bundles to list [default: ${MODELS_ENV}].")
@click.pass_context
@report_errors
def models(ctx: click.Context, search: str | None) -> None:
    """List the built-in models and the bundles in --path (or $SCENEWATCH_MODELS).

    \b
    Examples:
      scenewatch models --path ./models
      scenewatch models show water
      scenewatch models init --arch Unet --encoder resnet18 --bands red,green,blue,nir \\
          --classes background,tree --out models/trees
      scenewatch models quantize models/trees --scene examples/data/m_4709963_se_14_1_20200831.tif --bands naip
    """
    ctx.obj = {"search": _search_path(search)}
    if ctx.invoked_subcommand is not None:
        return
    from pipeline.models import bundle
    from pipeline.models.contract import BUILTIN_MODELS, ModelRef
    from pipeline.models.loader import load_model

    click.echo("built-in:")
    for name in sorted(BUILTIN_MODELS):
        info = load_model(ModelRef.of(name)).info
        click.echo(f"  {name:<12} bands {','.join(info.bands):<16} classes {','.join(info.class_names):<20} "
                   f"{info.description}")
    folder = ctx.obj["search"]
    if folder is None:
        click.echo(f"bundles: none searched (pass --path or set {MODELS_ENV})")
        return
    found = bundle.find_bundles(folder)
    click.echo(f"bundles in {folder}:" if found else f"bundles in {folder}: none")
    for path in found:
        try:
            spec = bundle.read_spec(path)
        except ModelError as err:
            click.echo(f"  {path.name:<12} unreadable: {err}")
            continue
        variant = f" +int8 (drift {spec.int8.drift:.4f})" if spec.int8 else ""
        click.echo(f"  {path.name:<12} {spec.arch}/{spec.encoder} v{spec.version} bands {','.join(spec.bands)} "
                   f"classes {','.join(spec.class_names)}{variant}")


def _locate(name: str, search: Path | None) -> Path | None:
    """A bundle by path, or by folder name under the search path."""
    from pipeline.models.bundle import is_bundle

    for candidate in (Path(name), *([search / name] if search else [])):
        if is_bundle(candidate) or (candidate.name == "model.json" and candidate.is_file()):
            return candidate
    return None


@models.command()
@click.argument("name")
@options.model_options
@click.pass_context
@report_errors
def show(ctx: click.Context, name: str, model_options: dict[str, Any]) -> None:
    """Print the spec of NAME: a built-in model, a bundle path, or a bundle name in --path.

    \b
    Examples:
      scenewatch models show vegetation
      scenewatch models show water --model-option threshold=0.2
      scenewatch models show ./models/trees
      scenewatch models --path ./models show trees
    """
    from pipeline.models.bundle import read_spec
    from pipeline.models.contract import BUILTIN_MODELS, ModelRef
    from pipeline.models.loader import load_model

    if name in BUILTIN_MODELS:
        model = load_model(ModelRef.of(name, **model_options))
        info = model.info
        shown = {"name": info.name, "version": info.version, "kind": "built-in spectral index",
                 "bands": list(info.bands), "classes": list(info.class_names),
                 "class_colors": list(info.class_colors), "tile_size": info.tile_size, "halo": info.halo,
                 "description": info.description, "licence": info.licence}
        for key in ("threshold", "softness"):
            if hasattr(model, key):
                shown[key] = getattr(model, key)
        if getattr(model, "auto", False):  # threshold=auto: computed per scene; "threshold" is its fallback
            shown["threshold"] = "auto"
            shown["fallback_threshold"] = model.threshold  # type: ignore[attr-defined]
        click.echo(json.dumps(shown, indent=2))
        return
    path = _locate(name, ctx.obj["search"])
    if path is None:
        known = ", ".join(sorted(BUILTIN_MODELS))
        raise ModelError(f"model {name!r}: not a built-in model ({known}) nor a bundle; pass a bundle folder "
                         f"or --path with the folder that holds it")
    click.echo(json.dumps(dict(read_spec(path).properties), indent=2, ensure_ascii=False))


_bundle_options = options.stack(
    click.option("--arch", required=True, help="smp architecture: Unet, UnetPlusPlus, FPN, DeepLabV3Plus, ..."),
    click.option("--encoder", required=True,
                 help="smp encoder, e.g. resnet18, efficientnet-b0 (no weights are downloaded)."),
    options.bands("The model's input bands, in order.", required=True),
    click.option("--classes", "classes", required=True, metavar="NAMES", help="Class names in order: background,tree"),
    options.out(help="Bundle folder to write."),
    click.option("--colors", "colors", default=None, help="Class colours #rrggbb, one per class."),
    click.option("--mean", "mean", default=None, help="Per-band mean in raw band units (z-score input)."),
    click.option("--std", "std", default=None, help="Per-band standard deviation in raw band units."),
    options.tile_size(default="512"),
    options.halo(default="32"),
    click.option("--name", default=None, help="Model name [default: the folder name]."),
    click.option("--version", "version", default=None, help="Model version [default: 0.1.0]."),
    click.option("--licence", default=None, help="Licence [default: proprietary]."),
)
"""What a new bundle is: shared by ``init`` and ``import``."""


def _save_options(colors: str | None, mean: str | None, std: str | None, tile_size: int | None,
                  halo: int | None, name: str | None, version: str | None, licence: str | None) -> dict[str, Any]:
    """The bundle writer's keyword options; those not given keep the writer's defaults."""
    try:
        means = [float(v) for v in _split(mean)] if mean else None
        stds = [float(v) for v in _split(std)] if std else None
    except ValueError as err:
        raise ConfigError(f"`mean`/`std`: numbers separated by commas, e.g. 0.1,0.2 ({err})") from err
    given = {"tile_size": tile_size, "halo": halo, "name": name, "version": version, "licence": licence}
    return {"class_colors": _split(colors) if colors else (), "mean": means, "std": stds,
            **{k: v for k, v in given.items() if v is not None}}


@models.command()
@_bundle_options
@click.option("--seed", type=int, default=0, show_default=True, help="Random initialisation seed.")
@report_errors
def init(arch: str, encoder: str, bands: str, classes: str, out: str, seed: int, **values: Any) -> None:
    """Write a new, randomly initialised bundle: the starting point for training.

    \b
    Example:
      scenewatch models init --arch Unet --encoder resnet18 --bands red,green,blue,nir \\
          --classes background,tree --out models/trees
    """
    from pipeline.models.bundle import init_bundle

    path = init_bundle(out, arch, encoder, band_names(bands), _split(classes), seed=seed, **_save_options(**values))
    click.echo(f"bundle written: {path}")


@models.command(name="import")
@click.argument("weights", type=click.Path(dir_okay=False))
@_bundle_options
@report_errors
def import_(weights: str, arch: str, encoder: str, bands: str, classes: str, out: str, **values: Any) -> None:
    """Convert a PyTorch state dict (.pt/.pth) into a bundle, once; only plain tensors are accepted
    (torch.load with weights_only=True), so a pickle that runs code is refused.

    \b
    Example:
      scenewatch models import unet.pth --arch Unet --encoder resnet34 --bands red,green,blue \\
          --classes background,building --out models/buildings
    """
    from pipeline.models.bundle import import_state_dict

    path = import_state_dict(weights, out, arch=arch, encoder=encoder, bands=band_names(bands),
                             class_names=_split(classes), **_save_options(**values))
    click.echo(f"bundle written: {path}")


@models.command()
@click.argument("name")
@click.option("--scene", "scenes", multiple=True, required=True, type=click.Path(dir_okay=False),
              help="Scene to calibrate on, repeatable; pick scenes like those the model will see.")
@options.bands("Where the model's bands are in the scenes [default: from the band descriptions].")
@click.option("--tiles", type=int, default=32, show_default=True,
              help="Tiles to read, spread over the scenes; every other one is held out to measure the drift.")
@click.pass_context
@report_errors
def quantize(ctx: click.Context, name: str, scenes: tuple[str, ...], bands: str | None, tiles: int) -> None:
    """Calibrate an int8 variant of bundle NAME and store it in the bundle (needs scenewatch[int8]).

    int8 runs a U-Net about twice as fast as bf16 on a CPU. Calibration measures each activation's range on
    tiles of your scenes, then the drift from fp32 on held-out tiles; a variant over the limit that
    `--precision auto` allows is refused. Afterwards `--precision auto` uses it on CPUs with OpenVINO.

    \b
    Example:
      scenewatch models quantize models/trees --scene examples/data/m_4709963_se_14_1_20200831.tif --bands naip
    """
    from pipeline.models.quantize import quantize_bundle

    path = _locate(name, ctx.obj["search"])
    if path is None:
        raise ModelError(f"model {name!r}: not a bundle; pass a bundle folder or --path with the folder "
                         f"that holds it")
    click.echo(f"bundle {path.name}: calibrating int8 on up to {tiles} tile(s) of {len(scenes)} scene(s) ...")
    result = quantize_bundle(path, list(scenes), bands=bands, tiles=tiles)
    click.echo(f"bundle {path.name}: int8 variant written; on {result.held_out_tiles} held-out tile(s) it drifts "
               f"{result.drift:.4f} from fp32 (worst tile {result.worst_drift:.4f}) and agrees on "
               f"{result.agreement:.2%} of pixels ({result.seconds:.0f} s)")
