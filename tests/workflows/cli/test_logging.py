"""Log lines and the progress bar share the terminal: a line logged under a bar stands on its own line."""

from __future__ import annotations

import io
import logging

from tqdm import tqdm

from workflows.cli.main import _BarSafeHandler


def test_a_log_line_does_not_break_the_progress_bar() -> None:
    stream = io.StringIO()
    log = logging.getLogger("scenewatch.test-bar")
    handler = _BarSafeHandler(stream)
    handler.setFormatter(logging.Formatter("scenewatch: %(message)s"))
    log.addHandler(handler)
    log.propagate = False
    try:
        with tqdm(total=3, file=stream, desc="scene", ascii=True) as bar:
            bar.update(1)
            log.warning("tile (2, 3) was slow")
            bar.update(2)
    finally:
        log.removeHandler(handler)
    lines = [line.split("\r")[-1] for line in stream.getvalue().split("\n")]
    assert "scenewatch: tile (2, 3) was slow" in lines  # whole, not glued to the bar's text
    assert any(line.startswith("scene: 100%") for line in lines)
