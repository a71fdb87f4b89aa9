"""The project's one colour language: every picture, colour table and layer style takes its colours here.

Class colours
    A model's ``ModelInfo.class_colors`` (``#rrggbb``, one per class). A model without them, or a class raster
    made elsewhere, gets the fallback: a well-known class name takes the built-in models' colour for it
    (:data:`NAMED_CLASS_COLOURS`: other/background beige, vegetation/forest/canopy green, water blue, burned
    red, bare brown, ...), every other class the next unused colour of :data:`FALLBACK_PALETTE`.

Change palette (transition codes of a change raster, see :func:`change_colours`)
    * no change: light grey :data:`NO_CHANGE`;
    * loss: red. A transition ``a->b`` is a *loss* when ``a`` is the **reference class** and ``b`` is not;
    * gain: green. ``a->b`` is a *gain* when ``b`` is the reference class;
    * any other transition (only with three classes or more): blue, purple, orange, ... from
      :data:`OTHER_CHANGE`;
    * nodata: transparent (:data:`NODATA_RGBA`; matplotlib draws it hatched over the grey of no change).

    The reference class (:func:`reference_class`) is the cover whose loss an analyst watches: the first class,
    in the model's order, whose name is a natural cover (:data:`COVER_NAMES`: vegetation, forest, canopy,
    water, unburned, ...); failing that the first class that is not background (:data:`BACKGROUND_NAMES`:
    other, background, ...); failing that class 1. So for ``other, vegetation`` vegetation->other is loss
    (red) and other->vegetation gain (green); for ``unburned, burned`` unburned->burned is loss; for
    ``canopy, bare`` canopy->bare is loss; for ``water, cleared, forest`` water is the reference.
    With more than one loss (or gain) transition the first is the pure red (green) and the others darker
    and lighter shades of it, in code order.

    Index-difference classes (``dndvi``, ``dnbr``) follow the same words: a name with "loss" or "severity" is
    loss (severities ramp from orange to dark red), a name with "gain" or "regrowth" is gain.

Dates (a timeline's events: class names are first-detection dates)
    :func:`date_colours`: a yellow-orange-red ramp, earliest yellow, latest dark red.

Nodata
    Transparent everywhere (colour tables, PNGs, layer styles have no nodata features).

Colours are ``#rrggbb`` strings; :func:`rgba` gives GDAL colour-table tuples. Pure functions, no I/O.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence

__all__ = [
    "NO_CHANGE",
    "LOSS",
    "GAIN",
    "NODATA_RGBA",
    "NAMED_CLASS_COLOURS",
    "FALLBACK_PALETTE",
    "OTHER_CHANGE",
    "COVER_NAMES",
    "BACKGROUND_NAMES",
    "rgba",
    "class_colours",
    "reference_class",
    "change_colours",
    "change_kind",
    "date_colours",
    "layer_colours",
    "colour_table",
]

NO_CHANGE = "#ebebeb"
LOSS = "#d7191c"
GAIN = "#1a9641"
NODATA_RGBA = (0, 0, 0, 0)

LOSS_SHADES = (LOSS, "#8e0c12", "#f4726c", "#b2182b", "#fbb4ae", "#67001f")
GAIN_SHADES = (GAIN, "#0b5d28", "#7fcf8a", "#006837", "#c7e9c0", "#00441b")
OTHER_CHANGE = ("#2c7bb6", "#7b3294", "#fdae61", "#abd9e9", "#c2a5cf", "#8c510a", "#5e3c99", "#01665e",
                "#e66101", "#bababa")
SEVERITY_RAMP = ("#fdae61", "#f46d43", "#d7191c", "#a50026", "#67001f")
DATE_RAMP = ("#ffffb2", "#fecc5c", "#fd8d3c", "#f03b20", "#bd0026")

NAMED_CLASS_COLOURS: Mapping[str, str] = {
    "other": "#d9d0b4", "background": "#d9d0b4", "non-vegetation": "#d9d0b4",
    "vegetation": "#1a9641", "forest": "#1a9641", "canopy": "#1a9641", "tree": "#1a9641", "trees": "#1a9641",
    "unburned": "#1a9641", "grass": "#a6d96a", "grassland": "#a6d96a", "crop": "#fee08b", "cropland": "#fee08b",
    "water": "#2b83ba", "wetland": "#66c2a5", "burned": "#d7191c", "bare": "#a6611a", "cleared": "#a6611a",
    "built": "#636363", "building": "#636363", "urban": "#636363", "cloud": "#f7f7f7", "snow": "#f7f7f7",
}
FALLBACK_PALETTE = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666",
                    "#1f78b4", "#b2df8a", "#fb9a99", "#cab2d6")

COVER_NAMES = frozenset({"vegetation", "forest", "canopy", "tree", "trees", "unburned", "water", "wetland",
                         "grass", "grassland", "mangrove", "cropland", "crop"})
BACKGROUND_NAMES = frozenset({"other", "background", "none", "unknown", "nodata", "no data", "unlabeled",
                              "unlabelled", "void", "clutter", "non-vegetation"})


def rgba(colour: str, alpha: int = 255) -> tuple[int, int, int, int]:
    """``#rrggbb`` to an ``(r, g, b, a)`` tuple of 0..255 (GDAL colour tables, PIL)."""
    c = colour.strip().lstrip("#")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16), alpha


