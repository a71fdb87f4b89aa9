"""The one grammar of each shared value (bands, model options), the translation of parameter names into the
running command's flags, and the shape of workflows/cli: options declared once, one report_errors, no cycle."""

from __future__ import annotations

import ast
import re
import sys

import click
import pytest
from click.testing import CliRunner

from pipeline.config import PredictConfig
from pipeline.errors import BandMapError, ConfigError, InvalidSceneError
from pipeline.inference.read import parse_band_map
from tests.conftest import REPO
from workflows.cli import main
from workflows.cli.options import band_names, build, cli_message, parse_bands, parse_model_options, report_errors

CLI = REPO / "workflows" / "cli"


# ------------------------------------------------------------------------------------------------ --bands


@pytest.mark.parametrize(("text", "expected"), [
    ("red=1,nir=4", "red=1,nir=4"),                       # the library's own grammar, unchanged
    ("naip", "naip"),                                     # a preset, unchanged (and recorded as given)
    ("Sentinel2", "Sentinel2"),
    ("red,green,blue,nir", "red=1,green=2,blue=3,nir=4"), # names in file order
    (" Red , NIR ", "red=1,nir=2"),
    ("pan", "pan=1"),
    ("nir=nir08,red=B04", "nir=nir08,red=B04"),  # bands by name: a STAC item's common names or asset keys
])
def test_one_band_grammar(text: str, expected: str) -> None:
    assert parse_bands(text) == expected
    parse_band_map(expected)  # what the engine receives is a band map it reads


@pytest.mark.parametrize(("text", "fragment"), [
    ("red,,nir", "cannot read ''"),
    ("red,red", "red named twice"),
    ("red=1,nir", "give every band its index"),
    ("red=1,nir=4x", "cannot read 'nir=4x'"),  # nir=x is a band by name (a STAC item's nir08, a description)
    ("red=0", "band indexes start at 1"),
    ("naip,swir16", "naip is a preset; give it alone"),
])
def test_bad_band_maps_are_refused_with_what_cannot_be_read(text: str, fragment: str) -> None:
    with pytest.raises(BandMapError, match=re.escape(fragment)):
        parse_bands(text)


def test_a_bundle_lists_its_bands_in_file_order() -> None:
    assert band_names("red,green,blue,nir") == ["red", "green", "blue", "nir"]
    assert band_names("bgrn") == ["blue", "green", "red", "nir"]
    assert band_names("nir=2,red=1") == ["red", "nir"]
    with pytest.raises(ConfigError, match="two names for one band"):
        band_names("red=1,nir=1")


# ----------------------------------------------------------------------------------------- --model-option


def test_model_options_are_typed() -> None:
    assert parse_model_options(["threshold=0.2", "compile=true", "tiles=3", "name=x y", "off=no"]) == {
        "threshold": 0.2, "compile": True, "tiles": 3, "name": "x y", "off": False}
    for bad in ("threshold", "=1", "two words=1"):
        with pytest.raises(ConfigError, match="write KEY=VALUE"):
            parse_model_options([bad])


# ------------------------------------------------------------------------------------ names become flags


@click.command()
@click.option("--assume-crs", "assume_crs")
@click.option("--objects", "object_classes", multiple=True)
@click.option("-o", "--out", "out")
@report_errors
def _probe(assume_crs: str | None, object_classes: tuple[str, ...], out: str | None) -> None:
    raise InvalidSceneError("scene a.tif: no CRS; set `assume_crs`, `object_classes`, `out`, `predict.max_pixels`\n"
                            "or `halo`; `scenewatch models init` stays")


def test_report_errors_names_the_running_commands_flags_on_one_line() -> None:
    result = CliRunner().invoke(_probe, [])
    assert result.exit_code == 1
    assert result.output == ("scenewatch: error: scene a.tif: no CRS; set --assume-crs, --objects, --out, "
                             "predict.max_pixels or halo; `scenewatch models init` stays\n")


def test_without_a_command_a_name_stays_bare() -> None:
    assert cli_message("set `assume_crs` (e.g. EPSG:32618)") == "set assume_crs (e.g. EPSG:32618)"


