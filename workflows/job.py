"""Job files: what a scheduled batch run does, as one validated, frozen value loaded from YAML.

A job names its inputs (a folder, a glob, a list of files, or a STAC catalog / item collection on disk,
filtered by date range and bounding box), the model, the band map and tiling, the products and where they
go. It is validated once, here; every error names the key and the line of the YAML file::

    scenewatch: error: job nightly.yaml line 14: tiling.tile_sise: unknown key (extra inputs are not permitted)

Relative paths in a job file are relative to the job file's folder, so a job and its data can move together.
:func:`discover_scenes` turns the inputs into :class:`SceneInput` values with safe, distinct ids.
"""

from __future__ import annotations

import datetime as dt
import glob as globlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from pipeline.config import (
    BandResampling,
    ChangeOptions,
    FrozenConfig,
    Mask,
    PredictConfig,
    TimelineOptions,
    VectorFormats,
    VectorOptions,
)
from pipeline.errors import ConfigError, ModelError, ScenewatchError
from pipeline.names import unique_names
from pipeline.products import is_product_path
from pipeline.vocab import ChangePairs

__all__ = [
    "InputsSpec",
    "Job",
    "JobSpec",
    "SceneInput",
    "StacSearchSpec",
    "TimeRange",
    "load_job",
    "discover_scenes",
    "discover_inputs",
    "with_inputs",
    "date_from_name",
    "EXECUTION_FIELDS",
    "FACTORY_ENTRY_POINTS",
    "registered_factories",
]

# PredictConfig fields that change how fast a scene is done, never what is written: left out of fingerprints.
EXECUTION_FIELDS = frozenset({"workers", "scheduler", "max_tiles_in_flight", "timeout", "requester_pays",
                              "s3_endpoint"})


_Frozen = FrozenConfig


class StacSearchSpec(_Frozen):
    """A STAC API search (``POST /search``, paged by pystac-client): one item found = one scene."""

    url: str = Field(..., description="STAC API root URL, e.g. https://earth-search.aws.element84.com/v1")
    collections: list[str] | None = Field(None, description="collection ids to search, e.g. [sentinel-2-l2a]")
    bbox: tuple[float, float, float, float] | None = Field(
        None, description="items intersecting [west, south, east, north] in degrees (EPSG:4326)")
    aoi: str | None = Field(None, description="GeoJSON file (relative to the job file) whose geometry items must "
                                              "intersect; instead of bbox")
    datetime: str | None = Field(None, description="RFC 3339 instant or range: 2024-06-01/2024-06-30, 2024-06-01/..")
    query: list[str] | None = Field(None, description='property filters, e.g. ["eo:cloud_cover<20"]')
    limit: int | None = Field(None, gt=0, description="at most this many items (the newest pages first as the "
                                                      "API orders them) [default: all]")

    @field_validator("query")
    @classmethod
    def _query_is_simple(cls, value: list[str] | None) -> list[str] | None:
        for q in value or []:
            if not re.fullmatch(r"\s*[\w:.-]+\s*(<=|>=|=|<|>)\s*\S+\s*", q):
                raise ValueError(f"{q!r} must look like 'eo:cloud_cover<20' (property, <, <=, =, >=, >, value)")
        return value

    @model_validator(mode="after")
    def _one_area(self) -> StacSearchSpec:
        if self.bbox is not None and self.aoi is not None:
            raise ValueError("give bbox or aoi, not both")
        return self


class InputsSpec(_Frozen):
    """Exactly one of ``folder``, ``glob``, ``files``, ``stac`` or ``stac_search``; then optional filters."""

    folder: str | None = Field(None, description="folder of scenes, with `pattern`")
    pattern: str = Field("*.tif", description="glob pattern inside `folder` (** for subfolders)")
    glob: str | None = Field(None, description="one glob pattern, e.g. archive/**/*.tif")
    files: list[str] | None = Field(None, description="explicit list of scene files or STAC item JSON files, or of "
                                                    "their URLs (s3://, https://), in any mix")
    stac: str | None = Field(None, description="STAC catalog.json, collection or item collection JSON: a path, or "
                                               "an http(s):// or s3:// URL")
    stac_search: StacSearchSpec | None = Field(None, description="a STAC API search: url, collections, bbox or aoi, "
                                                                 "datetime, query, limit")
    asset: str | None = Field(None, description="STAC asset key of the image [default: an item with one GeoTIFF "
                                                "asset per band is read band by band; else its GeoTIFF asset]")
    resolution: float | None = Field(None, gt=0, description="STAC items: pixel size of the grid every band is read "
                                                             "onto, as --resolution [default: the finest band's]")
    resampling: BandResampling = Field((), description="STAC items: resampling per band, as --resampling: "
                                                       "['swir16=average', 'scl=nearest']")
    requester_pays: bool = Field(False, description="read s3:// inputs from requester-pays buckets (you pay)")
    s3_endpoint: str | None = Field(None, description="URL of an S3-compatible store for s3:// inputs, e.g. "
                                                      "http://minio:9000; credentials only from the AWS environment "
                                                      "variables or profile, never from the job file")
    start: dt.date | None = Field(None, description="keep scenes dated on or after this day (YYYY-MM-DD)")
    end: dt.date | None = Field(None, description="keep scenes dated on or before this day (YYYY-MM-DD)")
    bbox: tuple[float, float, float, float] | None = Field(
        None, description="keep scenes intersecting [west, south, east, north] in degrees (EPSG:4326)")

    @model_validator(mode="after")
    def _one_source(self) -> InputsSpec:
        given = [k for k in ("folder", "glob", "files", "stac", "stac_search") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of folder, glob, files, stac, stac_search" +
                             (f" (got {', '.join(given)})" if given else ""))
        if self.files is not None and not self.files:
            raise ValueError("files is empty")
        if self.start and self.end and self.start > self.end:
            raise ValueError(f"start {self.start} is after end {self.end}")
        if self.bbox is not None:
            w, s, e, n = self.bbox
            if not (-180 <= w < e <= 180 and -90 <= s < n <= 90):
                raise ValueError("bbox must be [west, south, east, north] in degrees with west < east, south < north")
        return self


