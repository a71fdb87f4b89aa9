"""Evaluate a model on a labelled scene: the orchestration behind ``scenewatch evaluate``.

The model predicts the **whole scene** through :func:`workflows.scene.predict_scene` (tiles, halos,
blending: exactly what a user gets), and the stitched class raster is compared with the labels, window by
window, inside ``region`` (default: the whole scene). Pixel metrics come from one confusion matrix summed
over the windows [pipeline.training.metrics]; object metrics match polygons of each countable class (predicted ones
from the class raster with ``rasterio.features.shapes``, true ones from the vector labels, or from the label
raster) after clipping both sides to the region, so an object cut by the region's edge is judged on the
same part on both sides.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.windows import Window

from pipeline.config import EvaluateConfig
from pipeline.errors import ConfigError
from pipeline.inference.read import SceneMeta
from pipeline.models.contract import BUILTIN_MODELS, ModelRef
from pipeline.training.labels import IGNORE, Labels, open_labels, read_labels
from pipeline.training.metrics import ObjectMetrics, PixelMetrics, confusion_matrix, match_objects, pixel_metrics
from tiles.grid import PixelWindow

__all__ = ["Evaluation", "Baseline", "BASELINE_TARGETS", "index_baselines", "evaluate_scene", "evaluate_prediction",
           "evaluate_change", "evaluation_dict", "polygons_of", "is_change_product"]


@dataclass(frozen=True, slots=True)
class Evaluation:
    scene: str
    model: str
    labels: str
    region: PixelWindow
    pixels: PixelMetrics
    objects: tuple[ObjectMetrics, ...]
    unknown_pixels: int  # pixels in the region left out: no label, or no prediction (nodata)
    baselines: tuple[Baseline, ...] = ()  # the best built-in index per class, for a trained bundle


@dataclass(frozen=True, slots=True)
class Baseline:
    """A built-in index model scored on the same pixels as a trained network, for one of its classes."""

    class_name: str  # the network's class
    model: str  # the built-in model whose target class matches it
    description: str
    iou: float  # the built-in's IoU of that class
    network_iou: float  # the network's


# A network's class -> the target class of the built-in models that map the same thing (lower case).
BASELINE_TARGETS: dict[str, tuple[str, ...]] = {
    "water": ("water", "flood", "flooded", "flooding", "open water", "surface water"),
    "vegetation": ("vegetation", "forest", "trees", "tree", "canopy", "green", "vegetated"),
    "bare": ("bare", "cleared", "clearcut", "clear-cut", "clearing", "deforestation", "deforested", "soil",
             "bare soil", "cleared land"),
    "burned": ("burned", "burnt", "burn", "burn scar", "burned area", "fire scar"),
}


def _strips(region: PixelWindow, rows: int = 512) -> Iterator[PixelWindow]:
    for r in range(region.row_off, region.row_end, rows):
        yield PixelWindow(r, region.col_off, min(rows, region.row_end - r), region.width)


def _read_classes(path: Path, window: PixelWindow) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1, window=Window(window.col_off, window.row_off, window.width, window.height))


def polygons_of(mask: np.ndarray, window: PixelWindow, meta: SceneMeta, min_pixels: int = 0) -> list[Any]:
    """Polygons (scene CRS) of the True pixels of ``mask`` covering ``window``, one per 4-connected
    component, dropping those smaller than ``min_pixels``."""
    from rasterio.features import shapes
    from rasterio.windows import transform as window_transform
    from shapely.geometry import shape

    transform = window_transform(Window(window.col_off, window.row_off, window.width, window.height), meta.transform)
    pixel_area = abs(meta.transform.a * meta.transform.e - meta.transform.b * meta.transform.d)
    out = []
    for geom, _ in shapes(mask.astype(np.uint8), mask=mask, transform=transform, connectivity=4):
        poly = shape(geom)
        if poly.area >= min_pixels * pixel_area:
            out.append(poly)
    return out


def _region_box(region: PixelWindow, meta: SceneMeta) -> Any:
    from shapely import box

    t = meta.transform
    x0, y0 = t * (region.col_off, region.row_off)
    x1, y1 = t * (region.col_end, region.row_end)
    return box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def evaluate_prediction(classes_path: str | Path, labels: Labels, class_names: Sequence[str], *,
                        region: PixelWindow | None = None, object_classes: Sequence[str] = (),
                        iou_threshold: float = 0.5,
                        min_object_pixels: int = 0) -> tuple[PixelMetrics, tuple[ObjectMetrics, ...], int]:
    """Compare a class raster on the labels' scene grid with the labels (see module docstring)."""
    meta = labels.meta
    region = region or meta.bounds
    k = len(class_names)
    total = np.zeros((k, k), dtype=np.int64)
    unknown = 0
    object_ids = [_class_index(name, class_names) for name in object_classes]
    predicted_masks: dict[int, list[Any]] = {c: [] for c in object_ids}
    truth_masks: dict[int, list[Any]] = {c: [] for c in object_ids}
    for window in _strips(region, rows=region.height if object_ids else 512):
        predicted = _read_classes(Path(classes_path), window)
        truth = read_labels(labels, window)
        total += confusion_matrix(truth, predicted, k)
        unknown += int(np.count_nonzero((truth == IGNORE) | (predicted == IGNORE)))
        for c in object_ids:
            predicted_masks[c] = polygons_of(predicted == c, window, meta, min_object_pixels)
            if not labels.is_vector:
                truth_masks[c] = polygons_of(truth == c, window, meta)
    objects = []
    area = _region_box(region, meta)
    for name, c in zip(object_classes, object_ids, strict=True):
        if labels.is_vector:
            truth_polys = [g for g, code in zip(labels.geometries, labels.codes, strict=True) if code == c]
        else:
            truth_polys = truth_masks[c]
        clip_t = [g.intersection(area) for g in truth_polys]
        clip_p = [g.intersection(area) for g in predicted_masks[c]]
        objects.append(match_objects([g for g in clip_t if not g.is_empty and g.area > 0],
                                     [g for g in clip_p if not g.is_empty and g.area > 0], name=name,
                                     iou_threshold=iou_threshold))
    return pixel_metrics(total, class_names), tuple(objects), unknown


