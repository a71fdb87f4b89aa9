"""Quicklooks: pictures of change products that people would rather look at than read.

Reads are decimated by GDAL (``out_shape``, from overviews where the file has them), so a quicklook of a
scene of any size costs a picture's worth of memory. Figures are drawn with matplotlib's object API on the Agg
canvas: no display needed, and no global pyplot state or backend is touched.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import rasterio
from rasterio.enums import Resampling

from pipeline.atomic import atomic_path
from pipeline.change.align import GridSpec
from pipeline.colours import NO_CHANGE, change_colours, class_colours, rgba

if TYPE_CHECKING:  # imported lazily where used
    from matplotlib.figure import Figure

__all__ = ["read_preview", "stretch_rgb", "paint_classes", "save_pair_quicklook", "save_area_plot"]

# Colours come from pipeline.colours (the change palette, the class colours); nodata is hatched.


def _figure(figsize: tuple[float, float], dpi: int) -> Figure:
    """A figure outside pyplot: rendered by the Agg canvas, no global backend switched, no state kept (a
    notebook's inline plotting is left as it was)."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, dpi=dpi)


def preview_shape(grid: GridSpec, max_size: int) -> tuple[int, int]:
    scale = max(grid.height, grid.width) / max_size
    if scale <= 1:
        return grid.height, grid.width
    return max(1, round(grid.height / scale)), max(1, round(grid.width / scale))


def read_preview(path: str | os.PathLike[str], grid: GridSpec, indexes: Sequence[int], max_size: int = 800,
                 resampling: str = "nearest") -> tuple[np.ndarray, np.ndarray]:
    """``indexes`` of a raster already on ``grid``, decimated to at most ``max_size`` px: data and valid mask."""
    shape = preview_shape(grid, max_size)
    with rasterio.open(path) as src:
        data = src.read(list(indexes), out_shape=(len(indexes), *shape), resampling=Resampling[resampling])
        masks = src.read_masks(list(indexes), out_shape=(len(indexes), *shape), resampling=Resampling.nearest)
    return data, np.all(masks > 0, axis=0)


def stretch_rgb(data: np.ndarray, valid: np.ndarray, percent: float = 2.0) -> np.ndarray:
    """``(3, H, W)`` band values to an ``(H, W, 4)`` float RGBA image, each band stretched between its
    ``percent`` and ``100 - percent`` percentiles over valid pixels; invalid pixels transparent."""
    rgba = np.zeros((*data.shape[1:], 4), dtype=np.float32)
    for i in range(3):
        band = data[min(i, data.shape[0] - 1)].astype(np.float32)
        values = band[valid]
        lo, hi = (np.percentile(values, [percent, 100 - percent]) if values.size else (0.0, 1.0))
        rgba[..., i] = np.clip((band - lo) / max(hi - lo, 1e-6), 0, 1)
    rgba[..., 3] = valid
    return rgba


def paint_classes(classes: np.ndarray, valid: np.ndarray, colours: Sequence[str]) -> np.ndarray:
    """``(H, W)`` class values to an ``(H, W, 4)`` float RGBA image in ``colours`` (one per class value);
    invalid pixels, and values without a colour, transparent."""
    lut = np.zeros((256, 4), dtype=np.float32)
    for value, colour in enumerate(colours[:256]):
        lut[value] = np.asarray(rgba(colour), dtype=np.float32) / 255
    out = lut[np.clip(classes, 0, 255).astype(np.intp)]
    out[~valid] = 0
    return out


def save_pair_quicklook(path: str | os.PathLike[str], before_rgb: np.ndarray, after_rgb: np.ndarray,
                        change: np.ndarray, change_names: Sequence[str], *, titles: Sequence[str] = ("before", "after"),
                        nodata: int = 255) -> None:
    """Three panels, before / after / change, into a PNG at ``path`` (atomically). The change panel uses
    :func:`pipeline.colours.change_colours` (loss red, gain green, no change light grey); nodata is hatched."""
    from matplotlib.patches import Patch

    colours = change_colours(change_names)
    present = [c for c in range(1, len(change_names)) if np.any(change == c)]
    nodata_mask = change == nodata
    fig = _figure(figsize=(15, 5.4), dpi=100)
    axes = fig.subplots(1, 3)
    for ax, img, title in zip(axes[:2], (before_rgb, after_rgb), titles, strict=True):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(title)
    image = paint_classes(np.where(nodata_mask, 0, change), ~nodata_mask, colours)
    axes[2].imshow(image, interpolation="nearest")
    if nodata_mask.any():  # hatched where either date has no data (the image is transparent there)
        axes[2].contourf(nodata_mask.astype(np.uint8), levels=[0.5, 1.5], colors="none", hatches=["////"])
    axes[2].set_title("change")
    handles = [Patch(facecolor=NO_CHANGE, edgecolor="#999999", label=change_names[0])] if change_names else []
    handles += [Patch(color=colours[c], label=change_names[c]) for c in present[:12]]
    if nodata_mask.any():
        handles.append(Patch(facecolor="none", edgecolor="#555555", hatch="////", label="no data"))
    axes[2].legend(handles=handles, loc="lower right", fontsize=8, framealpha=0.8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})