class ModelSpec(_Frozen):
    """A built-in model name or a bundle path (``name``), or a ``module:function`` factory; plus options."""

    name: str | None = Field(None, description="built-in model (vegetation, ...) or model bundle path")
    factory: str | None = Field(None, description="'package.module:function' returning a SegmentationModel")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="arguments of the factory")
    options: dict[str, bool | int | float | str] = Field(
        default_factory=dict, description="model options, e.g. threshold: 0.4 (see `scenewatch models show NAME`)")

    @model_validator(mode="after")
    def _one_model(self) -> ModelSpec:
        if (self.name is None) == (self.factory is None):
            raise ValueError("give exactly one of name, factory")
        if self.factory is not None and not re.fullmatch(r"[\w.]+:[\w.]+", self.factory):
            raise ValueError(f"factory {self.factory!r} must look like 'package.module:function'")
        return self


class DaskSpec(_Frozen):
    workers: int | None = Field(None, gt=0, description="local worker processes [default: one per core]")
    scheduler: str | None = Field(None, description="existing Dask scheduler, e.g. tcp://10.0.0.5:8786")
    scenes_in_flight: int | None = Field(None, gt=0, le=256, description=(
        "scenes a batch computes at once on the one cluster [default: twice its worker threads, at most one "
        "per GiB of the workers' memory; see docs/scheduling.md]"))


class SegmentationSpec(_Frozen):
    proba: bool = Field(True, description="also keep the class probability raster")


class VectorsSpec(_Frozen):
    formats: VectorFormats = ("gpkg",)
    options: VectorOptions = Field(VectorOptions(), description="min_area, sieve, simplify, classes, ...")


class ChangeSpec(_Frozen):
    pairs: ChangePairs = Field("consecutive", description="which dated scene pairs to compare")
    model: str | None = Field(None, description="model for the change (e.g. dnbr, dndvi) [default: the job's]")
    options: ChangeOptions = Field(ChangeOptions(), description="grid, min_area, sieve, quicklook, ...")


class TimelineSpec(_Frozen):
    model: str | None = Field(None, description="model for the timeline [default: the job's]")
    options: TimelineOptions = Field(TimelineOptions(), description="watch, confirm, min_area, plot, ...")


class ProductsSpec(_Frozen):
    segmentation: SegmentationSpec = SegmentationSpec()
    vectors: VectorsSpec | None = None
    change: ChangeSpec | None = None
    timeline: TimelineSpec | None = None


_NAMING_FIELDS = ("scene_id", "date", "year")


class OutputsSpec(_Frozen):
    folder: str = Field(..., description="output folder (relative to the job file) or s3://bucket/prefix; `--out` "
                                         "overrides it")
    state: str | None = Field(None, description="for an s3:// folder: the local folder of the manifest and the "
                                                "staging copy of the products [default: ~/.local/state/"
                                                "scenewatch/s3/<bucket>/<prefix>]; `--state` overrides it")
    naming: str = Field("{scene_id}", description="product name template: {scene_id}, {date}, {year}; "
                                                  "'/' makes subfolders")
    stac: bool = Field(True, description="publish the products as a STAC catalog (catalog.json)")

    @field_validator("naming")
    @classmethod
    def _naming_is_safe(cls, value: str) -> str:
        fields = re.findall(r"{([^{}]*)}", value)
        unknown = [f for f in fields if f not in _NAMING_FIELDS]
        if unknown:
            raise ValueError(f"unknown field {{{unknown[0]}}}; use {', '.join('{' + f + '}' for f in _NAMING_FIELDS)}")
        if "{scene_id}" not in value:
            raise ValueError("must contain {scene_id} so that scenes never share a name")
        literal = re.sub(r"{[^{}]*}", "x", value)
        parts = literal.split("/")
        if value.startswith("/") or any(p in ("", ".", "..") for p in parts) or re.search(r"[^\w./-]", literal):
            raise ValueError("must be a relative name of letters, digits, . _ - and / (no '..', no absolute path)")
        return value


