"""Safe names: ids from files and STAC never escape the output folder and never collide."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.names import safe_name, unique_names

UNSAFE = ["../x", "/etc/passwd", "..", ".", "", "a/b", "a_b", "a b", "é", "e", "CON", "x" * 300, "../X", "A", "a"]


def test_unique_names_are_safe_and_distinct_even_ignoring_case(tmp_path: Path) -> None:
    names = unique_names(UNSAFE)
    assert len({n.lower() for n in names}) == len(UNSAFE)
    for name in names:
        target = (tmp_path / f"{name}.classes.tif").resolve()
        assert target.parent == tmp_path.resolve()
        assert not name.startswith(".") and "/" not in name and len(name) <= 120
    assert unique_names(UNSAFE) == names  # deterministic
    assert unique_names(["a", "b"]) == ["a", "b"]  # nothing to change, nothing changed


def test_unique_names_disambiguate_by_key() -> None:
    names = unique_names(["x", "x"], keys=["/arc/north/x.tif", "/arc/south/x.tif"])
    assert names[0] != names[1] and all(n.startswith("x-") for n in names)
    with pytest.raises(ValueError, match="distinct"):
        unique_names(["x", "x"])


def test_safe_name_keeps_distinct_ids_apart() -> None:
    assert safe_name("a/b") != safe_name("a_b")
    assert safe_name("../x") != safe_name("x")
