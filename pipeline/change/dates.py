"""Acquisition dates of scenes: from STAC metadata, TIFF tags, or the file name.

Looked up in this order, the first that gives a date wins:

1. a STAC item JSON beside the scene (``<name>.json``, ``<stem>.json`` or ``<stem>.stac.json``):
   ``properties.datetime``, else ``properties.start_datetime``;
2. the raster's tags: ``ACQUISITIONDATE``, ``ACQUISITION_DATE``, ``DATE_ACQUIRED``, ``DATETIME``,
   ``datetime`` or ``TIFFTAG_DATETIME`` (``YYYY:MM:DD HH:MM:SS``);
3. the file name, with the user's ``pattern`` (a regular expression with named groups ``year`` and
   optionally ``month`` and ``day``, e.g. ``(?P<year>\\d{4})`` for ``1985.tif``); without one, an
   8-digit ``YYYYMMDD`` or a ``YYYY-MM-DD`` in the name (NAIP's ``m_4709963_se_14_1_20200831.tif``).

A missing month or day is taken as 1 (``1985.tif`` is 1985-01-01): the dates order a stack, and an
annual composite has no better single day. A user pattern, when given, is tried before the metadata,
because a user who names the pattern knows the files better than their tags.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from pathlib import Path
from typing import Any

from rasterio.errors import RasterioIOError

from pipeline.errors import ConfigError, InvalidSceneError, SceneOpenError
from pipeline.inference.read import check_input_path, open_raster
from pipeline.inference.stac import is_stac_item, load_item, split_fragment
from pipeline.products import Tag

__all__ = ["scene_date", "date_from_name", "date_from_tags", "date_from_stac", "days_since_epoch",
           "compile_date_pattern"]

_EPOCH = dt.date(1970, 1, 1)
_TAG_KEYS = ("ACQUISITIONDATE", "ACQUISITION_DATE", "DATE_ACQUIRED", "DATETIME", "datetime",
             "TIFFTAG_DATETIME", Tag.DATE)
_DEFAULT_PATTERNS = (
    re.compile(r"(?<!\d)(?P<year>(?:19|20)\d{2})(?P<month>0[1-9]|1[0-2])(?P<day>0[1-9]|[12]\d|3[01])(?!\d)"),
    re.compile(r"(?<!\d)(?P<year>(?:19|20)\d{2})-(?P<month>0[1-9]|1[0-2])-(?P<day>0[1-9]|[12]\d|3[01])(?!\d)"),
)


def days_since_epoch(date: dt.date) -> int:
    """Days since 1970-01-01 (the encoding of dates in alert rasters)."""
    return (date - _EPOCH).days


def compile_date_pattern(pattern: str) -> re.Pattern[str]:
    """Compile a user's ``--date-pattern``; it must have a ``year`` group."""
    try:
        compiled = re.compile(pattern)
    except re.error as err:
        raise ConfigError(f"`date_pattern` {pattern!r}: not a regular expression ({err})") from err
    if "year" not in compiled.groupindex:
        raise ConfigError(f"`date_pattern` {pattern!r}: needs a named group year, e.g. (?P<year>\\d{{4}})")
    return compiled


def _parse_iso(text: str) -> dt.date | None:
    text = text.strip()
    for candidate in (text, text.replace("Z", "+00:00")):
        try:
            return dt.datetime.fromisoformat(candidate).date()
        except ValueError:
            pass
    match = re.match(r"^(\d{4})[:\-/](\d{2})[:\-/](\d{2})", text)
    if match:
        try:
            return dt.date(*(int(g) for g in match.groups()))
        except ValueError:
            return None
    return None


def date_from_name(name: str, pattern: str | re.Pattern[str] | None = None) -> dt.date | None:
    """The date in a file name, from ``pattern`` (named groups year[, month[, day]]) or the default ones."""
    patterns = [compile_date_pattern(pattern) if isinstance(pattern, str) else pattern] if pattern else \
        list(_DEFAULT_PATTERNS)
    for compiled in patterns:
        match = compiled.search(name)
        if match is None:
            continue
        groups = match.groupdict()
        try:
            return dt.date(int(groups["year"]), int(groups.get("month") or 1), int(groups.get("day") or 1))
        except (TypeError, ValueError):
            continue
    return None


def date_from_tags(tags: dict[str, str]) -> dt.date | None:
    for key in _TAG_KEYS:
        if key in tags and tags[key]:
            date = _parse_iso(tags[key])
            if date is not None:
                return date
    return None


def date_from_stac(path: Path) -> dt.date | None:
    """The date of the STAC item beside ``path``, if there is one."""
    stem = path.name.rsplit(".", 1)[0]
    for candidate in (path.with_name(path.name + ".json"), path.with_name(stem + ".json"),
                      path.with_name(stem + ".stac.json")):
        if not candidate.is_file():
            continue
        try:
            item = json.loads(candidate.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        props = item.get("properties", {}) if isinstance(item, dict) else {}
        date = _item_date(props)
        if date is not None:
            return date
    return None


def date_of_item(href: str) -> dt.date | None:
    """The ``datetime`` (or ``start_datetime``) of the STAC item a scene is (a local file or a URL)."""
    location, item_id = split_fragment(href)
    try:
        location = check_input_path(location, "STAC item")  # not a FIFO or a device: a regular file or a URL
        props = load_item(location, f"scene {Path(location).name}", item_id).get("properties") or {}
    except SceneOpenError:
        return None  # open_scene says why, when the scene is opened to be read
    return _item_date(props)


def _item_date(props: dict[str, Any]) -> dt.date | None:
    """A STAC item's ``datetime``, else its ``start_datetime``, as a date (None when neither parses)."""
    for key in ("datetime", "start_datetime"):
        if isinstance(props.get(key), str):
            date = _parse_iso(props[key])
            if date is not None:
                return date
    return None


def scene_date(path: str | os.PathLike[str], pattern: str | re.Pattern[str] | None = None) -> dt.date:
    """The acquisition date of the scene at ``path``; an error names the scene and how to give one. A STAC
    item's own datetime comes first."""
    if is_stac_item(os.fspath(path)) and not pattern:
        item_date = date_of_item(os.fspath(path))
        if item_date is not None:
            return item_date
    path = Path(path)
    if pattern:
        date = date_from_name(path.name, pattern)
        if date is not None:
            return date
    date = date_from_stac(path)
    if date is None:
        try:
            with open_raster(path) as src:  # the scene's header, opened as untrusted input
                date = date_from_tags(dict(src.tags()))
        except (RasterioIOError, SceneOpenError):  # open_scene says why, when the scene is opened to be read
            date = None
    if date is None and not pattern:
        date = date_from_name(path.name)
    if date is None:
        where = f"pattern {pattern.pattern if isinstance(pattern, re.Pattern) else pattern!r} does not match " \
            "its name and " if pattern else ""
        raise InvalidSceneError(
            f"scene {path.name}: no acquisition date ({where}no STAC item beside it, no date tag); set "
            "`date_pattern` to a regular expression with a year group, e.g. '(?P<year>\\d{4})'"
        )
    return date
