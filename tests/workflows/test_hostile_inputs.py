"""Hostile and broken inputs (issue 15): each case gets one clear error and leaves nothing behind."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from workflows.job import MAX_JOB_NODES, load_job


def _laughs(levels: int) -> str:
    """A job file whose model kwargs are a 'billion laughs' of ``9 ** levels`` strings in a few hundred bytes."""
    lines = ['    l0: &l0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"    l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(["version: 1", "inputs: {folder: .}", "model:", '  factory: "os:getcwd"', "  kwargs:",
                      *lines, "outputs: {folder: out}", ""])


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    job = tmp_path / "laughs.yaml"
    job.write_text(_laughs(10))  # 9 ** 10 = 3.5 billion strings
    assert job.stat().st_size < 1000
    started = time.perf_counter()
    with pytest.raises(ConfigError, match=r"laughs.yaml line \d+: its aliases expand to more than 100,000 values"):
        load_job(job)
    assert time.perf_counter() - started < 5


def test_aliases_that_expand_to_a_normal_size_are_fine(tmp_path: Path) -> None:
    job = tmp_path / "anchors.yaml"
    job.write_text(_laughs(3))  # 729 strings
    assert 9 ** 3 < MAX_JOB_NODES
    assert load_job(job).spec.model.kwargs["l2"][0][0] == ["x"] * 9
