"""Decorators shared by every ``scenewatch`` command, in a module of their own.

Command modules (``workflows/cli_*.py``) import these from here rather than from :mod:`workflows.cli`: under
``python -m workflows.cli`` (and in the Dask worker processes it spawns) that file runs as ``__main__``, and a
command module importing ``workflows.cli`` would load a second copy of it, which imports the command module
back while it is half-initialised.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from pipeline.errors import ScenewatchError

__all__ = ["report_errors", "tiling_options"]

F = TypeVar("F", bound=Callable[..., Any])


def report_errors(func: F) -> F:
    """Turn a ScenewatchError into one line on stderr and its exit code."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ScenewatchError as err:
            click.echo(f"scenewatch: error: {err}", err=True)
            sys.exit(err.exit_code)

    return wrapper  # type: ignore[return-value]


def tiling_options(func: F) -> F:
    """Options shared by every command that tiles a scene and runs on Dask."""
    options = [
        click.option("--tile-size", type=int, default=None, help="Core tile size in pixels [default: the model's]."),
        click.option("--halo", type=int, default=None, help="Context pixels read around each tile [default: the model's]."),
        click.option("--workers", type=int, default=None, help="Local Dask worker processes [default: one per core]."),
        click.option("--scheduler", default=None, metavar="ADDRESS",
                     help="Run on an existing Dask scheduler, e.g. tcp://10.0.0.5:8786, instead of a local cluster."),
        click.option("--max-pixels", type=int, default=None, help="Refuse scenes with more pixels than this."),
        click.option("--assume-crs", default=None, metavar="CRS", help="CRS for a scene that has none, e.g. EPSG:32618."),
        click.option("--quiet", "-q", is_flag=True, help="No progress bar."),
    ]
    for option in reversed(options):
        func = option(func)
    return func
