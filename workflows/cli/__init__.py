"""The ``scenewatch`` command line: a thin click layer over :mod:`workflows`.

Strings become values here, once: flags are parsed with one grammar each (:mod:`workflows.cli.options`)
and turned into the engine's typed configs (:mod:`pipeline.config`), which the commands hand to the engine.
Every command has ``--help`` with an example. A user-facing error prints one line,
``scenewatch: error: <what and what to do>``, naming the flags of the command that ran, and exits non-zero
(2 for a bad option value); a bug still shows its traceback.

``main`` here is the click group (the entry point ``workflows.cli:main``); it hides the submodule of the same
name, which ``sys.modules["workflows.cli.main"]`` still reaches.
"""

from __future__ import annotations

from workflows.cli.main import main

__all__ = ["main"]