class JobSpec(_Frozen):
    """The whole job file."""

    version: Literal[1] = 1
    name: str | None = Field(None, description="job name [default: the job file name]")
    inputs: InputsSpec
    model: ModelSpec
    bands: str | None = Field(None, description="band map 'red=3,nir=2' or a preset (naip, sentinel2, ...)")
    mask: Mask = Field(None, description="quality mask, as --mask: 'scl', 'qa_pixel=cloud,shadow', or a list of "
                       "rules ['clm=1', 'scl=snow'], one per band of `bands`")
    mask_dilate: int = Field(0, ge=0, description="grow the masked patches by this many pixels")
    tiling: PredictConfig = PredictConfig()
    dask: DaskSpec = DaskSpec()
    products: ProductsSpec = ProductsSpec()
    outputs: OutputsSpec
    retries: int = Field(1, ge=0, le=5, description="re-runs of a scene whose Dask worker died, or whose remote "
                                                     "input failed while read and answers again")

    @field_validator("tiling")
    @classmethod
    def _tiling_only(cls, value: PredictConfig) -> PredictConfig:
        misplaced = [k for k in ("bands", "workers", "scheduler", "mask", "mask_dilate", "resolution", "resampling",
                                 "requester_pays", "s3_endpoint") if getattr(value, k)]
        if misplaced:
            raise ValueError(f"{misplaced[0]} belongs at the top level (bands:, mask:), under inputs: (resolution, "
                             "resampling, requester_pays, s3_endpoint) or under dask:, not under tiling:")
        return value

    def predict_config(self) -> PredictConfig:
        """The per-scene configuration: tiling plus the band map and Dask placement."""
        return self.tiling.model_copy(update={"bands": self.bands, "workers": self.dask.workers,
                                              "scheduler": self.dask.scheduler, "mask": self.mask,
                                              "mask_dilate": self.mask_dilate,
                                              "resolution": self.inputs.resolution,
                                              "resampling": self.inputs.resampling,
                                              "requester_pays": self.inputs.requester_pays,
                                              "s3_endpoint": self.inputs.s3_endpoint})


@dataclass(frozen=True, slots=True)
class Job:
    """A loaded job: the validated spec, where it came from, and its paths resolved."""

    spec: JobSpec
    path: Path
    name: str
    out_dir: Path  # for an s3:// output: the local state folder (manifest, staging copy of the products)
    remote: str | None = None  # the s3://bucket/prefix the products are uploaded to, if any

    @property
    def base(self) -> Path:
        return self.path.parent

    def resolve(self, relative: str) -> Path:
        """A path from the job file, relative to the job file's folder."""
        return _under(self.base, relative)

    def resolved_json(self) -> str:
        """The job as run (defaults filled, output folder resolved), for the manifest's provenance."""
        data = self.spec.model_dump(mode="json")
        data["name"] = self.name
        data["outputs"]["folder"] = self.remote or str(self.out_dir)
        return json.dumps(data, sort_keys=True)


# ------------------------------------------------------------------------------------------------ loading


class _JobLoader(yaml.SafeLoader):
    """YAML's safe loader, but dates stay text: pydantic parses them with an error that names the key
    (PyYAML's own date parsing raises a bare ValueError for 2020-13-01)."""


_JobLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


FACTORY_ENTRY_POINTS = "scenewatch.models"
"""Entry-point group under which installed packages register model factories that jobs may name."""


def registered_factories() -> dict[str, str]:
    """``name -> "module:function"`` of the factories installed packages register as entry points."""
    from importlib.metadata import entry_points

    return {ep.name: ep.value for ep in entry_points(group=FACTORY_ENTRY_POINTS)}