def save_area_plot(path: str | os.PathLike[str], dates: Sequence[dt.date], areas: Mapping[str, Sequence[float]],
                   *, title: str = "area per class", unit: str = "km²", scale: float = 1e-6,
                   colours: Sequence[str] = ()) -> None:
    """Area over time, one line per class, into a PNG at ``path`` (atomically), each class in its colour
    (``colours``, the model's class colours, one per class in ``areas`` order; else
    :func:`pipeline.colours.class_colours`' fallback)."""
    fig = _figure(figsize=(9, 4.8), dpi=100)
    ax = fig.subplots()
    line_colours = class_colours(list(areas), colours)
    for (name, values), colour in zip(areas.items(), line_colours, strict=True):
        # matplotlib plots dates through its units registry; its stubs accept only numbers and arrays
        ax.plot(list(dates), [v * scale for v in values], marker="o", label=name,  # type: ignore[arg-type]
                color=colour, markeredgecolor="#333333", markeredgewidth=0.5)
    ax.set_ylabel(f"area ({unit})")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})


def _preview_grid(grid: GridSpec, max_size: int = 800) -> GridSpec:
    from affine import Affine

    h, w = preview_shape(grid, max_size)
    return GridSpec(grid.crs, grid.transform @ Affine.scale(grid.width / w, grid.height / h), h, w)


def _rgb_indexes(path: str | os.PathLike[str], bands: str | None) -> list[int]:
    from pipeline.inference.read import open_scene, parse_band_map

    meta = open_scene(os.fspath(path))
    band_map = parse_band_map(bands, meta).indexes
    if all(b in band_map for b in ("red", "green", "blue")):
        return [band_map["red"], band_map["green"], band_map["blue"]]
    return [min(i, meta.count) for i in (1, 2, 3)]


def raster_class_colours(path: str | os.PathLike[str]) -> tuple[str, ...]:
    """A class raster's colours: its colour table where it has one (ours are written from the model's
    class colours), else :func:`pipeline.colours.layer_colours` of its class names."""
    from pipeline.colours import layer_colours
    from pipeline.products import class_names_from_tags

    with rasterio.open(path) as src:
        names = [n for n in class_names_from_tags(src.tags()) if n]
        try:
            table = src.colormap(1)
        except ValueError:  # no colour table
            table = {}
    if table and names:
        return tuple("#{:02x}{:02x}{:02x}".format(*table[i][:3]) for i in range(len(names)))
    return layer_colours(names) if names else ()


def write_pair_quicklook(path: str | os.PathLike[str], before: str | os.PathLike[str],
                         after: str | os.PathLike[str], change_path: str | os.PathLike[str], grid: GridSpec,
                         names: Sequence[str], dates: Sequence[dt.date | None], bands: str | None) -> None:
    """Before, after and change side by side at preview size: scenes in true colour (``bands`` names their
    red, green and blue), class rasters as they are."""
    from pipeline.change.align import read_aligned
    from pipeline.change.transitions import CHANGE_NODATA
    from pipeline.products import is_classes_path

    preview = _preview_grid(grid)
    images = []
    for scene in (before, after):
        if is_classes_path(scene):  # a class raster is drawn in its class colours, never stretched to grey
            data, valid = read_aligned(scene, preview, preview.bounds, [1])
            images.append(paint_classes(data[0], valid, raster_class_colours(scene)))
            continue
        data, valid = read_aligned(scene, preview, preview.bounds, _rgb_indexes(scene, bands), dtype="float32")
        images.append(stretch_rgb(data, valid))
    change, valid = read_aligned(change_path, preview, preview.bounds, [1])
    titles = [f"{label} {d.isoformat()}" if d else label
              for label, d in zip(("before", "after"), dates, strict=True)]
    save_pair_quicklook(path, images[0], images[1], np.where(valid, change[0], CHANGE_NODATA), names,
                        titles=titles)
