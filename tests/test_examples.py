"""Every example a user can copy runs: the ```bash blocks and `scenewatch ...` lines of README.md and docs/*.md,
and the "Example(s):" sections of every command's --help.

Each example runs as written, in document order, in one scratch folder (so `models init` makes the bundle
that a later `predict --model models/trees` uses), with three things changed by the test, all listed here:

- data paths that stand for the user's own files become the bundled sample (:data:`SUBSTITUTE`);
- commands that start a Dask cluster get the test's shared cluster (``--scheduler``): a fresh local
  cluster per example would cost seconds each and prove nothing more;
- a few options are cut for time (:data:`FASTER`: one training epoch instead of twelve).

An example that needs data we do not ship (a Sentinel-2 scene, a scheduler address, a user's job file) is
skipped, with its reason, from the explicit :data:`SKIP` list; an example neither run nor listed fails.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import shutil
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from tests.conftest import NAIP_2020, REPO, SAMPLE_DIR
from workflows.cli import main

pytestmark = pytest.mark.slow

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
NAIP_2009_CLASSES = "out/timeline/m_4709963_se_14_1_20090818.classes.tif"  # written by the README's timeline
NAIP_2020_CLASSES = "out/m_4709963_se_14_1_20200831.classes.tif"  # written by the README's first predict
NAIP_CHANGE = "out/change/m_4709963_se_14_1_20090818__m_4709963_se_14_1_20200831.change.tif"  # README's change

SUBSTITUTE = {  # a path in an example that stands for the user's file -> the bundled one it runs on
    "scene.tif": str(NAIP_2020.relative_to(REPO)),
    "naip.tif": str(NAIP_2020.relative_to(REPO)),
    "reference.tif": str(NAIP_2020.relative_to(REPO)),
    "out/naip.classes.tif": NAIP_2020_CLASSES,
    "burn_mask.tif": NAIP_2020_CLASSES,
    "a.classes.tif": NAIP_2009_CLASSES,
    "b.classes.tif": NAIP_2020_CLASSES,
    "out/before__after.change.tif": NAIP_CHANGE,  # written by the README's change example
}

FASTER = {  # command -> options appended (click takes the last value): the same path, in seconds
    ("train",): ["--epochs", "1", "--chips-per-epoch", "16"],
    ("models", "quantize"): ["--tiles", "2"],
}

REFUSED = {  # command -> the one-line refusal it may end with instead of success, and why that is right
    # the README's bundle is random-initialised (`models init`): its int8 variant drifts past the limit
    ("models", "quantize"): "not written",
}

SKIP = {  # a piece of the example -> why it does not run in the tests
    "bash .ci/setup": "the setup itself: CI runs it before the tests",
    "python -m pytest": "the test suite itself",
    ".venv/bin/python -m pytest": "the test suite itself",
    "bench.vectorize": "a benchmark: minutes on an 8192 px synthetic scene",
    "s2.tif": "needs a Sentinel-2 scene (none is shipped)",
    "s2_l2a.tif": "needs a Sentinel-2 L2A scene with its SCL band (none is shipped)",
    "s2.classes.tif": "needs a Sentinel-2 clearing map (none is shipped)",
    "pre.tif post.tif": "needs a Sentinel-2 L2A pair (none is shipped)",
    "landsat/*.tif": "needs a Landsat series (none is shipped)",
    "tcp://scheduler:8786": "needs a Dask scheduler at that address",
    "unet.pth": "needs the user's PyTorch checkpoint",
    "nightly.yaml": "the user's own job file over their archive",
    "my_model_job.yaml": "the user's own job file naming their model factory",
    "s3://my-bucket": "needs an S3 bucket and AWS credentials",
    "earth-search.aws.element84.com": "searches a public STAC API (the network); test_stac_cli.py runs the same "
                                      "flags against rustac serve on 127.0.0.1",
}


def _doc_examples(path: Path) -> Iterator[str]:
    """Commands of the ```bash blocks and the `scenewatch ...` lines of any other code block, continuation
    lines joined."""
    text = path.read_text(encoding="utf-8")
    for match in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.M | re.S):
        lang, body = match.group(1), match.group(2).replace("\\\n", " ")
        if lang not in ("", "bash", "sh", "shell", "console"):
            continue
        for line in body.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            # README's first commands set up first: what follows the setup is the example
            line = line.removeprefix("bash .ci/setup && ")
            if lang == "bash" or line.startswith(("scenewatch ", ".venv/bin/scenewatch ")):
                yield line


def _commands(group: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    yield path, group
    if isinstance(group, click.Group):
        for name, command in group.commands.items():
            yield from _commands(command, (*path, name))


def _help_examples(command: click.Command) -> Iterator[str]:
    match = re.search(r"Examples?:\n(.*?)(?:\n\s*\n|\Z)", command.help or "", re.S)
    if match:
        for line in match.group(1).replace("\\\n", " ").splitlines():
            if line.strip():
                yield line.strip()


def collect() -> list[tuple[str, str]]:
    """(where, example), each distinct example once, in the order a reader meets them."""
    seen: dict[str, str] = {}
    for doc in DOCS:
        for example in _doc_examples(doc):
            seen.setdefault(" ".join(example.split()), doc.name)
    for path, command in _commands(main):
        for example in _help_examples(command):
            seen.setdefault(" ".join(example.split()), f"scenewatch {' '.join(path)} --help".replace("  ", " "))
    return [(where, example) for example, where in seen.items()]


EXAMPLES = collect()


def _skip_reason(example: str) -> str | None:
    return next((reason for piece, reason in SKIP.items() if piece in example), None)


def _argv(example: str) -> list[str]:
    words = shlex.split(example, comments=True)
    if words[0] in ("scenewatch", ".venv/bin/scenewatch"):
        words = words[1:]
    out: list[str] = []
    for word in words:
        word = SUBSTITUTE.get(word, word)
        expanded = sorted(glob.glob(word)) if any(c in word for c in "*?[") else []
        out.extend(expanded or [word])
    return out


def _command_of(argv: list[str]) -> tuple[tuple[str, ...], click.Command]:
    """The (sub)command an argv runs: ``models --path x show y`` is ``("models", "show")``."""
    path: tuple[str, ...] = ()
    command: click.Command = main
    for word in argv:
        if isinstance(command, click.Group) and word in command.commands:
            command = command.commands[word]
            path = (*path, word)
    return path, command


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, dask_client) -> Iterator[Path]:
    """A scratch folder laid out as the repository root: the sample data (linked) and the job files
    (copied, since a job file's outputs are relative to it). The shared cluster's workers work in it too,
    as a user's local cluster would in the folder the command runs in (the examples' paths are relative)."""
    root = tmp_path_factory.mktemp("examples")
    (root / "examples").mkdir()
    (root / "examples" / "data").symlink_to(SAMPLE_DIR, target_is_directory=True)
    shutil.copytree(REPO / "workflows", root / "workflows",
                    ignore=shutil.ignore_patterns("*.py", "__pycache__", "cli"))
    shared = REPO.parent / "shared"  # ../shared/data beside the checkout, as examples that use it expect
    if shared.is_dir() and not (root.parent / "shared").exists():
        (root.parent / "shared").symlink_to(shared, target_is_directory=True)
    before = dask_client.run(os.getcwd)
    dask_client.run(os.chdir, str(root))
    yield root
    for worker, cwd in before.items():
        dask_client.run(os.chdir, cwd, workers=[worker])


def test_every_example_is_collected():
    """The collector finds the examples this file was written against (a regex that stopped matching
    would otherwise pass by running nothing)."""
    examples = [example for _, example in EXAMPLES]
    assert len(examples) >= 30
    assert any(e.startswith("scenewatch train --scene examples/data/") for e in examples)
    assert any(e.startswith("scenewatch timeline examples/data/") for e in examples)
    assert any("workflows/jobs/naip_vegetation.yaml" in e for e in examples)


@pytest.mark.parametrize(("where", "example"), EXAMPLES, ids=[f"{w}: {e[:70]}" for w, e in EXAMPLES])
def test_example_runs_as_written(where, example, workspace, dask_client, monkeypatch):
    reason = _skip_reason(example)
    if reason:
        pytest.skip(f"{where}: {reason}")
    if "../shared/data" in example and not (REPO.parent / "shared" / "data").is_dir():
        pytest.skip(f"{where}: needs ../shared/data beside the checkout")
    assert example.startswith(("scenewatch ", ".venv/bin/scenewatch ")), \
        f"{where}: {example!r} is neither run nor in SKIP with a reason"
    monkeypatch.chdir(workspace)
    argv = _argv(example)
    path, command = _command_of(argv)
    names = {opt for param in command.params for opt in getattr(param, "opts", ())}
    if "--scheduler" in names and "--scheduler" not in argv:
        argv += ["--scheduler", dask_client.scheduler.address]
    argv += FASTER.get(path, [])
    monkeypatch.delenv("SCENEWATCH_MODELS", raising=False)
    result = CliRunner().invoke(main, argv, catch_exceptions=False)
    output = result.output
    if result.exit_code != 0 and path in REFUSED:
        lines = [line for line in output.splitlines() if line.startswith("scenewatch: error:")]
        assert len(lines) == 1 and REFUSED[path] in lines[0], output
        return
    assert result.exit_code == 0, f"{where}: {' '.join(argv)}\n{output}"


def test_readme_python_snippets_run_as_a_script(tmp_path):
    """The README's ```python blocks, pasted in order into files and run with python, from a fresh folder
    with only the sample data: each runs (a local cluster's worker processes need the __main__ guard) and
    the second reads what the first wrote."""
    import subprocess
    import sys

    text = (REPO / "README.md").read_text(encoding="utf-8")
    snippets = re.findall(r"^```python\n(.*?)^```", text, re.M | re.S)
    assert len(snippets) >= 2
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "data").symlink_to(SAMPLE_DIR, target_is_directory=True)
    for i, snippet in enumerate(snippets):
        script = tmp_path / f"snippet_{i}.py"
        script.write_text(snippet, encoding="utf-8")
        done = subprocess.run([sys.executable, script.name], cwd=tmp_path, capture_output=True, text=True,
                              timeout=300, check=False)
        assert done.returncode == 0, f"README python block {i + 1}:\n{snippet}\n{done.stdout}{done.stderr}"
