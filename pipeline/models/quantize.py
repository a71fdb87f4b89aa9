"""Quantizing a bundle: calibrate its int8 variant on the user's scenes, check it, store it in the bundle.

Calibration (:func:`pipeline.models.int8.calibrate`) runs on every other tile; the rest are held out to
measure the variant against fp32. A variant whose probabilities drift more than
:data:`pipeline.models.network.AUTO_DRIFT_LIMIT` from fp32 on them is refused and the bundle left as it was:
a trained network typically drifts 0.003-0.006, a random-initialised one 0.03 (its activations are not what
calibration expects).

This module sits above both :mod:`pipeline.models.bundle` (read, load, replace a bundle) and
:mod:`pipeline.models.int8` (run and make a variant), which do not import it, nor each other both ways.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import ModelError
from pipeline.models import bundle, int8
from pipeline.models.network import AUTO_DRIFT_LIMIT

__all__ = ["MIN_TILE", "MIN_VALID_FRACTION", "Int8Result", "quantize_bundle"]

log = logging.getLogger("scenewatch")

MIN_VALID_FRACTION = 0.5
"""A calibration tile needs at least this share of valid pixels: nodata (read as 0) is not what the network
will be asked about, and would stretch the activation ranges."""
MIN_TILE = 64
"""No calibration tile core is cut smaller than this."""


@dataclass(frozen=True, slots=True)
class Int8Result:
    """What :func:`quantize_bundle` measured and wrote."""

    bundle: Path
    scenes: tuple[str, ...]
    calibration_tiles: int
    held_out_tiles: int
    drift: float  # mean |p_int8 - p_fp32| over the held-out tiles
    worst_drift: float  # the same on the held-out tile where it is largest
    agreement: float  # share of held-out pixels with the same class as fp32
    seconds: float


def _calibration_tiles(scenes: Sequence[str | Path], bands: Any, spec: Any, tiles: int,
                       prepare: Callable[[np.ndarray], Any]) -> list[Any]:
    """``tiles`` prepared tiles spread over the scenes: per scene, evenly spaced through its tile grid,
    skipping tiles with less than :data:`MIN_VALID_FRACTION` valid pixels. A scene with fewer tiles than
    its share is cut into tiles half the bundle's size (the network is convolutional), so that a one-tile
    scene still gives calibration and held-out tiles that are not the same pixels. Not smaller: on the
    Rondonia U-Net, 2 calibration tiles of 256 px held out at 0.006, 16 of 64 px at 0.021."""
    from pipeline.inference.read import open_scene, parse_band_map, read_window, resolve_bands
    from tiles.grid import plan_tiles

    out: list[Any] = []
    per_scene = math.ceil(tiles / len(scenes))
    for scene in scenes:
        meta = open_scene(scene)
        indexes = resolve_bands(meta, parse_band_map(bands, meta), spec.bands)
        size = spec.tile_size
        if size >= 2 * MIN_TILE and len(plan_tiles(meta.height, meta.width, size, spec.halo)) < per_scene:
            size //= 2
        grid = plan_tiles(meta.height, meta.width, size, spec.halo)
        order = [grid.tile(i // grid.cols, i % grid.cols) for i in _spread(len(grid))]
        taken = 0
        for tile in order:
            if taken == per_scene or len(out) == tiles:
                break
            data, valid = read_window(meta, tile.read_window, indexes)
            if valid.mean() < MIN_VALID_FRACTION:
                continue
            out.append(prepare(data[None]))
            taken += 1
        if taken == 0:
            raise ModelError(f"scene {meta.name}: no tile with at least {MIN_VALID_FRACTION:.0%} valid pixels "
                             f"to calibrate on")
    return out


def _spread(n: int) -> list[int]:
    """0..n-1 in an order that spreads over the range first (0, n/2, n/4, 3n/4, ...): the first k are
    evenly spaced for every k, so tiles come from the whole scene whatever the budget."""
    order: list[int] = []
    seen: set[int] = set()
    step = n
    while len(order) < n:
        for i in range(0, n, step):
            if i not in seen:
                seen.add(i)
                order.append(i)
        step = max(step // 2, 1)
    return order


def quantize_bundle(path: str | Path, scenes: Sequence[str | Path], *, bands: Any = None, tiles: int = 32,
                    max_drift: float | None = None) -> Int8Result:
    """Calibrate an int8 variant of the bundle at ``path`` on ``tiles`` tiles of ``scenes`` (its bands
    picked with ``bands``, as ``--bands``) and write it into the bundle (atomically).

    Every other tile is held out of calibration and used to measure the drift against fp32; a variant
    drifting more than ``max_drift`` (default :data:`pipeline.models.network.AUTO_DRIFT_LIMIT`) is refused and the
    bundle is left as it was.
    """
    started = time.perf_counter()
    folder = bundle._bundle_dir(path)
    where = f"bundle {folder.name}"
    ov = int8.require_openvino(where)
    try:
        import nncf  # noqa: F401 - only checks that NNCF is installed, before any slow work
    except ImportError as err:
        raise ModelError(f"{where}: calibrating int8 needs NNCF, which is not installed; install it with "
                         f"pip install 'scenewatch[int8]'") from err
    if not scenes:
        raise ModelError(f"{where}: give at least one scene to calibrate on")
    if tiles < 2:
        raise ModelError(f"{where}: calibrate on at least 2 tiles (one is held out to measure the drift)")
    limit = AUTO_DRIFT_LIMIT if max_drift is None else max_drift
    spec = bundle.read_spec(folder)
    model = bundle.load_bundle(folder, precision="fp32", device="cpu")
    prepared = _calibration_tiles(scenes, bands, spec, tiles, model.prepare)
    calibration, held_out = prepared[0::2], prepared[1::2] or prepared[:1]
    log.info("%s: calibrating int8 on %d tile(s)", where, len(calibration))
    quantized = int8.calibrate(model, calibration)
    forward = int8.OpenVinoForward(quantized)
    drifts, agree = [], []
    try:
        for x in held_out:
            reference = model.run(x, "fp32")
            reduced = model.run(x, "int8", forward)
            drifts.append(float((reduced - reference).abs().mean()))
            agree.append(float((reduced.argmax(1) == reference.argmax(1)).float().mean()))
    except int8.Int8UnsupportedError as err:
        raise int8.Int8UnsupportedError(f"{where}: {err}; not written") from err
    drift, worst, agreement = float(np.mean(drifts)), float(np.max(drifts)), float(np.mean(agree))
    if drift > limit:
        raise ModelError(f"{where}: int8 drifts {drift:.4f} from fp32 on {len(held_out)} held-out tile(s), over "
                         f"{limit:.3f}; not written. A trained network usually stays well within it (a "
                         f"random-initialised one does not); calibrating on more `tiles` may help")
    names = [Path(s).name for s in scenes]
    _write_variant(folder, quantized, spec, {
        "drift": round(drift, 6), "worst_drift": round(worst, 6), "agreement": round(agreement, 6),
        "scenes": names, "calibration_tiles": len(calibration), "held_out_tiles": len(held_out),
        "openvino": ov.__version__})
    return Int8Result(folder, tuple(names), len(calibration), len(held_out), drift, worst, agreement,
                      time.perf_counter() - started)


def _write_variant(folder: Path, quantized: Any, spec: Any, measured: dict[str, Any]) -> None:
    """Copy the bundle, add the IR files and the ``scenewatch:int8`` key, and swap the copy in."""
    import openvino as ov

    tmp = folder.with_name(f".{folder.name}.sw-tmp-{uuid.uuid4().hex[:12]}")
    try:
        shutil.copytree(folder, tmp, ignore=shutil.ignore_patterns(int8.INT8_MODEL, int8.INT8_WEIGHTS))
        ov.save_model(quantized, str(tmp / int8.INT8_MODEL), compress_to_fp16=False)
        doc = json.loads((tmp / bundle.SPEC_FILE).read_text(encoding="utf-8"))
        doc["scenewatch:int8"] = {
            "model": int8.INT8_MODEL, "model_sha256": int8.sha256_hex((tmp / int8.INT8_MODEL).read_bytes()),
            "weights": int8.INT8_WEIGHTS, "weights_sha256": int8.sha256_hex((tmp / int8.INT8_WEIGHTS).read_bytes()),
            "source_sha256": spec.sha256, **measured}
        bundle.parse_spec(doc, f"bundle {folder.name}: {bundle.SPEC_FILE}")  # never write what we would refuse
        (tmp / bundle.SPEC_FILE).write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        bundle._replace_dir(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
