"""Every option that several ``scenewatch`` commands share, declared once, and the one :func:`report_errors`.

As rasterio's ``rio/options.py``: command modules stack these decorators and import nothing from
:mod:`workflows.cli.main` (which imports them to register the commands), so no import cycle is possible.

Each option's destination is the library's name for the value (``--classes`` -> ``classes``, ``--date`` ->
``acquired``, ``--objects`` -> ``object_classes``): library errors name parameters in backticks, and
:func:`report_errors` shows each as the flag of the command that ran (:func:`cli_message`).

One grammar per value, parsed by one function, the same on every command:

- ``--bands``: a band map ``red=1,nir=4``, a preset (``naip``, ``sentinel2``, ...) or band names in file order
  ``red,green,blue`` (= ``red=1,green=2,blue=3``): :func:`parse_bands`.
- ``--min-area``: m² as a number, or with a unit (``5000m2``, ``0.5ha``, ``1km2``): :func:`pipeline.config.parse_area`.
- ``--model-option KEY=VALUE``, repeatable: :func:`parse_model_options`; ``--threshold VALUE`` is
  ``--model-option threshold=VALUE`` (:func:`model_options_of` joins them, and refuses both with two values).
- ``--mask NAME=VALUES`` (repeatable, one band each) and ``--mask-dilate N``: a quality mask,
  :func:`pipeline.inference.masks.parse_quality_mask`.
- vocabularies (precision, blend, proba dtype, vector formats) come from :mod:`pipeline.vocab`; defaults
  shown in help come from the configs in :mod:`pipeline.config`.

A value that does not parse is one line, ``scenewatch: error: ...``, exit code 2 (as every
:class:`~pipeline.errors.ConfigError`); click's own usage errors (an unknown flag, ``--tile-size abc``, a
value outside a choice) keep click's format and also exit 2.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable
from functools import wraps
from typing import Any, TypeVar

import click

from pipeline.config import ChangeOptions, PredictConfig, VectorizeConfig, parse_area
from pipeline.errors import BandMapError, ConfigError, ScenewatchError
from pipeline.inference.read import SENSOR_PRESETS
from pipeline.vocab import BlendMethod, Precision, ProbaDtype, VectorFormat, choices

__all__ = [
    "assume_crs", "band_names", "bands", "build", "builtin_models", "classify_options", "cli_message",
    "cluster_options", "date_pattern", "default_of", "formats", "grid", "halo", "label_attribute", "max_offset",
    "mask_options", "max_pixels", "min_area", "model", "model_options", "model_options_of", "model_settings",
    "out", "parse_bands", "parse_model_options", "polygons", "predict_options", "quiet", "region", "report_errors",
    "scene_options", "sieve", "change_sieve", "stack", "threshold", "tile_size", "untrusted_options", "vector_options",
    "stac_source", "stac_source_options",
]

F = TypeVar("F", bound=Callable[..., Any])
Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]
"""What ``click.option(...)`` is: a function that takes a command's function and returns it with the option."""

# ------------------------------------------------------------------------------------------------- errors

