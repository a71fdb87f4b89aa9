"""Exporting polygon layers: attributes, then GeoPackage, GeoParquet, FlatGeobuf and GeoJSON files.

:func:`feature_table` turns finished polygons (pixel coordinates and pixel statistics) into the layer's
rows: map geometry, stable id, class, area and perimeter in metres, confidence, scene, date and model.
Rows are staged as they come in an Arrow IPC file beside the outputs (:class:`LayerStager`), so a layer of
any size is never held in memory; each format is then written from that file by streaming it through
:func:`export_layer`:

- ``gpkg``: GDAL's GeoPackage driver via :func:`pyogrio.write_arrow`, R-tree spatial index, in the
  scene's CRS, with ``OGR_CURRENT_DATE`` pinned so that the same layer gives the same bytes. A
  ``layer_styles`` table (the QGIS convention: QML and SLD, :mod:`pipeline.vectors.style`) is added to the
  temporary file before it is renamed, so the layer opens styled in QGIS: categorized on ``class_name``, in
  the class colours of :mod:`pipeline.colours` (``LayerSpec.class_colors``).
- ``parquet``: GeoParquet 1.1 written by pyarrow: WKB geometry, ``geo`` metadata with the CRS as PROJJSON,
  the layer's bounding box and a ``bbox`` covering column (xmin, ymin, xmax, ymax per row).
- ``fgb``: FlatGeobuf (GDAL) with its packed Hilbert R-tree, in the scene's CRS.
- ``geojson``: RFC 7946 GeoJSON, so reprojected to WGS 84 longitude/latitude (EPSG:4326).

Every file is written to a temporary name and renamed into place (:func:`pipeline.atomic.atomic_path`).
:meth:`LayerStager.staged` closes the staging file and returns a :class:`StagedLayer` value, so that the
files can be written by any process that sees the staging file (``workflows.vectorize``: a Dask worker).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import itertools
import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
from affine import Affine
from pyproj import CRS, Transformer

from pipeline.atomic import atomic_path, free_bytes, is_disk_full, temp_path_for
from pipeline.colours import layer_colours
from pipeline.errors import ConfigError, DiskFullError, OutputError
from pipeline.vectors.measure import AreaBasis, measure, to_map
from pipeline.vectors.style import Category, qml_style, sld_style
from pipeline.vectors.vectorize import Pieces
from pipeline.vocab import VectorFormat, choices

__all__ = [
    "FORMATS",
    "LayerSpec",
    "LayerStager",
    "StagedLayer",
    "StagedPart",
    "stage_part",
    "table_bounds",
    "feature_table",
    "feature_rows",
    "Bounds",
    "layer_schema",
    "export_layer",
    "geoparquet_metadata",
    "OGR_CURRENT_DATE",
]

FORMATS: tuple[str, ...] = choices(VectorFormat)  # each format's name is its file extension

# GeoPackage stamps its write time into gpkg_contents.last_change unless this is pinned.
OGR_CURRENT_DATE = "2000-01-01T00:00:00.000Z"

_FIXED_COLUMNS = ("id", "class_id", "class_name", "area_m2", "perimeter_m", "pixels", "proba_mean",
                  "proba_max", "scene_id", "acquired", "model", "model_version", "geometry")


@dataclass(frozen=True, slots=True)
class LayerSpec:
    """Everything that turns polygons into the rows of one layer (picklable, sent to workers).

    ``class_names`` maps class values to names (values without a name are written as their number).
    ``simplify_px`` is the simplification tolerance in pixels (0: exact pixel edges); ``min_area_m2``
    drops smaller polygons. ``attributes`` are constant columns added to every row. ``class_attributes``
    are columns whose value depends on the class (column -> class value -> value; a class without one gets
    null), e.g. a timeline's ``first_detected`` date; the name ``acquired`` there sets that column per class
    instead of ``acquired``. ``class_colors`` (class value -> ``#rrggbb``) style the GeoPackage layer;
    classes without one take :func:`pipeline.colours.layer_colours` of the class names.
    """

    scene_id: str
    crs_wkt: str
    transform: Affine
    basis: AreaBasis
    class_names: Mapping[int, str] = field(default_factory=dict)
    model: str | None = None
    model_version: str | None = None
    acquired: dt.date | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)
    simplify_px: float = 0.0
    min_area_m2: float = 0.0
    class_attributes: Mapping[str, Mapping[int, Any]] = field(default_factory=dict)
    class_colors: Mapping[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        clash = sorted(set(self.attributes) & set(_FIXED_COLUMNS))
        if clash:
            raise ConfigError(f"attributes {', '.join(clash)}: these names are layer columns already; rename them")
        clash = sorted((set(self.class_attributes) & (set(_FIXED_COLUMNS) - {"acquired"})) | (set(
            self.class_attributes) & set(self.attributes)))
        if clash:
            raise ConfigError(f"class attributes {', '.join(clash)}: these names are layer columns already; "
                              "rename them")
        for key, value in self.attributes.items():
            _arrow_type(key, value)
        for key, values in self.class_attributes.items():
            types = {_arrow_type(key, v) for v in values.values() if v is not None}
            if len(types) > 1 or (key == "acquired" and types - {pa.date32()}):
                raise ConfigError(f"class attribute {key}: give every class a value of one type"
                                  + (" (dates)" if key == "acquired" else ""))

    def class_column_type(self, key: str) -> pa.DataType:
        values = [v for v in self.class_attributes[key].values() if v is not None]
        return _arrow_type(key, values[0]) if values else pa.string()

    def colours(self) -> dict[int, str]:
        """Every named class value's colour: ``class_colors``, else :func:`pipeline.colours.layer_colours`."""
        values = sorted(self.class_names)
        fallback = dict(zip(values, layer_colours([self.class_names[v] for v in values]), strict=True))
        return {v: self.class_colors.get(v, fallback[v]) for v in values}


def _arrow_type(key: str, value: Any) -> pa.DataType:
    if isinstance(value, bool):
        return pa.bool_()
    if isinstance(value, (int, np.integer)):
        return pa.int64()
    if isinstance(value, (float, np.floating)):
        return pa.float64()
    if isinstance(value, str):
        return pa.string()
    if isinstance(value, dt.datetime):
        return pa.timestamp("ms")
    if isinstance(value, dt.date):
        return pa.date32()
    raise ConfigError(f"attribute {key}: {type(value).__name__} values cannot be written; use str, int, float, "
                      f"bool or a date")


def layer_schema(spec: LayerSpec) -> pa.Schema:
    """The columns of a layer, in order; the geometry is WKB in the scene's CRS."""
    fields = [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("class_id", pa.int32(), nullable=False),
        pa.field("class_name", pa.string()),
        pa.field("area_m2", pa.float64()),
        pa.field("perimeter_m", pa.float64()),
        pa.field("pixels", pa.int64()),
        pa.field("proba_mean", pa.float64()),
        pa.field("proba_max", pa.float64()),
        pa.field("scene_id", pa.string()),
        pa.field("acquired", pa.date32()),
        pa.field("model", pa.string()),
        pa.field("model_version", pa.string()),
    ]
    fields += [pa.field(k, _arrow_type(k, v)) for k, v in spec.attributes.items()]
    fields += [pa.field(k, spec.class_column_type(k)) for k in spec.class_attributes if k != "acquired"]
    fields.append(pa.field("geometry", pa.binary(), metadata={b"ARROW:extension:name": b"geoarrow.wkb"}))
    return pa.schema(fields)


def feature_ids(scene_id: str, cls: np.ndarray, key_row: np.ndarray, key_col: np.ndarray) -> np.ndarray:
    """Stable ids: a 63-bit hash of scene id, class and the object's first pixel (unique per class, the
    same whatever the tiling), so the same inputs always give the same ids."""
    out = np.empty(len(cls), dtype=np.int64)
    for i, (c, r, k) in enumerate(zip(cls.tolist(), key_row.tolist(), key_col.tolist(), strict=True)):
        digest = hashlib.blake2b(f"{scene_id}\x1f{c}\x1f{r}\x1f{k}".encode(), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "big") >> 1
    return out


Bounds = tuple[float, float, float, float] | None
"""``(xmin, ymin, xmax, ymax)`` of some rows' geometries in map coordinates; None for no rows."""


def feature_table(pieces: Pieces, spec: LayerSpec) -> pa.Table:
    """The rows of finished polygons: simplified (topology-preserving, in pixels), measured, filtered by
    ``min_area_m2``, and georeferenced."""
    return feature_rows(pieces, spec)[0]


def feature_rows(pieces: Pieces, spec: LayerSpec) -> tuple[pa.Table, Bounds]:
    """:func:`feature_table` and the rows' :func:`table_bounds`, taken from the coordinates as the geometry
    is written rather than from parsing it again."""
    geometry = pieces.geometry
    if spec.simplify_px > 0 and len(geometry):
        geometry = shapely.simplify(geometry, spec.simplify_px, preserve_topology=True)
    area, perimeter = measure(geometry, spec.transform, spec.basis)
    keep = area >= spec.min_area_m2 if spec.min_area_m2 > 0 else np.ones(len(area), dtype=bool)
    pieces, geometry, area, perimeter = pieces.take(keep), geometry[keep], area[keep], perimeter[keep]
    n = len(pieces)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(pieces.proba_count > 0, pieces.proba_sum / np.maximum(pieces.proba_count, 1), np.nan)
    names = [spec.class_names.get(c, str(c)) for c in pieces.cls.tolist()]
    columns: dict[str, Any] = {
        "id": feature_ids(spec.scene_id, pieces.cls, pieces.key_row, pieces.key_col),
        "class_id": pieces.cls.astype(np.int32),
        "class_name": names,
        "area_m2": area,
        "perimeter_m": perimeter,
        "pixels": pieces.pixels,
        "proba_mean": pa.array(mean, pa.float64(), from_pandas=True),
        "proba_max": pa.array(pieces.proba_max, pa.float64(), from_pandas=True),
        "scene_id": [spec.scene_id] * n,
        "acquired": ([spec.class_attributes["acquired"].get(c) for c in pieces.cls.tolist()]
                     if "acquired" in spec.class_attributes else [spec.acquired] * n),
        "model": [spec.model] * n,
        "model_version": [spec.model_version] * n,
    }
    for key, value in spec.attributes.items():
        columns[key] = [value] * n
    for key, by_class in spec.class_attributes.items():
        if key != "acquired":
            columns[key] = [by_class.get(c) for c in pieces.cls.tolist()]
    written = _map_wkb(geometry, spec.transform) if n else None
    if written is not None:
        columns["geometry"], bounds = written
    else:
        columns["geometry"] = shapely.to_wkb(to_map(geometry, spec.transform)) if n else np.empty(0, dtype=object)
        bounds = _wkb_bounds(columns["geometry"]) if n else None
    schema = layer_schema(spec)
    table = pa.table([pa.array(columns[f.name], f.type) if not isinstance(columns[f.name], pa.Array)
                      else columns[f.name] for f in schema], schema=schema)
    return table, bounds


def _map_wkb(geometry: np.ndarray, transform: Affine) -> tuple[pa.Array, Bounds] | None:
    """The WKB of polygons given in pixel coordinates, in map coordinates, and their bounds: the bytes of
    ``shapely.to_wkb(to_map(geometry, transform))`` (little-endian 2D polygons), written in numpy from the
    coordinates, so that a large polygon is neither copied into a second GEOS geometry nor serialized
    vertex by vertex (an object of 2.4 M vertices: 0.27 s for ``to_map`` and ``to_wkb``). None where that
    form does not apply (other geometry types, empty polygons, Z, a column over 2 GiB): write it with GEOS.

    The map coordinates are :func:`pipeline.vectors.measure.to_map`'s arithmetic, term for term. A polygon's
    WKB is byte order (1), type (3, uint32), ring count (uint32), then each ring: point count (uint32) and
    its x, y float64 pairs; rings and vertices in the geometry's order."""
    if (not np.all(shapely.get_type_id(geometry) == shapely.GeometryType.POLYGON) or shapely.is_empty(geometry).any()
            or shapely.has_z(geometry).any()):
        return None
    _, xy, (ring_offsets, polygon_offsets) = shapely.to_ragged_array(geometry)
    rings_per_polygon = np.diff(polygon_offsets)
    points_per_ring = np.diff(ring_offsets)
    sizes = 9 + 4 * rings_per_polygon + 16 * np.diff(ring_offsets[polygon_offsets])
    total = int(sizes.sum())
    if total >= 2**31:
        return None
    cols, rows = xy[:, 0], xy[:, 1]
    t = transform
    x = t.a * cols + t.b * rows + t.c
    y = t.d * cols + t.e * rows + t.f
    mapped = np.empty((len(xy), 2), dtype="<f8")
    mapped[:, 0], mapped[:, 1] = x, y
    out = np.empty(total, dtype=np.uint8)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])  # each polygon's first byte
    polygon = np.repeat(np.arange(len(geometry)), rings_per_polygon)  # each ring's polygon
    # a ring's first coordinate byte: the vertices before it, and 9 bytes for each polygon up to its own and 4
    # for each ring up to itself
    first = 16 * ring_offsets[:-1] + 9 * (polygon + 1) + 4 * (np.arange(len(points_per_ring)) + 1)
    header = np.zeros((len(geometry), 9), dtype=np.uint8)
    header[:, 0] = 1  # little-endian
    header[:, 1:5] = np.full(len(geometry), 3, dtype="<u4").view(np.uint8).reshape(-1, 4)  # Polygon
    header[:, 5:9] = rings_per_polygon.astype("<u4").view(np.uint8).reshape(-1, 4)
    out[starts[:, None] + np.arange(9)] = header
    out[(first - 4)[:, None] + np.arange(4)] = points_per_ring.astype("<u4").view(np.uint8).reshape(-1, 4)
    # each vertex's 16 bytes where its ring puts them, through a view of the output with a 16-byte item at every
    # byte (the places are not aligned: a copy per vertex, as one numpy assignment)
    at_every_byte = np.ndarray((total - 15,), dtype="V16", buffer=out, strides=(1,))
    at_every_byte[np.repeat(first - 16 * ring_offsets[:-1], points_per_ring) + 16 * np.arange(len(xy))] = \
        mapped.view("V16").ravel()
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32)
    column = pa.Array.from_buffers(pa.binary(), len(geometry), [None, pa.py_buffer(offsets), pa.py_buffer(out)])
    return column, (float(x.min()), float(y.min()), float(x.max()), float(y.max()))


