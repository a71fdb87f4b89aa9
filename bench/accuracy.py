"""Honest accuracy: every built-in model on every labelled set of ../shared/data where it applies, beside the
trivial baseline, the per-event oracle threshold and the threshold tuned on the other event; writes
docs/accuracy.md.

    .venv/bin/python -m bench.accuracy            # regenerates docs/accuracy.md (about a minute on 2 cores)
    .venv/bin/python -m bench.accuracy --print    # only prints the table

Scores are IoU and F1 of the target class, pooled over every chip of an event (one confusion matrix per
event). Default = the model exactly as a user gets it with no option, through the same calls the held-out
events are scored with: ``compare_arrays(before, after, "water-swir", bands={"swir16": 0, "nir": 1,
"red": 2})`` and ``compare_arrays(before, after, "flood-sar", bands={"vv": 0})``, ``other->water`` = flood.
Fixed = the model's documented fixed threshold. Oracle = the best single threshold for the event (read on
its labels, so an upper bound, not a method). Cross = the other event's oracle threshold applied here.
Trivial = everything flooded (the better of all/nothing for IoU of the target class).
"""

from __future__ import annotations

import argparse
import re
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning

from pipeline.change.compare import combine_flood, compare_arrays
from pipeline.change.transitions import no_change_level, ratio_histogram
from pipeline.models.contract import ModelRef
from pipeline.models.loader import load_model
from pipeline.models.sar import is_backscatter
from pipeline.models.spectral import SpectralIndexModel

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
DOC = REPO / "docs" / "accuracy.md"
EVENTS = ("albania", "france")
S2_BANDS = {"swir16": 0, "nir": 1, "red": 2}
S1_BANDS = {"vv": 0}
RONDONIA = DATA / "labeled" / "deforestation_rondonia_s2_20LLQ"


@dataclass(frozen=True, slots=True)
class Score:
    tp: int
    fp: int
    fn: int

    @property
    def iou(self) -> float:
        d = self.tp + self.fp + self.fn
        return 1.0 if d == 0 else self.tp / d

    @property
    def f1(self) -> float:
        d = 2 * self.tp + self.fp + self.fn
        return 1.0 if d == 0 else 2 * self.tp / d


def score(pred: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None) -> Score:
    if valid is not None:
        pred, truth = pred[valid], truth[valid]
    return Score(int(np.count_nonzero(pred & truth)), int(np.count_nonzero(pred & ~truth)),
                 int(np.count_nonzero(~pred & truth)))


