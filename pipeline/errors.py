"""The one error hierarchy of scenewatch.

Every error a user can cause (a bad file, a bad option, a model that does not fit the scene) is a
:class:`ScenewatchError`, with a one-line message that names the thing and the next step. Subclasses also
inherit the matching builtin, as rasterio's do, so ``except OSError`` still catches a file that cannot be
opened. Anything else that escapes is a bug and propagates as it is.

Messages are the only constructor argument so the errors pickle across Dask worker processes unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = [
    "crosses_processes",
    "ScenewatchError",
    "SceneOpenError",
    "SceneReadError",
    "InvalidSceneError",
    "BandMapError",
    "ConfigError",
    "ModelError",
    "OutputError",
    "DiskFullError",
    "SceneTimeoutError",
]


class ScenewatchError(Exception):
    """Base of every error that scenewatch reports to a user instead of a traceback."""

    exit_code = 1


class SceneOpenError(ScenewatchError, OSError):
    """A scene file cannot be opened: missing, not a raster, or unreadable header."""


class SceneReadError(ScenewatchError, OSError):
    """Pixels of a scene cannot be read: a truncated or corrupt file."""


class InvalidSceneError(ScenewatchError, ValueError):
    """A scene opens but cannot be used as asked: no CRS, too large, unsupported data type."""


class BandMapError(ScenewatchError, ValueError):
    """A band map is malformed or names bands the scene or the model does not have."""


class ConfigError(ScenewatchError, ValueError):
    """An option or a job file is invalid."""

    exit_code = 2


class ModelError(ScenewatchError, ValueError):
    """A model cannot be found, loaded, trusted or applied."""


class SceneTimeoutError(ScenewatchError, TimeoutError):
    """A scene took longer than its time budget (``timeout``) and was stopped."""


class OutputError(ScenewatchError, OSError):
    """An output cannot be written."""


class DiskFullError(OutputError):
    """An output's file system is full: every later output would fail too, so a batch stops (and a rerun
    after freeing space finishes the job)."""

    exit_code = 5


F = TypeVar("F", bound=Callable[..., Any])


def crosses_processes(func: F) -> F:
    """For functions that run as Dask tasks: a :class:`ScenewatchError` leaves them without the errors it
    was raised from or during, so that it reaches the client as itself. Those travel with it (tblib pickles
    ``__cause__`` and ``__context__``), and one from GDAL cannot be unpickled (rasterio's CPLE errors refuse
    their own ``args``): Dask then hands the client a bare ``Exception`` whose message is the error's repr,
    and the user saw a traceback instead of the one-line error."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ScenewatchError as err:
            clean = type(err)(*err.args)
        raise clean  # outside the handler, so it has no __context__ either

    return wrapper  # type: ignore[return-value]