def _wkb_bounds(wkb: np.ndarray) -> tuple[float, float, float, float]:
    bounds = shapely.bounds(shapely.from_wkb(wkb))
    return (float(bounds[:, 0].min()), float(bounds[:, 1].min()), float(bounds[:, 2].max()),
            float(bounds[:, 3].max()))


def table_bounds(table: pa.Table) -> Bounds:
    """``(xmin, ymin, xmax, ymax)`` of a layer table's geometries (map coordinates); None when it has no rows."""
    if table.num_rows == 0:
        return None
    return _wkb_bounds(table.column("geometry").to_numpy(zero_copy_only=False))


@dataclass(frozen=True, slots=True)
class StagedLayer:
    """A layer staged on disk, as a value: the staging file and what was counted while staging (the feature
    count, the bounding box for the GeoParquet metadata, the classes present for the style). Picklable, so
    that a Dask worker that sees the staging file can write the layer's files (:func:`export_layer`)."""

    path: Path
    spec: LayerSpec
    count: int
    bbox: tuple[float, float, float, float]
    classes: frozenset[int]
    parts: tuple[tuple[Path, int], ...] = ()  # rows staged by workers: (part file, batch), in layer order

    @property
    def schema(self) -> pa.Schema:
        return layer_schema(self.spec)

    def resolved(self) -> StagedLayer:
        """The same layer with absolute paths (a worker's working folder may differ)."""
        return replace(self, path=self.path.resolve(), parts=tuple((p.resolve(), i) for p, i in self.parts))

    def batches(self) -> Iterator[pa.RecordBatch]:
        """The staged rows, batch by batch, memory-mapped (nothing is loaded whole): the staging file's, or
        where workers staged them (:meth:`LayerStager.add_part`), each part's batch in layer order."""
        if not self.parts:
            with pa.memory_map(str(self.path)) as source:
                reader = pa.ipc.open_file(source)
                for i in range(reader.num_record_batches):
                    yield reader.get_batch(i)
            return
        for path, entries in itertools.groupby(self.parts, key=lambda part: part[0]):
            with pa.memory_map(str(path)) as source:
                reader = pa.ipc.open_file(source)
                for _, i in entries:
                    yield reader.get_batch(i)