def load_job(path: str | Path, out: str | Path | None = None, *, allow_factory: bool = False,
             state: str | Path | None = None, inputs: InputsSpec | None = None) -> Job:
    """Read and validate a job file; ``out`` overrides ``outputs.folder``, ``inputs`` the scene source of
    ``inputs:`` (:func:`with_inputs`: ``scenewatch run JOB --stac ...``). Raises ConfigError naming the
    key and line of every problem.

    An ``s3://bucket/prefix`` output is built in a local state folder (``state``, else ``outputs.state``,
    else :func:`pipeline.storage.default_state_folder`) that holds the manifest and the staging copy of the
    products; each product is uploaded once it is complete (see :mod:`pipeline.storage`).

    A job file is data, not code: a ``model.factory`` it names (a Python function that the run would
    import and call) is refused unless ``allow_factory`` is true (the user trusts this file: ``scenewatch
    run --allow-factory``) or an installed package registers that factory under the ``scenewatch.models``
    entry points."""
    path = Path(path).resolve()
    where = f"job {path.name}"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{where}: cannot be read ({err.strerror or err}); check the path") from err
    try:
        root = yaml.compose(text, Loader=_JobLoader)
        data = yaml.load(text, Loader=_JobLoader)  # safe: _JobLoader is a SafeLoader subclass
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = f" line {mark.line + 1}" if mark is not None else ""
        context = ""
        if err.context and err.context_mark is not None and err.context_mark.line != getattr(mark, "line", None):
            context = f"; {err.context} from line {err.context_mark.line + 1}"
        raise ConfigError(f"{where}{line}: not valid YAML ({err.problem or err.context}{context})") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: not valid YAML ({err})") from err
    if root is None or not isinstance(data, dict):
        raise ConfigError(f"{where}: must be a mapping with inputs:, model: and outputs: keys")
    _refuse_alias_bombs(root, where)
    _refuse_duplicate_keys(root, where)
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{where}: " + "; ".join(_describe(e, root) for e in err.errors())) from err
    _check_model_options(spec.model, root, where)
    if inputs is not None:
        spec = with_inputs(spec, inputs)
    factory = spec.model.factory
    if factory is not None and not allow_factory and factory not in registered_factories().values():
        factory_line = _line_of(root, ("model", "factory"))
        raise ConfigError(f"{where} line {factory_line}: model.factory {factory!r} would import and run Python code "
                          "named by the job file; if you trust this file, run it with `allow_factory` set, or install "
                          f"the factory as a {FACTORY_ENTRY_POINTS!r} entry point of a package")
    name = spec.name or path.stem
    job = Job(spec=spec, path=path, name=name, out_dir=Path())
    from pipeline.storage import default_state_folder, is_remote_out, parse_s3_url

    target = str(out) if out is not None else spec.outputs.folder
    if is_remote_out(target):
        try:
            remote = str(parse_s3_url(target))
        except ScenewatchError as err:
            raise ConfigError(f"{where}: outputs.folder: {err}") from err
        chosen = state if state is not None else (job.resolve(spec.outputs.state) if spec.outputs.state else None)
        state_dir = Path(chosen).expanduser().resolve() if chosen is not None else default_state_folder(remote)
        return Job(spec=spec, path=path, name=name, out_dir=state_dir, remote=remote)
    out_dir = Path(out).resolve() if out is not None else job.resolve(spec.outputs.folder).resolve()
    return Job(spec=spec, path=path, name=name, out_dir=out_dir)


def _check_model_options(model: ModelSpec, root: yaml.Node, where: str) -> None:
    """A built-in model's options are checked here, at load, against what the model accepts: a misspelt
    option is refused with its line, before any scene is predicted."""
    from pipeline.models.contract import ModelRef
    from pipeline.models.loader import BUILTIN_MODELS, describe_model

    if model.name is None or model.name not in BUILTIN_MODELS or not model.options:
        return
    try:
        describe_model(ModelRef.of(model.name, **model.options))
    except (ModelError, TypeError, ValueError) as err:
        line = _line_of(root, ("model", "options"))
        raise ConfigError(f"{where} line {line}: model.options: {str(err).splitlines()[0]}") from err


def _describe(error: Any, root: yaml.Node) -> str:
    loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p in ("function-after",)))
    key = ".".join(str(p) for p in loc) or "(top level)"
    line = _line_of(root, loc)
    msg = error["msg"]
    if error["type"] == "extra_forbidden":
        msg = "unknown key (extra inputs are not permitted); check the spelling"
    elif error["type"] == "missing":
        msg = "required key is missing"
    msg = msg.removeprefix("Value error, ")
    return f"line {line}: {key}: {msg}"


def _line_of(node: yaml.Node, loc: Sequence[Any]) -> int:
    """The 1-based line of the deepest YAML node along a pydantic error location."""
    line = node.start_mark.line + 1
    for part in loc:
        child = None
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == str(part):
                    line = key.start_mark.line + 1
                    child = value
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            child = node.value[part]
            line = child.start_mark.line + 1
        if child is None:
            break
        node = child
    return line


MAX_JOB_NODES = 100_000
"""A job file's values once YAML aliases are expanded: a real job has a few hundred."""