def _class_index(name: str, class_names: Sequence[str]) -> int:
    lowered = [c.lower() for c in class_names]
    if name.lower() not in lowered:
        raise ConfigError(f"`object_classes` {name}: not a class of the model ({', '.join(class_names)})")
    return lowered.index(name.lower())


def evaluate_scene(scene: str | Path, model: str | Path | ModelRef, labels_path: str | Path,
                   config: EvaluateConfig = EvaluateConfig(), *, out_dir: str | Path | None = None,
                   client: Any = None, progress: bool | None = None) -> Evaluation:
    """Predict ``scene`` whole with ``model`` (as ``config.predict`` says) and score it against
    ``labels_path`` inside ``config.region``.

    ``config.object_classes`` default: every class but the first for vector labels (footprints are countable
    things), none for a label raster. Predictions go to ``out_dir`` (kept) or a temporary folder.
    """
    from workflows.scene import plan_scene, predict_scene

    plan = plan_scene(scene, model, config.predict)
    meta = plan.meta
    region = PixelWindow(*config.region) if config.region is not None else None
    if region is not None:
        clipped = region.intersection(meta.bounds)
        if clipped is None:
            raise ConfigError(f"scene {meta.name}: `region` lies outside the scene ({meta.height} x {meta.width} px)")
        region = clipped
    with tempfile.TemporaryDirectory(prefix="scenewatch-eval-") as tmp:
        result = predict_scene(plan, out_dir if out_dir is not None else tmp, client=client, progress=progress)
        names = result.model.class_names
        labels = open_labels(labels_path, meta, names, config.label_attribute)
        object_classes = config.object_classes
        if object_classes is None:
            object_classes = names[1:] if labels.is_vector else ()
        pixels, objects, unknown = evaluate_prediction(result.classes_path, labels, names, region=region,
                                                       object_classes=object_classes,
                                                       iou_threshold=config.iou_threshold,
                                                       min_object_pixels=config.min_object_pixels)
        baselines: tuple[Baseline, ...] = ()
        if plan.model.factory or plan.model.source not in BUILTIN_MODELS:
            baselines = index_baselines(scene, labels, names, pixels, config, region or meta.bounds, Path(tmp),
                                        client=client)
    return Evaluation(scene=Path(scene).name, model=result.model.name, labels=Path(labels_path).name,
                      region=region or meta.bounds, pixels=pixels, objects=objects, unknown_pixels=unknown,
                      baselines=baselines)


def _class_iou(classes_path: Path, target: int, labels: Labels, c: int, region: PixelWindow) -> float:
    """IoU of "class ``target`` in the raster" against "label ``c``", over pixels known on both sides."""
    inter = union = 0
    for window in _strips(region):
        predicted = _read_classes(classes_path, window)
        truth = read_labels(labels, window)
        known = (truth != IGNORE) & (predicted != IGNORE)
        p, t = (predicted == target) & known, (truth == c) & known
        inter += int(np.count_nonzero(p & t))
        union += int(np.count_nonzero(p | t))
    return 1.0 if union == 0 else inter / union


