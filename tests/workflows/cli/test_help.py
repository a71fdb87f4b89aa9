"""Every command's --help: exit code 0, an example, and the files its examples name from this repository exist."""

from __future__ import annotations

import re

import click
import pytest
from click.testing import CliRunner

from tests.conftest import REPO
from tests.workflows.cli.test_options import COMMANDS
from workflows.cli import main

# A path into the repository, as the examples write them (globs allowed): examples/data/..., workflows/jobs/...
_REPO_PATH = re.compile(r"(?<![\w./-])((?:examples|workflows|tests|docs|bench)/[\w.*?/-]+\.[a-z]+)")


def _help(path: tuple[str, ...]) -> str:
    result = CliRunner().invoke(main, [*path, "--help"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=[" ".join(p) or "scenewatch" for p, _ in COMMANDS])
def test_help_shows_an_example_whose_repo_files_exist(path: tuple[str, ...]) -> None:
    text = _help(path)
    assert re.search(r"^  Examples?:$", text, re.M), text
    for found in _REPO_PATH.findall(text):
        assert list(REPO.glob(found)), f"scenewatch {' '.join(path)} --help names {found}, which is not in the repo"


def test_the_first_example_runs_on_the_bundled_sample() -> None:
    example = re.search(r"scenewatch predict (\S+)", _help(()))
    assert example is not None and (REPO / example.group(1)).is_file()


def test_help_lists_vocabularies_from_pipeline_vocab() -> None:
    from pipeline.vocab import BlendMethod, Precision, ProbaDtype, VectorFormat, choices

    text = " ".join(_help(("predict",)).split())
    for vocabulary in (Precision, BlendMethod, ProbaDtype):
        assert "[" + "|".join(choices(vocabulary)) + "]" in text
    assert ", ".join(choices(VectorFormat)) in text


def test_h_is_help_too() -> None:
    assert CliRunner().invoke(main, ["predict", "-h"]).exit_code == 0
    assert isinstance(main, click.Group)