_PARAMETER = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)`")


def _flags(ctx: click.Context | None) -> dict[str, str]:
    """Parameter name -> its long flag, for the running command and then the groups above it."""
    flags: dict[str, str] = {}
    while ctx is not None:
        for param in ctx.command.params:
            if isinstance(param, click.Option) and param.name and param.name not in flags:
                longs = [opt for opt in param.opts if opt.startswith("--")]
                flags[param.name] = (longs or param.opts)[0]
        ctx = ctx.parent
    return flags


def cli_message(message: str, ctx: click.Context | None = None) -> str:
    """``message`` with each parameter named in backticks (`` `assume_crs` ``) shown as the flag of the running
    command for it (``--assume-crs``), or as the bare name where the command has no such option."""
    flags = _flags(ctx if ctx is not None else click.get_current_context(silent=True))

    def flag(match: re.Match[str]) -> str:
        name = match.group(1)
        return flags.get(name.rsplit(".", 1)[-1], name)

    return _PARAMETER.sub(flag, message)


def report_errors(func: F) -> F:
    """Turn a :class:`~pipeline.errors.ScenewatchError` into one line on stderr, ``scenewatch: error: ...``,
    and its exit code (2 for a ConfigError). Anything else is a bug: one line that says so and exit code 1,
    or its traceback with ``scenewatch --debug``. Wraps every command and every option callback that parses
    a value."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ScenewatchError as err:
            one_line = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
            click.echo(f"scenewatch: error: {cli_message(one_line)}", err=True)
            sys.exit(err.exit_code)
        except (click.exceptions.ClickException, click.exceptions.Abort, click.exceptions.Exit):
            raise  # click's own: usage errors (exit 2), Ctrl-C, --help
        except Exception as err:
            if _debug():
                raise
            first = str(err).splitlines()[0] if str(err) else ""
            click.echo(f"scenewatch: error: unexpected error, please report it: {type(err).__name__}: {first} "
                       "(rerun with --debug for the traceback)", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def remote_out(func: F) -> F:
    """Let a command's ``--out`` be ``s3://bucket/prefix``: the command writes into a local staging folder
    as it would into a local ``--out`` (atomic files, its report), and once it has finished without error
    every file is uploaded under the prefix (:func:`pipeline.storage.staged_output`); a failed command
    uploads nothing. Goes under :func:`report_errors`, so a failed upload is one line too."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from pipeline.storage import is_remote_out, staged_output

        url = kwargs.get("out")
        if url is None or not is_remote_out(url):
            return func(*args, **kwargs)
        with staged_output(url) as folder:
            result = func(*args, **{**kwargs, "out": str(folder)})
        click.echo(f"-> uploaded to {url}")
        return result

    return wrapper  # type: ignore[return-value]


def _debug() -> bool:
    """Whether the user asked for tracebacks (``scenewatch --debug ...``)."""
    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.find_root().params.get("debug"))


def build(config_class: Any, **values: Any) -> Any:
    """``config_class.build(**values)``, with each refused key named in backticks so that
    :func:`report_errors` shows the flag that set it (``--tile-size: Input should be greater than 0``)."""
    from pydantic import ValidationError

    try:
        return config_class.build(**values)
    except ConfigError as err:
        cause = err.__cause__
        if not isinstance(cause, ValidationError):
            raise
        parts = []
        for e in cause.errors():
            names = [str(p) for p in e["loc"] if isinstance(p, str)]
            text = e["msg"].removeprefix("Value error, ")
            parts.append(f"`{names[-1]}`: {text}" if names else text)
        raise ConfigError("; ".join(parts)) from cause


# ------------------------------------------------------------------------------------------------ grammars

_BAND_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def parse_bands(text: str) -> str:
    """The band map ``text`` as the library reads it (:func:`pipeline.inference.read.parse_band_map`):
    ``red=1,nir=4`` and presets (``naip``) unchanged, band names in file order (``red,green,blue``) as
    ``red=1,green=2,blue=3``. Raises :class:`~pipeline.errors.BandMapError` naming what it cannot read."""
    from pipeline.inference.read import parse_band_map

    if text.strip().lower() in SENSOR_PRESETS:
        return text
    parts = [part.strip() for part in text.split(",")]
    indexed = [part for part in parts if "=" in part]
    if not indexed:  # names in file order
        bad = [part for part in parts if not _BAND_NAME.fullmatch(part)]
        if bad:
            raise BandMapError(f"band map {text!r}: cannot read {bad[0]!r}; write band names in file order "
                               f"(red,green,blue), name=index pairs (red=1,nir=4) or a preset "
                               f"({', '.join(SENSOR_PRESETS)})")
        lowered = [part.lower() for part in parts]
        presets = [name for name in lowered if name in SENSOR_PRESETS]
        if presets:
            raise BandMapError(f"band map {text!r}: {presets[0]} is a preset; give it alone, or name each band")
        twice = sorted({name for name in lowered if lowered.count(name) > 1})
        if twice:
            raise BandMapError(f"band map {text!r}: {', '.join(twice)} named twice")
        return ",".join(f"{name}={i}" for i, name in enumerate(lowered, start=1))
    if len(indexed) != len(parts):
        raise BandMapError(f"band map {text!r}: give every band its index (red=1,nir=4) or none "
                           f"(red,green,blue: bands 1, 2, 3)")
    parse_band_map(text)
    return text


def band_names(text: str) -> list[str]:
    """The band names of a band map in file order: what a model bundle lists as its inputs."""
    from pipeline.inference.masks import model_band_names
    from pipeline.inference.read import parse_band_map

    indexes = parse_band_map(parse_bands(text)).indexes
    indexes = {name: indexes[name] for name in model_band_names(indexes)}
    if len(set(indexes.values())) != len(indexes):
        raise ConfigError(f"band map {text!r}: two names for one band; a model's bands are distinct")
    return sorted(indexes, key=lambda name: indexes[name])


def parse_model_options(pairs: Iterable[str]) -> dict[str, Any]:
    """``("threshold=0.2", "compile=true")`` -> ``{"threshold": 0.2, "compile": True}``; integers, floats and
    true/false (yes/no, on/off) are converted, anything else stays text."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ConfigError(f"`model_options` {pair!r}: write KEY=VALUE, e.g. threshold=0.2")
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


def model_options_of(model_options: dict[str, Any] | None, threshold: str | None) -> dict[str, Any]:
    """``--model-option`` pairs with ``--threshold`` folded in as ``threshold``; both given with different
    values is an error naming both flags."""
    options = dict(model_options or {})
    if threshold is None:
        return options
    value = parse_model_options([f"threshold={threshold}"])["threshold"]
    if "threshold" in options and options["threshold"] != value:
        raise ConfigError(f"`threshold` {threshold} and `model_options` threshold={options['threshold']} disagree; "
                          "give one of them")
    return options | {"threshold": value}


@report_errors
def _mask_callback(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> Any:
    from pipeline.inference.masks import parse_quality_mask

    return parse_quality_mask(value)


@report_errors
def _bands_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    try:
        return None if value is None else parse_bands(value)
    except BandMapError as err:  # a flag that does not parse: a usage error, exit code 2
        raise ConfigError(str(err)) from err


@report_errors
def _area_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    return None if value is None else parse_area(value)


@report_errors
def _model_options_callback(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> dict[str, Any]:
    return parse_model_options(value)


# ------------------------------------------------------------------------------------------------ options


def stack(*options: Decorator) -> Decorator:
    """One decorator applying ``options`` in the order listed (as they appear in --help)."""

    def apply(func: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            func = option(func)
        return func

    return apply


def default_of(config: Any, name: str) -> Any:
    """The default of a config field, for help texts: each default is written once, in the config."""
    return config.model_fields[name].default


def _given(**settings: Any) -> dict[str, Any]:
    """``settings`` without those that are None: click >= 8.3 counts an explicit ``default=None`` as a value
    given, so that a required option without one would pass as None."""
    return {k: v for k, v in settings.items() if v is not None}


def out(help: str = "Output folder, or s3://bucket/prefix (files uploaded once complete).",
        required: bool = True) -> Decorator:
    return click.option("--out", "-o", "out", type=click.Path(file_okay=False), required=required, help=help)


def state() -> Decorator:
    return click.option("--state", "state", type=click.Path(file_okay=False), default=None,
                        help="With an s3:// --out: the local folder that holds the run's manifest, lock and the "
                             "staging copy of the products [default: outputs.state of the job, else "
                             "~/.local/state/scenewatch/s3/<bucket>/<prefix>].")


def builtin_models() -> str:
    """The built-in model names, for help texts."""
    import pipeline.models.spectral  # noqa: F401 - registers the built-in models (no torch)
    from pipeline.models.contract import BUILTIN_MODELS

    return ", ".join(BUILTIN_MODELS)


def model(help: str | None = None, default: str | None = "vegetation", required: bool = False) -> Decorator:
    """``--model``; ``help`` default: a built-in model or a bundle."""
    help = help or f"Built-in model ({builtin_models()}) or a model bundle folder (see `scenewatch models`)."
    return click.option("--model", "-m", "model", required=required, show_default=default is not None, help=help,
                        **_given(default=default))


def bands(help: str = "", required: bool = False) -> Decorator:
    """``--bands``; ``help`` says what the bands are for in this command (a sentence)."""
    text = ("Band map 'red=1,green=2,blue=3,nir=4', band names in file order 'red,green,blue,nir', or a preset "
            f"({', '.join(SENSOR_PRESETS)}). A STAC item's bands go by name (common name or asset key), the "
            "model's own by default; 'nir=nir08' maps one onto another.")
    return click.option("--bands", "-b", "bands", required=required, callback=_bands_callback, metavar="BANDS",
                        help=f"{text} {help}".strip())


model_options = click.option(
    "--model-option", "model_options", multiple=True, metavar="KEY=VALUE", callback=_model_options_callback,
    help="Model setting, repeatable: threshold=0.2 or softness=0.1 for a spectral model, compile=true for a "
         "network (see `scenewatch models show NAME`).")


threshold = click.option(
    "--threshold", default=None, metavar="VALUE",
    help="The model's threshold, e.g. 0.6 (or auto where the model computes one per scene): the same as "
         "--model-option threshold=VALUE.")

model_settings = stack(model_options, threshold)
"""``--model-option`` and ``--threshold``: a command joins them with :func:`model_options_of`."""


def tile_size(default: str = "the model's") -> Decorator:
    return click.option("--tile-size", type=int, default=None, help=f"Core tile size in pixels [default: {default}].")


def halo(default: str = "the model's") -> Decorator:
    return click.option("--halo", type=int, default=None,
                        help=f"Context pixels read around each tile [default: {default}].")


predict_options = stack(
    tile_size(),
    halo(),
    click.option("--overlap", type=int, default=None,
                 help="Blend ramp half-width in pixels, at most the halo [default: halo/2]."),
    click.option("--blend", type=click.Choice(choices(BlendMethod)), default=None,
                 help="How overlapping tiles are blended; 'none' crops each tile to its core "
                      f"[default: {default_of(PredictConfig, 'blend')}]."),
    click.option("--batch-size", type=int, default=None,
                 help=f"Tiles per model call [default: {default_of(PredictConfig, 'batch_size')}, the fastest "
                      f"measured on CPU and on a GPU]."),
    click.option("--precision", type=click.Choice(choices(Precision)), default=None,
                 help="Inference precision for neural networks; auto: fp16 on a GPU; on a CPU the fastest of torch "
                      "fp32/bf16/fp16 and OpenVINO fp32/bf16/int8 within the drift limit, measured once per machine "
                      "on tiles of the scene and cached (docs/models.md) "
                      f"[default: {default_of(PredictConfig, 'precision')}]."),
    click.option("--proba-dtype", type=click.Choice(choices(ProbaDtype)), default=None,
                 help="Storage of the probability raster: uint8 (p x 254, 255 = nodata) or float32 "
                      f"[default: {default_of(PredictConfig, 'proba_dtype')}]."),
    click.option("--timeout", type=float, default=None, metavar="SECONDS",
                 help="Stop a scene not finished after this many seconds and report it failed, e.g. 3600 "
                      "[default: no limit]."),
)
"""How a scene is classified: the tiling and model-run fields of :class:`~pipeline.config.PredictConfig`."""

max_pixels = click.option("--max-pixels", type=int, default=None,
                          help="Refuse rasters with more pixels than this "
                               f"[default: {default_of(PredictConfig, 'max_pixels'):,}].")
assume_crs = click.option("--assume-crs", default=None, metavar="CRS",
                          help="CRS for a raster that has none, e.g. EPSG:32618.")
scene_options = stack(max_pixels, assume_crs)
"""Limits and repairs of the input rasters."""

untrusted_options = stack(
    click.option("--allow-vrt", "allow_vrt", is_flag=True, default=None,
                 help="Read a VRT scene: it can name any other file or URL, so only for VRTs you trust "
                      "[default: GeoTIFF only]."),
    click.option("--max-ratio", type=float, default=None,
                 help="Refuse a scene whose declared pixels outnumber its file's bytes this many times "
                      f"[default: {default_of(PredictConfig, 'max_ratio'):,.0f}]."),
    click.option("--max-block-bytes", type=int, default=None,
                 help="Refuse a scene with one block larger than this many bytes "
                      f"[default: {default_of(PredictConfig, 'max_block_bytes'):,}]."),
)
"""Limits of the scenes read as untrusted input (docs/security.md), for the commands that classify scenes."""

cluster_options = stack(
    click.option("--workers", type=int, default=None, help="Local Dask worker processes [default: one per core]."),
    click.option("--scheduler", default=None, metavar="ADDRESS",
                 help="Run on an existing Dask scheduler, e.g. tcp://10.0.0.5:8786, instead of a local cluster."),
)
"""Where the work runs."""

mask_options = stack(
    click.option("--mask", "mask", multiple=True, metavar="NAME=VALUES", callback=_mask_callback,
                 help="Quality mask, repeatable (one band each): pixels where band NAME of --bands holds VALUES "
                      "(e.g. clm=1 or clm=1,2,8-11) are nodata in every product; presets scl (Sentinel-2 L2A: "
                      "nodata, saturated, shadow, cloud, cirrus, snow) and qa_pixel (Landsat C2 bits: fill, "
                      "dilated, cirrus, cloud, shadow, snow), or only some classes: scl=cloud,shadow "
                      "[default: no mask]."),
    click.option("--mask-dilate", "mask_dilate", type=int, default=None, metavar="PIXELS",
                 help="Grow the masked patches by PIXELS in every direction, e.g. 2 [default: 0]."),
)
"""The quality mask: the ``mask`` and ``mask_dilate`` fields of :class:`~pipeline.config.PredictConfig`."""

@report_errors
def _resampling_callback(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> Any:
    from pipeline.inference.stac import parse_resampling

    if not value:
        return None
    try:
        return parse_resampling(value)
    except ValueError as err:
        raise ConfigError(str(err).replace("resampling ", "`resampling` ", 1)) from None


source_options = stack(
    click.option("--resolution", type=float, default=None, metavar="METRES",
                 help="A STAC item scene: read every band onto a grid of this pixel size, e.g. 20 "
                      "[default: the finest band's]."),
    click.option("--resampling", "resampling", multiple=True, metavar="BAND=METHOD", callback=_resampling_callback,
                 help="A STAC item scene: how a band is resampled onto the grid, repeatable, e.g. swir16=average "
                      "(nearest, bilinear, cubic, average, mode) [default: nearest for masks and classes, bilinear "
                      "onto a finer grid, average onto a coarser one]."),
    click.option("--requester-pays", "requester_pays", is_flag=True, default=None,
                 help="Read s3:// inputs from requester-pays buckets; the transfer is billed to your AWS account."),
    click.option("--s3-endpoint", "s3_endpoint", default=None, metavar="URL",
                 help="Read s3:// inputs from an S3-compatible store, e.g. http://127.0.0.1:9000 (path-style) "
                      "[default: AWS, or GDAL's AWS_S3_ENDPOINT]. Credentials: AWS_ACCESS_KEY_ID/"
                      "AWS_SECRET_ACCESS_KEY or AWS_PROFILE."),
)
"""How a STAC item scene is read: grid, resampling and remote options of :class:`~pipeline.config.PredictConfig`."""

classify_options = stack(predict_options, mask_options, scene_options, untrusted_options, source_options,
                         cluster_options)
"""Everything a command that classifies scenes takes into its PredictConfig (predict, change, timeline,
evaluate): the tiling and model run, the input limits and repairs, and where the work runs."""


def quiet(help: str = "No progress bar.") -> Decorator:
    return click.option("--quiet", "-q", is_flag=True, help=help)


def formats(allow_none: bool = False) -> Decorator:
    listed = ", ".join(choices(VectorFormat))
    extra = "; 'none' for rasters only" if allow_none else ""
    return click.option("--format", "-f", "formats", default=",".join(default_of(VectorizeConfig, "formats")),
                        show_default=True, metavar="FORMATS",
                        help=f"Polygon layer formats, comma-separated: {listed}{extra}.")


min_area = click.option("--min-area", default=None, metavar="AREA", callback=_area_callback,
                        help="Drop polygons smaller than AREA: m² (5000) or with a unit (5000m2, 0.5ha, 1km2).")
def _sieve(help: str) -> Decorator:
    return click.option("--sieve", type=int, default=None, metavar="PIXELS", help=help)


sieve = _sieve("Before polygonizing, merge pixel groups smaller than PIXELS into their largest neighbour.")
change_sieve = _sieve("Before polygonizing, merge change patches smaller than PIXELS into their largest neighbour "
                      f"[default: {default_of(ChangeOptions, 'sieve')}, a 3 x 3 block; 0 keeps single pixels].")

vector_options = stack(
    min_area,
    sieve,
    click.option("--simplify", type=float, default=None, metavar="METRES",
                 help="Topology-preserving simplification tolerance in metres [default: 0, exact pixel edges]."),
    click.option("--classes", "classes", default=None, metavar="NAMES",
                 help="Classes to keep, names or values, comma-separated (e.g. cleared) [default: all]."),
    click.option("--max-polygons", type=int, default=None,
                 help="Stop with an error past this many polygons "
                      f"[default: {default_of(VectorizeConfig, 'max_polygons'):,}]."),
)
"""What a polygon layer keeps: the content fields of :class:`~pipeline.config.VectorizeConfig`."""

polygons = click.option("--polygons/--no-polygons", default=None,
                        help="Also write the polygon layer, or the rasters only [default: --polygons].")

date_pattern = click.option(
    "--date-pattern", default=None, metavar="REGEX",
    help="Read dates from file names with named groups year[, month, day], e.g. '(?P<year>\\d{4})' "
         "[default: STAC item beside the scene, TIFF date tags, or YYYYMMDD in the name].")


max_offset = click.option("--max-offset", type=float, default=None, metavar="PIXELS",
                          help="Refuse a date whose pixels are more than this many pixels off the common grid, "
                               "e.g. 0.1 [default: warn above 0.1 px].")


def grid(first: str) -> Decorator:
    return click.option("--grid", default="first", show_default=True, metavar="first|PATH",
                        help=f"Grid the dates are compared on: {first}, or the grid of the raster at PATH.")


region = click.option("--region", default=None, metavar="ROW,COL,HEIGHT,WIDTH",
                      help="Only this pixel window of each scene, e.g. 0,0,900,600 [default: the whole scene].")
label_attribute = click.option("--label-attribute", default=None,
                               help="Class attribute of vector labels (class names or numbers) "
                                    "[default: every polygon is class 1].")


# ------------------------------------------------------------------------------------------- STAC sources

_SEARCH_FLAGS = ("collections", "bbox", "aoi", "datetime", "query", "limit")


def stac_source_options(instead: str) -> Decorator:
    """``--stac CATALOG`` or ``--stac-search URL`` with its search flags: where a command's scenes come from,
    ``instead`` of what (a sentence end: "of SCENES"). :func:`stac_source` builds them into the job
    schema's :class:`~workflows.job.InputsSpec`, so a job's ``inputs.stac``/``inputs.stac_search`` and
    these flags are one grammar, read by one loader (:func:`workflows.job.discover_inputs`)."""
    return stack(
        click.option("--stac", "stac", default=None, metavar="CATALOG",
                     help="Scenes from a static STAC catalog, collection or item collection (one item = one "
                          f"scene): a path, or an http(s):// or s3:// URL; instead {instead}."),
        click.option("--stac-search", "stac_search", default=None, metavar="URL",
                     help="Scenes from a STAC API search (one item = one scene), e.g. "
                          f"https://earth-search.aws.element84.com/v1; instead {instead}. Narrowed by:"),
        click.option("--collections", "collections", default=None, metavar="IDS",
                     help="With --stac-search: collection ids, comma-separated, e.g. sentinel-2-l2a."),
        click.option("--bbox", "bbox", default=None, metavar="W,S,E,N",
                     help="With --stac-search: items intersecting this box in degrees (EPSG:4326), e.g. "
                          "-63.5,-10.5,-62.5,-9.5."),
        click.option("--aoi", "aoi", default=None, type=click.Path(dir_okay=False), metavar="FILE",
                     help="With --stac-search: items intersecting the geometry of this GeoJSON file; instead "
                          "of --bbox."),
        click.option("--datetime", "datetime", default=None, metavar="RANGE",
                     help="With --stac-search: an RFC 3339 instant or range, e.g. 2024-06-01/2024-08-31 or "
                          "2024-06-01/.. (open end)."),
        click.option("--query", "query", multiple=True, metavar="FILTER",
                     help="With --stac-search, repeatable: a property filter, e.g. 'eo:cloud_cover<20' (sent to "
                          "the API where it has the Query extension, else applied to the items found)."),
        click.option("--limit", "limit", type=int, default=None, metavar="N",
                     help="With --stac-search: at most N items [default: every item found]."),
    )


def stac_source(stac: str | None = None, stac_search: str | None = None, collections: str | None = None,
                bbox: str | None = None, aoi: str | None = None, datetime: str | None = None,
                query: tuple[str, ...] = (), limit: int | None = None) -> Any:
    """The scene source the flags of :func:`stac_source_options` give, as the job schema's ``InputsSpec``
    (local paths made absolute from the working folder); None when no flag is given."""
    from workflows.job import InputsSpec

    given = {"collections": collections, "bbox": bbox, "aoi": aoi, "datetime": datetime, "query": query or None,
             "limit": limit}
    if stac is None and stac_search is None:
        if stray := [k for k in _SEARCH_FLAGS if given[k] is not None]:
            raise ConfigError(f"`{stray[0]}` narrows a STAC API search; give `stac_search` URL too")
        return None
    if stac is not None and stac_search is not None:
        raise ConfigError("give `stac` (a catalog) or `stac_search` (an API), not both")
    if stac is not None:
        if stray := [k for k in _SEARCH_FLAGS if given[k] is not None]:
            raise ConfigError(f"`{stray[0]}` narrows a STAC API search (`stac_search`), not a catalog (`stac`)")
        local = "://" not in stac
        return build(InputsSpec, stac=str(_absolute(stac)) if local else stac)
    search: dict[str, Any] = {"url": stac_search, "datetime": datetime, "limit": limit,
                              "query": list(query) if query else None,
                              "aoi": str(_absolute(aoi)) if aoi is not None else None}
    if collections is not None:
        search["collections"] = [c.strip() for c in collections.split(",") if c.strip()]
    if bbox is not None and aoi is not None:
        raise ConfigError("give `bbox` or `aoi`, not both")
    if bbox is not None:
        try:
            search["bbox"] = tuple(float(v) for v in bbox.split(","))
        except ValueError:
            search["bbox"] = ()
        if len(search["bbox"]) != 4:
            raise ConfigError(f"`bbox` {bbox!r}: give west,south,east,north in degrees, e.g. "
                              "-63.5,-10.5,-62.5,-9.5")
    return build(InputsSpec, stac_search={k: v for k, v in search.items() if v is not None})


def _absolute(path: str) -> Any:
    from pathlib import Path

    return Path(path).expanduser().resolve()