def test_a_config_error_names_the_flag_that_set_the_value() -> None:
    with pytest.raises(ConfigError, match=r"^`tile_size`: Input should be greater than 0; `precision`: Input "
                                          r"should be 'auto'"):
        build(PredictConfig, tile_size=0, precision="fp64")
    with pytest.raises(ConfigError, match=r"^`overlap` \(9\) cannot be larger than `halo` \(2\)$"):
        build(PredictConfig, overlap=9, halo=2)


# ------------------------------------------------------------------------------------------- the package


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    found: list[tuple[tuple[str, ...], click.Command]] = [(prefix, group)]
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            found += _commands(command, (*prefix, name))
        else:
            found.append(((*prefix, name), command))
    return found


COMMANDS = _commands(main)


def test_every_command_is_registered() -> None:
    names = {" ".join(path) for path, _ in COMMANDS}
    assert names >= {"", "predict", "vectorize", "change", "timeline", "train", "evaluate", "run", "status", "models",
                     "models show", "models init", "models import", "models quantize"}


def test_o_is_out_everywhere_and_each_shared_flag_has_one_meaning() -> None:
    callbacks: dict[str, set[object]] = {}
    for path, command in COMMANDS:
        for param in command.params:
            if "-o" in param.opts:
                assert param.opts == ["--out", "-o"] or param.opts == ["-o", "--out"], (path, param.opts)
                assert param.name == "out"
            for flag in ("--bands", "--min-area", "--model-option"):
                if flag in param.opts:
                    callbacks.setdefault(flag, set()).add(param.callback)
    assert {flag: len(found) for flag, found in callbacks.items()} == {"--bands": 1, "--min-area": 1,
                                                                         "--model-option": 1}


def _sources() -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(CLI.glob("*.py"))}


@pytest.mark.parametrize("flag", ["--out", "--model", "--bands", "--model-option", "--tile-size", "--halo",
                                  "--overlap", "--blend", "--precision", "--proba-dtype", "--max-pixels",
                                  "--assume-crs", "--workers", "--scheduler", "--format", "--min-area", "--sieve",
                                  "--simplify", "--max-polygons", "--date-pattern", "--grid", "--region",
                                  "--label-attribute", "--quiet"])
def test_shared_options_are_declared_once(flag: str) -> None:
    declared = {name: src.count(f'"{flag}"') for name, src in _sources().items() if f'"{flag}"' in src}
    assert declared == {"options.py": 1}


def test_one_report_errors_and_command_modules_never_import_main() -> None:
    definitions = [p for p in (REPO / "workflows").rglob("*.py") if "def report_errors" in p.read_text("utf-8")]
    assert definitions == [CLI / "options.py"]
    assert not list((REPO / "workflows").glob("cli_*.py")) and not (REPO / "workflows" / "cli.py").exists()
    for name, src in _sources().items():
        if name in ("__init__.py", "__main__.py", "main.py"):
            continue
        imported = set()
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.Import):
                imported |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                imported |= {f"{node.module}.{a.name}" for a in node.names}
        assert not {m for m in imported if m.startswith("workflows.cli.main")}, name


def test_main_module_stays_a_guard() -> None:
    """Dask's spawned workers re-import __main__: it must define and run nothing when imported."""
    tree = ast.parse((CLI / "__main__.py").read_text("utf-8"))
    body = [node for node in tree.body if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))]
    assert len(body) == 1 and isinstance(body[0], ast.If)
    assert ast.unparse(body[0].test) == "__name__ == '__main__'"


def test_log_lines_name_flags_too() -> None:
    import logging

    formatter = sys.modules["workflows.cli.main"]._FlagFormatter("scenewatch: %(message)s")
    record = logging.LogRecord("scenewatch", logging.INFO, __file__, 1, "GPU shared (set `workers` to change)",
                               None, None)
    with click.Context(_probe):
        assert formatter.format(record) == "scenewatch: GPU shared (set workers to change)"
    with click.Context(main.commands["predict"]):
        assert formatter.format(record) == "scenewatch: GPU shared (set --workers to change)"