def _refuse_alias_bombs(root: yaml.Node, where: str) -> None:
    """Refuse a document whose aliases expand it past :data:`MAX_JOB_NODES` values ("billion laughs"),
    counted on the composed node graph (each node once, its size remembered), before anything walks the
    expanded document."""
    sizes: dict[int, int] = {}
    # iterative post-order walk: nested anchors cannot overflow the stack either
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children = ([n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else
                    list(node.value) if isinstance(node, yaml.SequenceNode) else [])
        if not children_done:
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)
            continue
        sizes[id(node)] = min(1 + sum(sizes.get(id(c), 1) for c in children), MAX_JOB_NODES + 1)
        if sizes[id(node)] > MAX_JOB_NODES:
            line = node.start_mark.line + 1
            raise ConfigError(f"{where} line {line}: its aliases expand to more than {MAX_JOB_NODES:,} values; "
                              "write the values out, or use fewer aliases")


def _refuse_duplicate_keys(node: yaml.Node, where: str, path: str = "") -> None:
    """PyYAML keeps the last of two equal keys silently; a job file with both is almost surely a mistake."""
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            full = f"{path}.{key.value}" if path else str(key.value)
            if key.value in seen:
                raise ConfigError(f"{where} line {key.start_mark.line + 1}: {full}: key given twice; keep one")
            seen.add(key.value)
            _refuse_duplicate_keys(value, where, full)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _refuse_duplicate_keys(item, where, f"{path}.{i}")


# ---------------------------------------------------------------------------------------------- discovery


@dataclass(frozen=True, slots=True)
class TimeRange:
    """When a scene was taken: one instant (start == end) or a span such as a whole year."""

    start: dt.datetime
    end: dt.datetime

    @property
    def instant(self) -> bool:
        return self.start == self.end

    def overlaps(self, first: dt.date | None, last: dt.date | None) -> bool:
        if first is not None and self.end.date() < first:
            return False
        return not (last is not None and self.start.date() > last)


@dataclass(frozen=True, slots=True)
class SceneInput:
    """One scene of the archive: its safe, distinct id, the file to read, and what is known of it."""

    scene_id: str
    path: str
    when: TimeRange | None = None
    bbox: tuple[float, float, float, float] | None = None  # EPSG:4326, from a STAC item
    source_id: str = ""  # the raw id (file path relative to the inputs, or STAC item id)


_DATE = re.compile(r"(?<!\d)(\d{4})[-_]?(\d{2})[-_]?(\d{2})(?!\d)")
_YEAR = re.compile(r"(?<!\d)(19\d{2}|20\d{2})(?!\d)")
_UTC = dt.timezone.utc


def date_from_name(name: str) -> TimeRange | None:
    """A date written in a file name: ``20200831`` / ``2020-08-31`` (that day, 00:00 UTC), else a lone year
    ``1985`` (the whole year, as for annual composites); None when neither is there."""
    for match in _DATE.finditer(name):
        try:
            day = dt.datetime(int(match[1]), int(match[2]), int(match[3]), tzinfo=_UTC)
        except ValueError:
            continue
        if 1900 <= day.year <= 2100:
            return TimeRange(day, day)
    year_match = _YEAR.search(name)
    if year_match:
        year = int(year_match[1])
        return TimeRange(dt.datetime(year, 1, 1, tzinfo=_UTC), dt.datetime(year, 12, 31, 23, 59, 59, tzinfo=_UTC))
    return None


@dataclass(frozen=True, slots=True)
class _Origin:
    """Where inputs were given, for their relative paths and their error messages: a job file (keys
    ``inputs.*``, paths relative to the job file's folder) or the command line (flags in backticks, which
    :func:`workflows.cli.options.cli_message` shows as ``--stac-search``; paths relative to the working
    folder)."""

    base: Path
    job: str | None = None  # the job file's name; None: the command line

    def key(self, name: str) -> str:
        return f"job {self.job}: inputs.{name}" if self.job is not None else f"`{name}`"

    def resolve(self, relative: str) -> Path:
        return _under(self.base, relative)


def _under(base: Path, relative: str) -> Path:
    """``relative`` (``~`` expanded) from the folder ``base``; an absolute path as it is."""
    p = Path(relative).expanduser()
    return p if p.is_absolute() else base / p


def discover_scenes(job: Job) -> list[SceneInput]:
    """The job's scenes after the date and bbox filters, ordered by date then id (the order of change
    pairs and timelines). Ids are safe and distinct (see :func:`pipeline.names.unique_names`)."""
    return _discover(job.spec.inputs, _Origin(job.base, job.path.name))


def discover_inputs(inputs: InputsSpec, base: str | Path | None = None) -> list[SceneInput]:
    """The scenes of inputs given on the command line (``--stac``, ``--stac-search ...``), as
    :func:`discover_scenes` finds a job's: relative paths from ``base`` (default: the working folder), and
    errors naming the options in backticks (`` `stac_search` ``) rather than job keys."""
    return _discover(inputs, _Origin(Path(base) if base is not None else Path.cwd()))


