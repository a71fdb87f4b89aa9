"""The ``scenewatch`` command group: logging set-up and the registration of every command.

Each command family lives in its own module (:mod:`~workflows.cli.predict`, :mod:`~workflows.cli.vectorize`,
:mod:`~workflows.cli.change`, :mod:`~workflows.cli.models`, :mod:`~workflows.cli.train`,
:mod:`~workflows.cli.batch`) and imports only :mod:`workflows.cli.options`; this module imports them, never
the reverse.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
from typing import Any, NoReturn

import click

from workflows.cli.batch import run, status
from workflows.cli.change import change, timeline
from workflows.cli.models import models
from workflows.cli.options import cli_message
from workflows.cli.predict import predict
from workflows.cli.train import evaluate, train
from workflows.cli.vectorize import vectorize

__all__ = ["configure_logging", "main"]


class _Program(click.Group):
    """The group as a program: called without arguments (the ``scenewatch`` script, ``python -m
    workflows.cli``), it reads them from ``sys.argv`` and ends the process without the interpreter's
    teardown (:func:`_leave`). Called with arguments, or through ``.main()`` (click's test runner), it
    raises ``SystemExit`` as any click command does."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if args or "args" in kwargs or not kwargs.get("standalone_mode", True):
            return self.main(*args, **kwargs)
        try:
            self.main(**kwargs)
        except SystemExit as done:
            _leave(done)
        raise AssertionError("click's standalone mode ends with SystemExit")  # pragma: no cover


def _leave(done: SystemExit) -> NoReturn:
    """End the process as ``done`` would, less the interpreter's teardown of every module and object, which
    costs a process that ran a command 0.25-0.3 s of CPU at its end (more after ``predict``, with Dask,
    GDAL and OpenVINO loaded), when every file is already written and closed: the ``atexit`` functions run
    (logging's flush among them), then the standard streams are flushed and the process exits with the
    code ``sys.exit`` gives. First, as the interpreter's own exit does, every thread that is not a daemon
    is joined (``threading._shutdown``: idle pool threads, Dask's offload thread among them, are told to
    end; one still working is waited for); a Python without it exits the ordinary way."""
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is None:  # pragma: no cover - CPython has it
        raise done
    shutdown()
    code = done.code
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more to say
            code = code or 120  # what Python exits with when it cannot flush stdout at exit
    os._exit(code or 0)


@click.group(cls=_Program, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="scenewatch")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug), GDAL's warnings included.")
@click.option("--debug", is_flag=True, help="Show the traceback of an unexpected error (a bug) instead of one line.")
def main(verbose: int, debug: bool) -> None:
    """scenewatch: segment large satellite and aerial scenes into seamless GIS layers.

    \b
    Example:
      scenewatch predict examples/data/m_4709963_se_14_1_20200831.tif --model vegetation --bands naip --out out/
    """
    configure_logging(verbose)


class _FlagFormatter(logging.Formatter):
    """Log lines as errors are shown: a parameter named in backticks becomes the running command's flag."""

    def format(self, record: logging.LogRecord) -> str:
        return cli_message(super().format(record))


class _BarSafeHandler(logging.StreamHandler):
    """Log lines written through tqdm, so that a line logged while a progress bar is drawn appears above the
    bar instead of breaking it in two (tqdm.write clears the bar, prints, and redraws it)."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 - logging must never fail the command
            self.handleError(record)


def configure_logging(verbose: int) -> None:
    """scenewatch's own messages at INFO with -v, DEBUG with -vv; Dask's chatter (cluster start and stop,
    closed comms at shutdown) only with -vv."""
    log = logging.getLogger("scenewatch")
    if not log.handlers:
        handler = _BarSafeHandler()
        handler.setFormatter(_FlagFormatter("scenewatch: %(message)s"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(logging.WARNING - 10 * min(verbose, 2))
    dask_level = logging.DEBUG if verbose >= 2 else logging.CRITICAL
    import distributed  # noqa: F401  - its logging config must exist before it is overridden

    for name in [n for n in logging.root.manager.loggerDict if n.split(".")[0] in ("distributed", "bokeh", "tornado")]:
        logging.getLogger(name).setLevel(dask_level)
    # GDAL's warnings (through rasterio) and Python's warnings go to this log, shown with -v: on a terminal
    # they came before, and instead of, the one-line error, and repeated once per file opened.
    logging.captureWarnings(True)
    for name in ("rasterio", "py.warnings"):
        other = logging.getLogger(name)
        if ours := next(iter(log.handlers), None):
            other.handlers = [ours]
        other.propagate = False
        other.setLevel(logging.WARNING if verbose else logging.ERROR)


for _command in (predict, vectorize, change, timeline, models, train, evaluate, run, status):
    main.add_command(_command)