@dataclass(frozen=True, slots=True)
class StagedPart:
    """What a worker says of the tables it staged in a part file (:func:`stage_part`), per table: its row
    count (0: no batch written for it), its :func:`table_bounds` and the classes present."""

    counts: tuple[int, ...]
    bounds: tuple[tuple[float, float, float, float] | None, ...]
    classes: tuple[frozenset[int], ...]


@contextlib.contextmanager
def _staging_space(spec: LayerSpec, folder: Path) -> Iterator[None]:
    """A full disk while rows are staged in ``folder`` is a DiskFullError naming the layer and the folder."""
    try:
        yield
    except OSError as err:
        if is_disk_full(err):
            raise DiskFullError(f"layer {spec.scene_id}: no space left in {folder} for the polygons being staged; "
                                "free some space and run again") from err
        raise


def stage_part(tables: Sequence[pa.Table], path: Path, spec: LayerSpec,
               bounds: Sequence[Bounds] | None = None) -> StagedPart:
    """Stage ``tables`` in one Arrow IPC file at ``path`` (atomically), one batch per non-empty table, as
    :meth:`LayerStager.add` stages them: for the process that makes the rows (a Dask worker), so that the
    rows never travel to the process that keeps the layer's order (:meth:`LayerStager.add_part`).
    ``bounds``: each table's :func:`table_bounds` where known (:func:`feature_rows`), which spares parsing
    their geometry again."""
    if bounds is None:
        bounds = [table_bounds(t) for t in tables]
    elif len(bounds) != len(tables):
        raise ValueError(f"{len(bounds)} bounds for {len(tables)} tables")
    tables = [t.combine_chunks() for t in tables]
    if any(t.num_rows for t in tables):
        with _staging_space(spec, path.parent), atomic_path(path) as tmp, pa.OSFile(str(tmp), "wb") as sink, \
                pa.ipc.new_file(sink, layer_schema(spec)) as writer:
            for table in tables:
                if table.num_rows:
                    writer.write_table(table)
    return StagedPart(tuple(t.num_rows for t in tables), tuple(bounds),
                      tuple(frozenset(np.unique(t.column("class_id").to_numpy()).tolist()) for t in tables))