def _png(path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            return src.read()


def chips(event: str, sensor: str) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(before, after, flood mask) of every OMBRIA chip of an event, in chip order."""
    folder = DATA / "change" / f"flood_ombria_{event}"
    for mask in sorted(folder.glob("MASK/gt_*.png"), key=lambda p: int(re.findall(r"\d+", p.name)[0])):
        n = re.findall(r"\d+", mask.name)[0]
        before = _png(folder / sensor / "BEFORE" / f"imbefore_{n}.png")
        yield before, _png(folder / sensor / "AFTER" / f"imafter_{n}.png"), _png(mask)[0] > 127


def flood(before: np.ndarray, after: np.ndarray, model: str | ModelRef, bands: dict[str, int]) -> np.ndarray:
    ds = compare_arrays(before, after, model, bands=bands)
    return (ds.change == ds.attrs["class_names"].index("other->water")).to_numpy()


@dataclass
class EventData:
    truth: list[np.ndarray]
    index_before: list[np.ndarray]
    index_after: list[np.ndarray]
    valid: list[np.ndarray]
    default: list[np.ndarray]
    fixed: list[np.ndarray]
    darkening: bool = False  # flood-sar: water on both dates that got darker is new water too (its change rule)


def load_event(event: str, sensor: str, name: str, bands: dict[str, int], fixed: float) -> EventData:
    model = load_model(ModelRef.of(name))
    assert isinstance(model, SpectralIndexModel)
    out = EventData([], [], [], [], [], [], is_backscatter(model))
    for before, after, truth in chips(event, sensor):
        pick = [bands[b] for b in model.info.bands]
        out.truth.append(truth)
        out.index_before.append(model.index_values(before[pick][None].astype(np.float32))[0])
        out.index_after.append(model.index_values(after[pick][None].astype(np.float32))[0])
        out.valid.append(np.asarray(before.any(axis=0) & after.any(axis=0), dtype=bool))
        out.default.append(flood(before, after, name, bands))
        out.fixed.append(flood(before, after, ModelRef.of(name, threshold=fixed), bands))
    return out


def pooled(preds: list[np.ndarray], truths: list[np.ndarray]) -> Score:
    return score(np.stack(preds), np.stack(truths))


def at_threshold(data: EventData, t: float, above: bool) -> Score:
    def water(index: np.ndarray) -> np.ndarray:
        return index > t if above else index < t

    preds = []
    for b, a, v in zip(data.index_before, data.index_after, data.valid, strict=True):
        wb, wa = water(b), water(a)
        new = wa & ~wb
        if data.darkening:  # the model's own change rule, at this threshold
            level = no_change_level(ratio_histogram(b, a, ~wa & ~wb & v))
            new |= wa & wb & (a - b < level)
        preds.append(new & v)
    return pooled(preds, data.truth)


def oracle(data: EventData, grid: np.ndarray, above: bool) -> tuple[float, Score]:
    scores = [(at_threshold(data, float(t), above), float(t)) for t in grid]
    best, t = max(scores, key=lambda s: s[0].iou)
    return t, best


def _row(rows: list[list[str]], *cells: object) -> None:
    rows.append([c if isinstance(c, str) else f"{c:.3f}" for c in cells])


def flood_rows(rows: list[list[str]], label: str, sensor: str, name: str, bands: dict[str, int], fixed: float,
               grid: np.ndarray, above: bool, unit: str) -> dict[str, EventData]:
    events = {e: load_event(e, sensor, name, bands, fixed) for e in EVENTS}
    oracles = {e: oracle(d, grid, above) for e, d in events.items()}
    for e, d in events.items():
        other = next(o for o in EVENTS if o != e)
        default, fixed_s = pooled(d.default, d.truth), pooled(d.fixed, d.truth)
        trivial = pooled([np.ones_like(t) for t in d.truth], d.truth)
        t_o, s_o = oracles[e]
        t_x = oracles[other][0]
        s_x = at_threshold(d, t_x, above)
        _row(rows, f"{label} | OMBRIA {e.capitalize()} ({len(d.truth)} chips)", default.iou, default.f1,
             fixed_s.iou, trivial.iou, f"{s_o.iou:.3f} (at {t_o:g}{unit})",
             f"{s_x.iou:.3f} (at {t_x:g}{unit}, from {other.capitalize()})")
    return events


def combined_rows(rows: list[list[str]], optical: dict[str, EventData], radar: dict[str, EventData]) -> None:
    for e in EVENTS:
        o, r = optical[e], radar[e]
        preds = [combine_flood(po, pr, vo, vr) == 1 for po, pr, vo, vr in
                 zip(o.default, r.default, o.valid, r.valid, strict=True)]
        s = pooled(preds, o.truth)
        trivial = pooled([np.ones_like(t) for t in o.truth], o.truth)
        _row(rows, f"flood change, S2 `water-swir` OR S1 `flood-sar` (`combine_flood`) | OMBRIA {e.capitalize()}",
             s.iou, s.f1, "-", trivial.iou, "-", "-")


def rondonia_rows(rows: list[list[str]]) -> None:
    """``bare`` (NDMI) on the Rondonia S2 scene against INPE's class map (argmax of its probabilities)."""
    def read(band: str) -> np.ndarray:
        with rasterio.open(RONDONIA / f"SENTINEL-2_MSI_20LLQ_{band}_2021-09-22.tif") as src:
            return src.read(1).astype(np.float32)

    nir, swir = read("B8A"), read("B11")
    with rasterio.open(next(RONDONIA.glob("*probs_v0.tif"))) as src:
        probs = src.read()
    classes = probs.argmax(axis=0)  # Water, ClearCut_Burn, ClearCut_Soil, ClearCut_Veg, Forest, Wetland
    valid = np.isin(classes, [1, 2, 3, 4]) & (nir > 0) & (swir > 0)
    truth = np.isin(classes, [1, 2, 3])
    bands = np.stack([nir, swir])[None]
    out = {}
    for label, ref in (("default", ModelRef.of("bare")), ("auto", ModelRef.of("bare", threshold="auto"))):
        model = load_model(ref)
        out[label] = score(model.predict(np.where(valid, bands, 0))[0].argmax(axis=0) == 1, truth, valid)
    bare = load_model(ModelRef.of("bare"))
    assert isinstance(bare, SpectralIndexModel)
    index = bare.index_values(bands)[0]
    grid = np.round(np.arange(-0.2, 0.61, 0.025), 3)
    best = max(((score(index < t, truth, valid), float(t)) for t in grid), key=lambda s: s[0].iou)
    trivial = score(np.ones_like(truth), truth, valid)
    _row(rows, "bare (NDMI) clear-cut vs forest | Rondonia S2 vs INPE map (1 scene)", out["default"].iou,
         out["default"].f1, out["default"].iou, trivial.iou, f"{best[0].iou:.3f} (at {best[1]:g})",
         f"auto: {out['auto'].iou:.3f}")


def table() -> tuple[str, float]:
    started = time.perf_counter()
    rows: list[list[str]] = []
    optical = flood_rows(rows, "flood change, S2 `water-swir`", "S2", "water-swir", S2_BANDS, 0.0,
                         np.round(np.arange(-0.5, 0.51, 0.025), 3), True, "")
    radar = flood_rows(rows, "flood change, S1 `flood-sar` (VV)", "S1", "flood-sar", S1_BANDS, -18.0,
                       np.arange(-25.0, -7.9, 0.5), False, " dB")
    combined_rows(rows, optical, radar)
    rondonia_rows(rows)
    header = ("| model | data | default IoU | default F1 | fixed threshold IoU | trivial IoU | oracle IoU "
              "(per event) | cross-event IoU |\n|---|---|---|---|---|---|---|---|\n")
    body = "".join("| " + " | ".join(r) + " |\n" for r in rows)
    return header + body, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--print", action="store_true", help="print the table, do not write docs/accuracy.md")
    args = parser.parse_args(argv)
    if not (DATA / "change" / "flood_ombria_france").exists():
        print(f"no labelled data under {DATA}: nothing to score")
        return 1
    text, seconds = table()
    print(text)
    print(f"({seconds:.0f} s)")
    if not args.print:
        doc = DOC.read_text()
        start, end = "<!-- accuracy table: bench/accuracy.py -->", "<!-- end of accuracy table -->"
        head, _, rest = doc.partition(start)
        _, _, tail = rest.partition(end)
        DOC.write_text(f"{head}{start}\n{text}{end}{tail}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
