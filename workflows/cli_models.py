"""``scenewatch models``: list, show, create, import and quantize models (built-in spectral models and
bundles)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

import click

from pipeline.errors import ConfigError, ModelError

__all__ = ["models", "parse_model_options", "MODELS_ENV"]

MODELS_ENV = "SCENEWATCH_MODELS"


def parse_model_options(pairs: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``("threshold=0.2", "compile=true")`` -> ``{"threshold": 0.2, "compile": True}``; numbers and
    true/false are converted, anything else stays a string."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ConfigError(f"--model-option {pair!r}: write KEY=VALUE, e.g. --model-option threshold=0.2")
        value: Any = raw.strip()
        if value.lower() in ("true", "yes", "on"):
            value = True
        elif value.lower() in ("false", "no", "off"):
            value = False
        else:
            for kind in (int, float):
                try:
                    value = kind(value)
                    break
                except ValueError:
                    continue
        options[key] = value
    return options


def report_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """workflows.cli.report_errors, looked up at call time: ``python -m workflows.cli`` runs cli.py as
    ``__main__`` and a module-level import of workflows.cli from here would be circular."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from workflows.cli import report_errors as report

        return report(func)(*args, **kwargs)

    return wrapper


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
      scenewatch models quantize models/trees --scene scene.tif --bands naip
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

    for candidate in (Path(name), *( [search / name] if search else [] )):
        if is_bundle(candidate) or (candidate.name == "model.json" and candidate.is_file()):
            return candidate
    return None


@models.command()
@click.argument("name")
@click.option("--option", "-o", "option_pairs", multiple=True, metavar="KEY=VALUE",
              help="Model option to show the effect of, e.g. threshold=0.2 (built-in models).")
@click.pass_context
@report_errors
def show(ctx: click.Context, name: str, option_pairs: tuple[str, ...]) -> None:
    """Print the spec of NAME: a built-in model, a bundle path, or a bundle name in --path.

    \b
    Examples:
      scenewatch models show vegetation
      scenewatch models show ./models/trees
      scenewatch models --path ./models show trees
    """
    from pipeline.models.bundle import read_spec
    from pipeline.models.contract import BUILTIN_MODELS, ModelRef
    from pipeline.models.loader import load_model

    if name in BUILTIN_MODELS:
        model = load_model(ModelRef.of(name, **parse_model_options(option_pairs)))
        info = model.info
        out = {"name": info.name, "version": info.version, "kind": "built-in spectral index",
               "bands": list(info.bands), "classes": list(info.class_names),
               "class_colors": list(info.class_colors), "tile_size": info.tile_size, "halo": info.halo,
               "description": info.description, "licence": info.licence}
        for key in ("threshold", "softness"):
            if hasattr(model, key):
                out[key] = getattr(model, key)
        click.echo(json.dumps(out, indent=2))
        return
    path = _locate(name, ctx.obj["search"])
    if path is None:
        known = ", ".join(sorted(BUILTIN_MODELS))
        raise ModelError(f"model {name!r}: not a built-in model ({known}) nor a bundle; pass a bundle folder "
                         f"or --path with the folder that holds it")
    click.echo(json.dumps(dict(read_spec(path).properties), indent=2, ensure_ascii=False))


def _bundle_options(func: Any) -> Any:
    options = [
        click.option("--arch", required=True, help="smp architecture: Unet, UnetPlusPlus, FPN, DeepLabV3Plus, ..."),
        click.option("--encoder", required=True, help="smp encoder, e.g. resnet18, efficientnet-b0 (no weights "
                                                       "are downloaded)."),
        click.option("--bands", "band_list", required=True, help="Input bands by name, in order: red,green,blue,nir"),
        click.option("--classes", "class_list", required=True, help="Class names in order: background,tree"),
        click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Bundle folder to write."),
        click.option("--colors", "color_list", default=None, help="Class colours #rrggbb, one per class."),
        click.option("--mean", "mean_list", default=None, help="Per-band mean in raw band units (z-score input)."),
        click.option("--std", "std_list", default=None, help="Per-band standard deviation in raw band units."),
        click.option("--tile-size", type=int, default=512, show_default=True, help="Preferred core tile size."),
        click.option("--halo", type=int, default=32, show_default=True, help="Preferred halo (receptive field)."),
        click.option("--name", default=None, help="Model name [default: the folder name]."),
        click.option("--version", "model_version", default="0.1.0", show_default=True),
        click.option("--licence", default="proprietary", show_default=True),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _save_options(color_list: str | None, mean_list: str | None, std_list: str | None, tile_size: int,
                  halo: int, name: str | None, model_version: str, licence: str) -> dict[str, Any]:
    try:
        mean = [float(v) for v in _split(mean_list)] if mean_list else None
        std = [float(v) for v in _split(std_list)] if std_list else None
    except ValueError as err:
        raise ConfigError(f"--mean/--std: numbers separated by commas, e.g. --mean 0.1,0.2 ({err})") from err
    return {"class_colors": _split(color_list) if color_list else (), "mean": mean, "std": std,
            "tile_size": tile_size, "halo": halo, "name": name, "version": model_version, "licence": licence}


@models.command()
@_bundle_options
@click.option("--seed", type=int, default=0, show_default=True, help="Random initialisation seed.")
@report_errors
def init(arch: str, encoder: str, band_list: str, class_list: str, out: str, seed: int, **options: Any) -> None:
    """Write a new, randomly initialised bundle: the starting point for training.

    \b
    Example:
      scenewatch models init --arch Unet --encoder resnet18 --bands red,green,blue,nir \\
          --classes background,tree --out models/trees
    """
    from pipeline.models.bundle import init_bundle

    path = init_bundle(out, arch, encoder, _split(band_list), _split(class_list), seed=seed,
                       **_save_options(**options))
    click.echo(f"bundle written: {path}")


@models.command(name="import")
@click.argument("weights", type=click.Path(dir_okay=False))
@_bundle_options
@report_errors
def import_(weights: str, arch: str, encoder: str, band_list: str, class_list: str, out: str,
            **options: Any) -> None:
    """Convert a PyTorch state dict (.pt/.pth) into a bundle, once; only plain tensors are accepted
    (torch.load with weights_only=True), so a pickle that runs code is refused.

    \b
    Example:
      scenewatch models import unet.pth --arch Unet --encoder resnet34 --bands red,green,blue \\
          --classes background,building --out models/buildings
    """
    from pipeline.models.bundle import import_state_dict

    path = import_state_dict(weights, out, arch=arch, encoder=encoder, bands=_split(band_list),
                             class_names=_split(class_list), **_save_options(**options))
    click.echo(f"bundle written: {path}")


@models.command()
@click.argument("name")
@click.option("--scene", "scenes", multiple=True, required=True, type=click.Path(dir_okay=False),
              help="Scene to calibrate on, repeatable; pick scenes like those the model will see.")
@click.option("--bands", "-b", default=None,
              help="Band map for the scenes, as for predict: a preset (naip, sentinel2, landsat8) or red=1,nir=4.")
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
      scenewatch models quantize models/trees --scene scenes/a.tif --scene scenes/b.tif --bands naip
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