def index_baselines(scene: str | Path, labels: Labels, class_names: Sequence[str], network: PixelMetrics,
                    config: EvaluateConfig, region: PixelWindow, work: Path, *, client: Any = None
                    ) -> tuple[Baseline, ...]:
    """For each class of a trained network that a built-in index model maps (:data:`BASELINE_TARGETS`: water,
    vegetation/forest, bare/cleared, burned), that model run on the same scene with its defaults (where the
    scene has its bands) and scored on the same pixels; the best per class. Empty when none applies."""
    from pipeline.errors import ScenewatchError
    from pipeline.models.loader import load_model
    from pipeline.models.spectral import SpectralIndexModel
    from workflows.scene import plan_scene, predict_scene

    wanted = {name.lower(): i for i, name in enumerate(class_names)}
    network_iou = {c.name.lower(): float("nan") if c.iou is None else c.iou for c in network.classes}
    best: dict[str, Baseline] = {}
    for name in sorted(BUILTIN_MODELS):
        model = load_model(ModelRef.of(name))
        if not isinstance(model, SpectralIndexModel):
            continue
        target = model.info.class_names[1].lower()
        matches = [n for n in BASELINE_TARGETS.get(target, (target,)) if n in wanted]
        if not matches:
            continue
        try:
            plan = plan_scene(scene, name, config.predict, scene_id=f"baseline-{name}")
        except ScenewatchError:  # the scene lacks a band this index needs: no baseline from it
            continue
        result = predict_scene(plan, work, client=client, progress=False)
        for match in matches:
            iou = _class_iou(result.classes_path, 1, labels, wanted[match], region)
            cls = class_names[wanted[match]]
            if cls not in best or iou > best[cls].iou:
                best[cls] = Baseline(cls, name, result.model.description, iou, network_iou.get(match, float("nan")))
    return tuple(best[c] for c in class_names if c in best)


# ------------------------------------------------------------------------------------------ change products

VECTOR_SUFFIXES = (".gpkg", ".geojson", ".json", ".fgb", ".shp", ".parquet")


def is_change_product(path: str | Path) -> bool:
    """Whether ``path`` is a change product ``evaluate`` scores without a model: a ``*.change.tif`` raster or a
    change layer (``*.change.gpkg`` and the other vector formats of ``scenewatch change``)."""
    name = Path(path).name.lower()
    return name.endswith(".change.tif") or any(name.endswith(".change" + s) for s in VECTOR_SUFFIXES)


def _read_layer(path: Path, where: str) -> Any:
    import geopandas as gpd

    try:
        if path.suffix.lower() == ".parquet":
            return gpd.read_parquet(path)
        return gpd.read_file(path)
    except (OSError, ValueError, RuntimeError) as err:  # pyogrio.errors.DataSourceError is a RuntimeError
        raise ConfigError(f"{where} {path.name}: cannot be read as a vector layer ({err})") from err


def _burn(layer: Any, grid: Any, window: PixelWindow, where: str) -> np.ndarray:
    """bool ``(rows, cols)``: pixels of ``window`` of ``grid`` whose centre is inside a polygon of ``layer``."""
    from rasterio.features import rasterize
    from rasterio.windows import transform as window_transform

    if layer.crs is None:
        raise ConfigError(f"{where}: the layer has no CRS; write one into it (e.g. ogr2ogr -a_srs)")
    geoms = [g for g in layer.to_crs(grid.crs).geometry if g is not None and not g.is_empty]
    if not geoms:
        return np.zeros((window.height, window.width), bool)
    transform = window_transform(Window(window.col_off, window.row_off, window.width, window.height), grid.transform)
    return rasterize(geoms, out_shape=(window.height, window.width), transform=transform, fill=0,
                     default_value=1, dtype="uint8").astype(bool)


