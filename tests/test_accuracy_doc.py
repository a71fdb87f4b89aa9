"""docs/accuracy.md's table is what `python -m bench.accuracy` computes now: a change to a model, a default or
the data that moves a figure fails here until the document is regenerated."""

from __future__ import annotations

import pytest

from tests.conftest import REPO, shared


@pytest.mark.slow
def test_accuracy_table_is_current() -> None:
    shared("change/flood_ombria_france")
    from bench.accuracy import DOC, table

    text, _ = table()
    assert text in DOC.read_text(), "docs/accuracy.md is stale: run .venv/bin/python -m bench.accuracy"
    assert DOC == REPO / "docs" / "accuracy.md"