def _hex(r: float, g: float, b: float) -> str:
    return f"#{round(r):02x}{round(g):02x}{round(b):02x}"


def class_colours(names: Sequence[str], colors: Sequence[str] = ()) -> tuple[str, ...]:
    """One colour per class: the model's ``colors`` when it gives one per class, else the fallback (the
    well-known name's colour, else the next unused colour of :data:`FALLBACK_PALETTE`)."""
    if colors and len(colors) == len(names):
        return tuple("#" + c.strip().lstrip("#").lower() for c in colors)
    out: list[str] = []
    spare = iter([c for c in FALLBACK_PALETTE if c not in NAMED_CLASS_COLOURS.values()] * (len(names) + 1))
    for name in names:
        known = NAMED_CLASS_COLOURS.get(name.strip().lower())
        out.append(known if known and known not in out else next(spare))
    return tuple(out)


def reference_class(names: Sequence[str]) -> int:
    """The class whose loss is drawn red (see the module docstring): the first natural cover, else the
    first non-background class, else class 1."""
    lowered = [n.strip().lower() for n in names]
    for i, n in enumerate(lowered):
        if n in COVER_NAMES:
            return i
    for i, n in enumerate(lowered):
        if n not in BACKGROUND_NAMES:
            return i
    return min(1, len(names) - 1)


def change_kind(name: str, reference: str | None) -> str:
    """``"none"``, ``"loss"``, ``"gain"``, ``"severity"`` or ``"other"`` for one change class name."""
    lowered = name.strip().lower()
    if lowered == "no change":
        return "none"
    if "->" in name and reference is not None:
        before, after = (s.strip() for s in name.split("->", 1))
        if before == reference and after != reference:
            return "loss"
        if after == reference and before != reference:
            return "gain"
        return "other"
    if "severity" in lowered:
        return "severity"
    if "loss" in lowered:
        return "loss"
    if "gain" in lowered or "regrowth" in lowered:
        return "gain"
    return "other"


def change_colours(names: Sequence[str]) -> tuple[str, ...]:
    """One colour per change code (``names`` as in the change raster's class tag, code 0 "no change"):
    loss red, gain green, other changes from :data:`OTHER_CHANGE`, no change light grey."""
    classes: list[str] = []
    for name in names:
        if "->" in name:
            for part in name.split("->", 1):
                if part.strip() not in classes:
                    classes.append(part.strip())
    reference = classes[reference_class(classes)] if classes else None
    kinds = [change_kind(n, reference) for n in names]
    n_severity = kinds.count("severity")
    counters = {"loss": 0, "gain": 0, "other": 0, "severity": 0}
    out = []
    for kind in kinds:
        if kind == "none":
            out.append(NO_CHANGE)
            continue
        i = counters[kind]
        counters[kind] += 1
        if kind == "loss":
            out.append(LOSS_SHADES[i % len(LOSS_SHADES)])
        elif kind == "gain":
            out.append(GAIN_SHADES[i % len(GAIN_SHADES)])
        elif kind == "severity":
            out.append(_ramp(SEVERITY_RAMP, i / max(n_severity - 1, 1)))
        else:
            out.append(OTHER_CHANGE[i % len(OTHER_CHANGE)])
    return tuple(out)


def _ramp(stops: Sequence[str], t: float) -> str:
    """The colour at ``t`` in 0..1 along ``stops`` (linear in RGB)."""
    t = min(max(t, 0.0), 1.0) * (len(stops) - 1)
    i = min(int(t), len(stops) - 2)
    a, b = rgba(stops[i]), rgba(stops[i + 1])
    f = t - i
    return _hex(*(a[k] + (b[k] - a[k]) * f for k in range(3)))


def date_colours(n: int) -> tuple[str, ...]:
    """``n`` dates in order: earliest yellow, latest dark red (:data:`DATE_RAMP`)."""
    return tuple(_ramp(DATE_RAMP, i / max(n - 1, 1)) for i in range(n))


def _is_date(name: str) -> bool:
    try:
        dt.date.fromisoformat(name.strip())
    except ValueError:
        return False
    return True


def layer_colours(names: Sequence[str], colors: Sequence[str] = ()) -> tuple[str, ...]:
    """The colours of a raster's classes whatever it holds, from its class names: change codes (a
    "no change" or an ``a->b`` name) the change palette, first-detection dates (every name but a leading
    "no alert" an ISO date) the date ramp (the leading name no change grey), anything else class colours."""
    if not names:
        return ()
    if names[0] == "no change" or any("->" in n for n in names):
        return change_colours(names)
    dated = [n for n in names if n != "no alert"]
    if dated and all(_is_date(n) for n in dated):
        ramp = iter(date_colours(len(dated)))
        return tuple(NO_CHANGE if n == "no alert" else next(ramp) for n in names)
    return class_colours(names, colors)


def colour_table(colours: Sequence[str], nodata: int | None = 255) -> dict[int, tuple[int, int, int, int]]:
    """A GDAL colour table: value ``i`` gets ``colours[i]``, ``nodata`` is transparent."""
    table = {i: rgba(c) for i, c in enumerate(colours)}
    if nodata is not None:
        table[nodata] = NODATA_RGBA
    return table