def evaluate_change(change: str | Path, labels_path: str | Path, *, transitions: Sequence[str] | None = None,
                    label_attribute: str | None = None, label_values: Sequence[int] | None = None,
                    region: PixelWindow | None = None) -> Evaluation:
    """Score a change product against a reference: IoU, F1, precision and recall of "change" against "no change".

    ``change`` is a ``*.change.tif`` (band 1 transition codes, names in its tags) or a change layer (any
    polygon is change; a ``class_name`` column is filtered by ``transitions``). ``transitions`` are the
    transitions that count as the change scored (e.g. ``other->water`` for a flood; default: every one but
    "no change"). ``labels_path`` is a mask raster (change where its value is in ``label_values``, default
    any value but 0 and nodata) or polygons (change inside; with ``label_attribute``, only features whose
    attribute is truthy). The grid is the change raster's, or the label raster's for a layer; pixels that are
    nodata in the change raster or the label raster are left out (``unknown_pixels``).
    """
    from pipeline.change.align import grid_of, read_aligned
    from pipeline.change.transitions import CHANGE_NODATA
    from pipeline.products import class_names_from_tags

    change, labels_path = Path(change), Path(labels_path)
    vector_pred = change.suffix.lower() != ".tif"
    vector_truth = labels_path.suffix.lower() in VECTOR_SUFFIXES
    if vector_pred and vector_truth:
        raise ConfigError(f"evaluate {change.name}: a change layer is scored on a grid; give the reference as a "
                          "mask raster, or score the change raster (*.change.tif) against the polygons")
    grid = grid_of(labels_path if vector_pred else change)
    region = region or grid.bounds
    wanted = None if transitions is None else {t.strip().lower() for t in transitions}
    codes: list[int] = []
    pred_layer = truth_layer = None
    if vector_pred:
        pred_layer = _read_layer(change, "change layer")
        if wanted is not None and "class_name" in pred_layer.columns:
            pred_layer = pred_layer[pred_layer["class_name"].str.lower().isin(wanted)]
    else:
        with rasterio.open(change) as src:
            names = [n.lower() for n in class_names_from_tags(src.tags())]
        if wanted is not None:
            unknown = sorted(wanted - set(names))
            if unknown:
                raise ConfigError(f"evaluate {change.name}: no transition {', '.join(unknown)}; it has "
                                  f"{', '.join(n for n in names if n)}")
        codes = [i for i, n in enumerate(names) if n and i != 0 and (wanted is None or n in wanted)]
    if vector_truth:
        truth_layer = _read_layer(labels_path, "labels")
        if label_attribute is not None:
            if label_attribute not in truth_layer.columns:
                raise ConfigError(f"labels {labels_path.name}: no attribute {label_attribute!r}")
            truth_layer = truth_layer[truth_layer[label_attribute].astype(bool)]
    total = np.zeros((2, 2), dtype=np.int64)
    unknown_pixels = 0
    for window in _strips(region):
        if vector_pred:
            predicted = _burn(pred_layer, grid, window, f"change layer {change.name}")
            ok = np.ones(predicted.shape, bool)
        else:
            raw, ok = read_aligned(change, grid, window, [1])
            ok &= raw[0] != CHANGE_NODATA
            predicted = np.isin(raw[0], codes)
        if vector_truth:
            truth = _burn(truth_layer, grid, window, f"labels {labels_path.name}")
        else:
            raw_t, ok_t = read_aligned(labels_path, grid, window, [1])
            ok &= ok_t
            truth = np.isin(raw_t[0], list(label_values)) if label_values is not None else raw_t[0] != 0
        total += confusion_matrix(np.where(ok, truth, IGNORE).astype(np.uint8),
                                  np.where(ok, predicted, IGNORE).astype(np.uint8), 2)
        unknown_pixels += int(np.count_nonzero(~ok))
    label = ",".join(sorted(wanted)) if wanted else "change"
    return Evaluation(scene=change.name, model=f"change product ({label})", labels=labels_path.name, region=region,
                      pixels=pixel_metrics(total, ("no change", "change")), objects=(), unknown_pixels=unknown_pixels)


def evaluation_dict(ev: Evaluation) -> dict[str, Any]:
    """A JSON-ready report (derived ratios included)."""
    return {
        "scene": ev.scene, "model": ev.model, "labels": ev.labels,
        "region": asdict(ev.region),
        "pixels": {"accuracy": ev.pixels.accuracy, "mean_iou": ev.pixels.mean_iou, "pixels": ev.pixels.pixels,
                   "unknown_pixels": ev.unknown_pixels,
                   "classes": [asdict(c) for c in ev.pixels.classes],
                   "confusion_matrix": {"rows": "true class", "columns": "predicted class",
                                        "values": [list(r) for r in ev.pixels.confusion]}},
        "baselines": [asdict(b) for b in ev.baselines],
        "objects": [{"class": o.name, "iou_threshold": o.iou_threshold, "true_positives": o.true_positives,
                     "false_positives": o.false_positives, "false_negatives": o.false_negatives,
                     "precision": o.precision, "recall": o.recall, "f1": o.f1} for o in ev.objects],
    }