def with_inputs(spec: JobSpec, inputs: InputsSpec) -> JobSpec:
    """``spec`` whose scene source (folder, glob, files, stac, stac_search) is the one ``inputs`` gives
    (``scenewatch run JOB --stac-search ...``); the job's other input settings (asset, filters,
    resolution, remote options) stay."""
    source = {k: getattr(inputs, k) for k in ("folder", "glob", "files", "stac", "stac_search")}
    return spec.model_copy(update={"inputs": spec.inputs.model_copy(update=source)})


def _discover(spec: InputsSpec, origin: _Origin) -> list[SceneInput]:
    if spec.stac_search is not None:
        scenes = _search_scenes(spec, origin, spec.stac_search)
    else:
        if spec.stac is not None and re.match(r"(?i)(https?|s3)://", spec.stac):
            scenes = _stac_url_scenes(spec, origin, spec.stac)
        elif spec.stac is not None:
            scenes = _stac_scenes(spec, origin, origin.resolve(spec.stac))
        else:
            scenes = _file_scenes(spec, origin)
    kept = [s for s in scenes if _keep(s, spec)]
    return sorted(kept, key=lambda s: (s.when.start if s.when else dt.datetime.max.replace(tzinfo=_UTC),
                                       s.scene_id))


def _file_scenes(spec: InputsSpec, origin: _Origin) -> list[SceneInput]:
    if spec.files is not None:
        return _listed_scenes(spec.files, origin)
    if spec.folder is not None:
        root = origin.resolve(spec.folder)
        if not root.is_dir():
            raise ConfigError(f"{origin.key('folder')} {root} is not a folder; check the path")
        paths = sorted(Path(p) for p in globlib.glob(str(root / spec.pattern), recursive=True))
    else:
        assert spec.glob is not None
        pattern = spec.glob if Path(spec.glob).is_absolute() else str(origin.base / spec.glob)
        paths = sorted(Path(p) for p in globlib.glob(pattern, recursive=True))
        root = origin.base
    # a job whose output folder is (or is inside) its input folder must not take its own products for new
    # scenes on the next run
    paths = [p for p in paths if not p.is_dir() and not is_product_path(p)]
    if not paths:
        raise ConfigError(f"{origin.key('folder' if spec.folder is not None else 'glob')}: the inputs match no files; "
                          "check inputs in the job file")
    raw = [_relative_or_name(p, root) for p in paths]
    stems = [_strip_raster_ext(Path(r).name) for r in raw]
    ids = unique_names(stems, keys=[str(p.resolve()) for p in paths])
    return [SceneInput(i, str(p), date_from_name(p.name), None, r) for i, p, r in zip(ids, paths, raw, strict=True)]


def _listed_scenes(files: Sequence[str], origin: _Origin) -> list[SceneInput]:
    """``inputs.files``: local paths (relative to the job file) and URLs (``s3://bucket/item.json``,
    ``https://.../scene.tif``: read by URL, by workers too), in any mix. Ids are each name without its
    extension (a URL's: the last part of its path), made distinct over both kinds."""
    from urllib.parse import urlparse

    found: list[tuple[str, str, str, str]] = []  # (file name, distinct key, path read, raw id)
    for entry in files:
        if "://" in entry:
            found.append((Path(urlparse(entry).path).name, entry, entry, entry))
            continue
        path = origin.resolve(entry)
        if path.is_dir():
            continue
        raw = _relative_or_name(path, origin.base)
        found.append((Path(raw).name, str(path.resolve()), str(path), raw))
    if not found:
        raise ConfigError(f"{origin.key('files')}: the inputs match no files; check inputs in the job file")
    ids = unique_names([_strip_raster_ext(f[0]) or f[1] for f in found], keys=[f[1] for f in found])
    return [SceneInput(i, path, date_from_name(name), None, raw)
            for i, (name, _, path, raw) in zip(ids, found, strict=True)]


def _relative_or_name(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def _strip_raster_ext(name: str) -> str:
    for ext in (".tiff", ".tif", ".vrt", ".jp2", ".img", ".json"):  # .json: a STAC item
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def _stac_scenes(spec: InputsSpec, origin: _Origin, source: Path) -> list[SceneInput]:
    import pystac

    where = f"{origin.key('stac')} {source.name if origin.job is not None else source}"
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"{where}: cannot be read as JSON ({err})") from err
    try:
        if data.get("type") == "FeatureCollection":
            items = list(pystac.ItemCollection.from_dict(data, preserve_dict=False))
            for item in items:
                item.set_self_href(None)
            base = source.parent
        else:
            catalog = pystac.read_file(str(source))
            if not isinstance(catalog, pystac.Catalog):
                raise ConfigError(f"{where}: is a STAC {type(catalog).__name__}, not a catalog or item collection")
            items = list(catalog.get_items(recursive=True))
            base = None
    except pystac.STACError as err:
        raise ConfigError(f"{where}: not a STAC catalog or item collection ({err})") from err
    return _scenes_from_items(spec, items, base, where, collection=source if base is not None else None)