class LayerStager:
    """Rows staged on disk as they are finished, in an Arrow IPC file beside the outputs, deleted on exit.

    Keeps the running feature count and bounding box (for the GeoParquet metadata); :meth:`staged` closes
    the file and says what it holds. Where the workers that make the rows see this folder, they stage them
    in part files instead (:meth:`part_path`, :func:`stage_part`), and this keeps only their order and
    counts (:meth:`add_part`): the same batches in the same order, so the same files are written from them.
    """

    def __init__(self, folder: Path, spec: LayerSpec) -> None:
        self.spec = spec
        self.schema = layer_schema(spec)
        folder.mkdir(parents=True, exist_ok=True)
        self.path = temp_path_for(folder / f"{spec.scene_id}.staging.arrow")
        self.count = 0
        self.bbox = [np.inf, np.inf, -np.inf, -np.inf]
        self.classes: set[int] = set()  # class values present (the style's categories)
        self._sink = pa.OSFile(str(self.path), "wb")
        self._writer: pa.ipc.RecordBatchFileWriter | None = pa.ipc.new_file(self._sink, self.schema)
        self._part_files: list[Path] = []  # named for workers to stage into, deleted on exit like the file
        self._parts: list[tuple[Path, int]] = []  # rows staged by workers, in layer order

    def part_path(self) -> Path:
        """A new part file's name beside the staging file (temporary, of this process: deleted on exit, and
        swept by a later run if this one is killed), for a worker to stage rows into (:func:`stage_part`)."""
        path = self.path.with_name(f"{self.path.stem}.part{len(self._part_files)}{self.path.suffix}")
        self._part_files.append(path)
        return path

    def add_part(self, path: Path, index: int, count: int, bounds: Sequence[float] | None,
                 classes: AbstractSet[int]) -> None:
        """Stage the ``count`` rows of batch ``index`` of the part file at ``path`` (from :meth:`part_path`,
        written by :func:`stage_part`), next in layer order, from what the worker said of them. A layer is
        staged either here (:meth:`add`) or in parts, not both."""
        if count == 0:
            return
        assert self._parts or not self.count, "rows staged here already"
        self._parts.append((path, index))
        self._counted(count, classes, bounds)

    def add(self, table: pa.Table, bounds: Sequence[float] | None = None) -> None:
        """Stage rows; ``bounds`` (their :func:`table_bounds`, computed where the rows were made) spares
        this process parsing their geometry."""
        if table.num_rows == 0:
            return
        assert self._writer is not None, "stager is closed"
        assert not self._parts, "rows staged in parts already"
        with _staging_space(self.spec, self.path.parent):
            self._writer.write_table(table)
        self._counted(table.num_rows, np.unique(table.column("class_id").to_numpy()).tolist(),
                      table_bounds(table) if bounds is None else bounds)

    def _counted(self, count: int, classes: Iterable[int], bounds: Sequence[float] | None) -> None:
        """Staged rows counted: the feature count, the classes present and the bounding box."""
        self.count += count
        self.classes.update(classes)
        if bounds is not None:
            self.bbox = [min(self.bbox[0], bounds[0]), min(self.bbox[1], bounds[1]), max(self.bbox[2], bounds[2]),
                         max(self.bbox[3], bounds[3])]

    def close(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            try:
                writer.close()
            finally:
                self._sink.close()

    def staged(self) -> StagedLayer:
        """The rows staged so far, as a value (the file is closed: nothing more can be added)."""
        self.close()
        box = (float(self.bbox[0]), float(self.bbox[1]), float(self.bbox[2]), float(self.bbox[3]))
        return StagedLayer(self.path, self.spec, self.count, box, frozenset(self.classes), tuple(self._parts))

    def batches(self) -> Iterator[pa.RecordBatch]:
        """The staged rows, batch by batch, memory-mapped (nothing is loaded whole)."""
        return self.staged().batches()

    def __enter__(self) -> LayerStager:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self.close()
        except OSError:
            if exc_type is None:
                raise
            # the error already on its way (a full disk, say) is the one to report
        finally:
            for path in [self.path, *self._part_files]:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()


def export_layer(layer: LayerStager | StagedLayer, path: str | Path, fmt: str) -> Path:
    """Write the staged layer to ``path`` in ``fmt`` (one of :data:`FORMATS`), atomically. From a
    :class:`StagedLayer`, any process that sees its staging file and ``path`` writes the same bytes."""
    path = Path(path)
    stager = layer.staged() if isinstance(layer, LayerStager) else layer
    writer = {"gpkg": _write_gpkg, "parquet": _write_parquet, "fgb": _write_fgb, "geojson": _write_geojson}[fmt]
    try:
        with atomic_path(path) as tmp:
            writer(stager, tmp)
            written = _feature_count(tmp, fmt, stager.spec.scene_id)
            if written != stager.count:  # a layer cut short is never renamed into place
                raise OSError(f"{written} features written instead of {stager.count}")
    except Exception as err:  # pyogrio, pyarrow and GDAL each raise their own kinds; all but these re-raised
        staged = stager.path.stat().st_size if stager.path.exists() else 0  # about the layer's size
        if is_disk_full(err) or (free_bytes(path.parent) or 2**40) < max(2**20, 2 * staged):
            raise DiskFullError(f"layer {path.name}: no space left in {path.parent} "
                                f"({(free_bytes(path.parent) or 0) / 2**20:.1f} MiB free); free some space and "
                                "run again") from err
        if isinstance(err, OSError):
            raise OutputError(f"layer {path}: cannot be written ({err})") from err
        raise
    return path


def _feature_count(path: Path, fmt: str, layer: str) -> int:
    """Features in a layer file just written, read back from it."""
    if fmt == "parquet":
        return int(pq.ParquetFile(path).metadata.num_rows)
    import pyogrio

    if fmt != "geojson":
        return int(pyogrio.read_info(path, layer=layer if fmt == "gpkg" else None,
                                     force_feature_count=True)["features"])
    # GDAL's GeoJSON reader refuses an object over 200 MB of text unless told otherwise (the background object of
    # an 8192² scene, 2.4 M vertices, is more); this only counts the features just written
    with _GEOJSON_LIMIT, _gdal_config({"OGR_GEOJSON_MAX_OBJ_SIZE": "0"}):
        return int(pyogrio.read_info(path, force_feature_count=True)["features"])


_GEOJSON_LIMIT = threading.Lock()  # GDAL's config options are process-wide (see _PINNED_DATE)


def _stream(stager: StagedLayer, batches: Iterator[pa.RecordBatch] | None = None) -> pa.RecordBatchReader:
    batches = stager.batches() if batches is None else batches
    return pa.RecordBatchReader.from_batches(stager.schema, batches)


def _write_ogr(stager: StagedLayer, tmp: Path, driver: str, crs: str, stream: pa.RecordBatchReader,
               layer_options: Mapping[str, str] | None = None) -> None:
    import pyogrio

    pyogrio.write_arrow(stream, tmp, layer=stager.spec.scene_id, driver=driver, geometry_name="geometry",
                        geometry_type="Polygon", crs=crs, layer_options=dict(layer_options or {}))


# GDAL's config options are process-wide: a batch with several scenes in flight exports from several threads,
# and one thread restoring the option while another writes left that GeoPackage stamped with the write time.
_PINNED_DATE = threading.Lock()


def _write_gpkg(stager: StagedLayer, tmp: Path) -> None:
    with _PINNED_DATE, _gdal_config({"OGR_CURRENT_DATE": OGR_CURRENT_DATE}):
        _write_ogr(stager, tmp, "GPKG", stager.spec.crs_wkt, _stream(stager), {"SPATIAL_INDEX": "YES"})
    _write_layer_styles(tmp, stager.spec.scene_id, layer_categories(stager.spec, stager.classes))


def layer_categories(spec: LayerSpec, present: AbstractSet[int] | None = None) -> list[Category]:
    """The style's categories: the classes ``present`` in the layer (all named classes when none are), in
    class value order, each with its colour."""
    colours = spec.colours()
    values = sorted(present) if present else sorted(colours)
    return [Category(spec.class_names.get(v, str(v)), colours.get(v, "#999999")) for v in values]


# The QGIS layer_styles table, as QGIS creates it in a GeoPackage (registered as an attributes table).
_LAYER_STYLES_DDL = """CREATE TABLE IF NOT EXISTS "layer_styles" (
    "id" INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    "f_table_catalog" TEXT(256),
    "f_table_schema" TEXT(256),
    "f_table_name" TEXT(256),
    "f_geometry_column" TEXT(256),
    "styleName" TEXT(30),
    "styleQML" TEXT,
    "styleSLD" TEXT,
    "useAsDefault" BOOLEAN,
    "description" TEXT,
    "owner" TEXT(30),
    "ui" TEXT(30),
    "update_time" DATETIME DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
)"""


def _write_layer_styles(gpkg: Path, layer: str, categories: list[Category]) -> None:
    """The layer's default style (QML and SLD) into ``layer_styles`` of the GeoPackage at ``gpkg`` (the
    temporary file, before its rename). Times are the pinned ``OGR_CURRENT_DATE``: same layer, same bytes."""
    db = sqlite3.connect(gpkg)
    try:
        # no fsync of its own: the file is flushed once, whole, before its rename (pipeline.atomic.atomic_path)
        db.execute("PRAGMA synchronous = OFF")
        with db:
            db.execute(_LAYER_STYLES_DDL)
            db.execute("INSERT OR REPLACE INTO gpkg_contents (table_name, data_type, identifier, description, "
                       "last_change) VALUES ('layer_styles', 'attributes', 'layer_styles', '', ?)",
                       (OGR_CURRENT_DATE,))
            db.execute("INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name, f_geometry_column, "
                       "styleName, styleQML, styleSLD, useAsDefault, description, owner, ui, update_time) "
                       "VALUES ('', '', ?, 'geometry', ?, ?, ?, 1, ?, '', NULL, ?)",
                       (layer, layer, qml_style(categories), sld_style(layer, categories),
                        "scenewatch: class_name in the class colours (pipeline.colours)", OGR_CURRENT_DATE))
    finally:
        db.close()


def _write_fgb(stager: StagedLayer, tmp: Path) -> None:
    _write_ogr(stager, tmp, "FlatGeobuf", stager.spec.crs_wkt, _stream(stager), {"SPATIAL_INDEX": "YES"})


def _write_geojson(stager: StagedLayer, tmp: Path) -> None:
    transformer = Transformer.from_crs(CRS.from_wkt(stager.spec.crs_wkt), "EPSG:4326", always_xy=True)

    def lonlat(xy: np.ndarray) -> np.ndarray:
        return np.column_stack(transformer.transform(xy[:, 0], xy[:, 1]))

    def reprojected() -> Iterator[pa.RecordBatch]:
        for batch in stager.batches():
            geoms = shapely.from_wkb(batch.column("geometry").to_numpy(zero_copy_only=False))
            wkb = pa.array(shapely.to_wkb(shapely.transform(geoms, lonlat)), pa.binary())
            yield batch.set_column(batch.schema.get_field_index("geometry"), stager.schema.field("geometry"), wkb)

    _write_ogr(stager, tmp, "GeoJSON", "EPSG:4326", _stream(stager, reprojected()), {"RFC7946": "YES"})


def geoparquet_metadata(crs_wkt: str, bbox: Sequence[float] | None) -> dict[str, Any]:
    """GeoParquet 1.1 ``geo`` metadata for a WKB Polygon column ``geometry`` with a ``bbox`` covering."""
    column: dict[str, Any] = {
        "encoding": "WKB",
        "geometry_types": ["Polygon"],
        "crs": CRS.from_wkt(crs_wkt).to_json_dict(),
        "covering": {"bbox": {"xmin": ["bbox", "xmin"], "ymin": ["bbox", "ymin"],
                              "xmax": ["bbox", "xmax"], "ymax": ["bbox", "ymax"]}},
    }
    if bbox is not None and np.all(np.isfinite(bbox)):
        column["bbox"] = [float(v) for v in bbox]
    return {"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": column}}


