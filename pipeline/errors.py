"""The one error hierarchy of scenewatch.

Every error a user can cause (a bad file, a bad option, a model that does not fit the scene) is a
:class:`ScenewatchError`, with a one-line message that names the thing and the next step. Subclasses also
inherit the matching builtin, as rasterio's do, so ``except OSError`` still catches a file that cannot be
opened. Anything else that escapes is a bug and propagates as it is.

Messages are the only constructor argument so the errors pickle across Dask worker processes unchanged.
"""

from __future__ import annotations

__all__ = [
    "ScenewatchError",
    "SceneOpenError",
    "SceneReadError",
    "InvalidSceneError",
    "BandMapError",
    "ConfigError",
    "ModelError",
    "OutputError",
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


class OutputError(ScenewatchError, OSError):
    """An output cannot be written."""