def _stac_url_scenes(spec: InputsSpec, origin: _Origin, url: str) -> list[SceneInput]:
    """A static catalog, collection or item collection published at an ``http(s)://`` or ``s3://`` URL: its
    items, with hrefs resolved against their own URLs, so that workers read them by URL too."""
    import pystac

    where = f"{origin.key('stac')} {url}"
    io = _url_stac_io()
    try:
        data = io.read_json(url)
        collection = isinstance(data, dict) and data.get("type") == "FeatureCollection"
        if collection:
            items = list(pystac.ItemCollection.from_dict(data, preserve_dict=False))
            for item in items:
                item.set_self_href(url)  # relative asset hrefs resolve against the collection's URL
        else:
            catalog = pystac.read_dict(data, href=url, stac_io=io)
            if not isinstance(catalog, pystac.Catalog):
                raise ConfigError(f"{where}: is a STAC {type(catalog).__name__}, not a catalog or item collection")
            items = list(catalog.get_items(recursive=True))
    except ConfigError:
        raise
    except Exception as err:  # HTTP, S3 and parsing errors alike: one line naming the URL
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"{where}: cannot be read as a STAC catalog or item collection ({first})") from err
    return _scenes_from_items(spec, items, None, where, collection=url if collection else None)


def _url_stac_io() -> Any:
    """A pystac StacIO that also reads ``s3://`` (made here: pystac is imported only when a job needs it)."""
    import pystac.stac_io

    class UrlStacIO(pystac.stac_io.DefaultStacIO):
        """pystac's reader, plus ``s3://`` through boto3 (credentials and endpoint from the AWS environment)."""

        def read_text_from_href(self, href: str) -> str:
            if href.lower().startswith("s3://"):
                from pipeline.storage import parse_s3_url, s3_client

                target = parse_s3_url(href)
                body = s3_client().get_object(Bucket=target.bucket, Key=target.prefix)["Body"]
                return str(body.read().decode("utf-8"))
            return str(super().read_text_from_href(href))

    return UrlStacIO()


def _scenes_from_items(spec: InputsSpec, items: Sequence[Any], base: Path | None, where: str,
                       collection: str | Path | None = None) -> list[SceneInput]:
    """One scene per STAC item (``base``: the folder relative asset hrefs of an item collection file start
    from; None: pystac resolves them from the item's own href). An item with one asset per band (several
    GeoTIFF assets, no ``inputs.asset``) is read as a STAC item scene (pipeline.inference.stac): its own
    href, or ``collection.json#item-id`` for an item of an item collection file."""
    found: list[tuple[str, str, TimeRange | None, tuple[float, float, float, float] | None]] = []
    for item in items:
        item_href = _band_item_href(item, spec.asset, collection)
        if item_href is not None:
            found.append((item.id, item_href, _item_time(item), tuple(item.bbox) if item.bbox else None))
            continue
        asset = _pick_asset(item, spec.asset, where)
        href = asset.get_absolute_href() if base is None else asset.href
        if href is None:
            raise ConfigError(f"{where}: item {item.id!r} asset has no href")
        if base is not None and "://" not in href and not Path(href).is_absolute():
            href = str(base / href)
        found.append((item.id, href, _item_time(item), tuple(item.bbox) if item.bbox else None))
    ids = unique_names([f[0] for f in found], keys=[f"{f[0]}\0{f[1]}" for f in found])
    return [SceneInput(i, href, when, bbox, raw) for i, (raw, href, when, bbox) in zip(ids, found, strict=True)]


def _search_scenes(spec: InputsSpec, origin: _Origin, search: StacSearchSpec) -> list[SceneInput]:
    """The items a STAC API search returns (pystac-client pages through them), one scene each. The API is
    asked again on every run: a daily job sees the items published since, and the manifest's fingerprints
    (an item's asset hrefs) skip the ones already done.

    ``query`` goes to the API when it conforms to the Query extension; an API without it (many have only
    core item search) gets the search without it, and the items it returns are filtered here on their
    properties, ``limit`` counted after that filter."""
    from pystac_client import Client, ConformanceClasses
    from pystac_client.exceptions import APIError

    where = f"{origin.key('stac_search')} {search.url}"
    intersects = None
    if search.aoi is not None:
        intersects = _aoi_geometry(origin.resolve(search.aoi), where)
    try:
        api = Client.open(search.url)
        server_side = bool(search.query) and api.conforms_to(ConformanceClasses.QUERY)
        found = api.search(collections=search.collections, bbox=search.bbox, intersects=intersects,
                           datetime=search.datetime, query=search.query if server_side else None,
                           max_items=search.limit if server_side or not search.query else None)
        items = [i for i in found.items() if server_side or _matches_query(i.properties, search.query or [])]
        items = items[:search.limit] if search.limit is not None else items
    except (APIError, OSError, ValueError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"{where}: search failed ({first}); check the URL and the search parameters") from err
    if not items:
        raise ConfigError(f"{where}: the search found no items; check collections, bbox/aoi, datetime and query")
    return _scenes_from_items(spec, items, None, where)