_BBOX_TYPE = pa.struct([("xmin", pa.float64()), ("ymin", pa.float64()), ("xmax", pa.float64()),
                        ("ymax", pa.float64())])


def _write_parquet(stager: StagedLayer, tmp: Path) -> None:
    geo = geoparquet_metadata(stager.spec.crs_wkt, stager.bbox if stager.count else None)
    plain = pa.schema([f.remove_metadata() if f.name == "geometry" else f for f in stager.schema])
    schema = plain.append(pa.field("bbox", _BBOX_TYPE)).with_metadata({b"geo": json.dumps(geo).encode()})
    with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        for batch in stager.batches():
            bounds = shapely.bounds(shapely.from_wkb(batch.column("geometry").to_numpy(zero_copy_only=False)))
            bbox = pa.StructArray.from_arrays([pa.array(bounds[:, i]) for i in range(4)],
                                              fields=list(_BBOX_TYPE))
            columns = [batch.column(i) for i in range(batch.num_columns)] + [bbox]
            writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=schema))


@contextlib.contextmanager
def _gdal_config(options: Mapping[str, str]) -> Iterator[None]:
    import pyogrio

    before = {k: pyogrio.get_gdal_config_option(k) for k in options}
    pyogrio.set_gdal_config_options(dict(options))
    try:
        yield
    finally:
        pyogrio.set_gdal_config_options(before)