_QUERY = re.compile(r"\s*([\w:.-]+)\s*(<=|>=|=|<|>)\s*(\S+)\s*")


def _matches_query(properties: dict[str, Any], query: Sequence[str]) -> bool:
    """Whether an item's properties pass every ``name OP value`` filter (numbers compared as numbers; an
    item without the property does not pass), as the Query extension would on the server."""
    import operator

    ops = {"<": operator.lt, "<=": operator.le, "=": operator.eq, ">=": operator.ge, ">": operator.gt}
    for text in query:
        match = _QUERY.fullmatch(text)
        assert match is not None  # checked by StacSearchSpec
        name, op, raw = match.groups()
        if properties.get(name) is None:
            return False
        value: Any = properties[name]
        wanted: Any = raw
        try:
            value, wanted = float(value), float(raw)
        except (TypeError, ValueError):
            value = str(value)
        if not ops[op](value, wanted):
            return False
    return True


def _aoi_geometry(path: Path, where: str) -> dict[str, Any]:
    """The one geometry of a GeoJSON file (a geometry, a Feature, or a FeatureCollection of one feature,
    or of several: their union), in EPSG:4326 as GeoJSON requires."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"{where}: aoi {path.name} cannot be read as GeoJSON ({err})") from err
    if data.get("type") == "FeatureCollection":
        import shapely.geometry

        shapes = [shapely.geometry.shape(f["geometry"]) for f in data.get("features", []) if f.get("geometry")]
        if not shapes:
            raise ConfigError(f"{where}: aoi {path.name} has no geometry")
        import shapely

        return dict(shapely.geometry.mapping(shapely.union_all(shapes)))
    if data.get("type") == "Feature":
        data = data.get("geometry") or {}
    if "coordinates" not in data:
        raise ConfigError(f"{where}: aoi {path.name} is not a GeoJSON geometry, feature or feature collection")
    return dict(data)


def _band_item_href(item: Any, key: str | None, collection: str | Path | None) -> str | None:
    """Where a STAC item with one GeoTIFF asset per band is read from, or None for an item whose one image
    asset is the scene (or when ``inputs.asset`` names the asset)."""
    if key is not None:
        return None
    images = [a for a in item.assets.values() if a.media_type and "tiff" in a.media_type.lower()
              and not set(a.roles or ()) & {"thumbnail", "overview", "visual"}]
    if len(images) < 2:
        return None
    if collection is not None:
        return f"{collection}#{item.id}"
    href = item.get_self_href()
    return str(href) if href else None


def _pick_asset(item: Any, key: str | None, where: str) -> Any:
    if key is not None:
        if key not in item.assets:
            raise ConfigError(f"{where}: item {item.id!r} has no asset {key!r} (has {', '.join(item.assets)}); "
                              f"set inputs.asset")
        return item.assets[key]
    for asset in item.assets.values():
        if asset.media_type and "tiff" in asset.media_type.lower():
            return asset
    raise ConfigError(f"{where}: item {item.id!r} has no GeoTIFF asset; name one with inputs.asset")


def _item_time(item: Any) -> TimeRange | None:
    if item.datetime is not None:
        when = item.datetime if item.datetime.tzinfo else item.datetime.replace(tzinfo=_UTC)
        return TimeRange(when, when)
    start, end = item.common_metadata.start_datetime, item.common_metadata.end_datetime
    if start is not None and end is not None:
        return TimeRange(start, end)
    return None


def _keep(scene: SceneInput, spec: InputsSpec) -> bool:
    dated = spec.start is not None or spec.end is not None
    if dated and (scene.when is None or not scene.when.overlaps(spec.start, spec.end)):
        return False
    if spec.bbox is not None:
        bbox = scene.bbox or _file_bbox(scene.path)
        if bbox is not None:
            w, s, e, n = spec.bbox
            return not (bbox[2] < w or bbox[0] > e or bbox[3] < s or bbox[1] > n)
    return True


def _file_bbox(path: str) -> tuple[float, float, float, float] | None:
    """The scene's bounds in EPSG:4326 from its header; None when unreadable (the run records why)."""
    from rasterio.errors import RasterioError
    from rasterio.warp import transform_bounds

    from pipeline.errors import ScenewatchError
    from pipeline.inference.read import open_raster

    try:  # as an untrusted scene: GeoTIFF only, a regular file, no GDAL syntax (no VRT reaching out)
        with open_raster(path) as src:
            if src.crs is None:
                return None
            return tuple(transform_bounds(src.crs, "EPSG:4326", *src.bounds, densify_pts=21))
    except (RasterioError, OSError, ScenewatchError):
        return None
