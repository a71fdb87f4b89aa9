"""The configs built at the edge: areas, lists and formats parsed once, bad values refused by the key's name."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from pipeline.config import ChangeConfig, PredictConfig, TimelineConfig, VectorizeConfig, parse_area
from pipeline.errors import ConfigError
from pipeline.vocab import VectorFormat, choices

AREA_CONFIGS = [VectorizeConfig, ChangeConfig, TimelineConfig]


@pytest.mark.parametrize("config", AREA_CONFIGS)
@pytest.mark.parametrize(("text", "m2"), [("0.5ha", 5000.0), ("5000m2", 5000.0), ("5000 m²", 5000.0),
                                          ("1km2", 1e6), ("1.5e3", 1500.0), (250, 250.0), (0, 0.0)])
def test_areas_accept_units(config, text, m2) -> None:
    assert config(min_area=text).min_area == pytest.approx(m2)
    assert config.build(min_area=text).min_area == pytest.approx(m2)


@pytest.mark.parametrize("config", AREA_CONFIGS)
@pytest.mark.parametrize("bad", ["lots", "0.5 acres", "-3ha", -1])
def test_a_bad_area_is_refused_with_the_keys_name(config, bad) -> None:
    with pytest.raises(ConfigError, match=r"^options: min_area: ") as info:
        config.build(min_area=bad)
    assert "\n" not in str(info.value)
    assert isinstance(info.value.__cause__, ValidationError)  # chained to pydantic's report
    with pytest.raises(ValidationError, match="min_area"):  # the constructor refuses it too
        config(min_area=bad)


def test_a_bad_area_names_the_value_and_the_units() -> None:
    with pytest.raises(ConfigError, match=r"min_area: area 'lots': .*0\.5ha"):
        VectorizeConfig.build(min_area="lots")


@pytest.mark.parametrize(("given", "formats"), [
    ("gpkg,parquet", ("gpkg", "parquet")),
    ("gpkg, parquet", ("gpkg", "parquet")),
    ("GeoParquet,.FGB,json", ("parquet", "fgb", "geojson")),
    (("gpkg", "gpkg", "fgb"), ("gpkg", "fgb")),  # distinct, in the order given
    (["geojson"], ("geojson",)),
    ("parquet", ("parquet",)),
])
def test_formats_accept_a_comma_list_and_aliases(given, formats) -> None:
    assert VectorizeConfig(formats=given).formats == formats
    assert VectorizeConfig.build(formats=given).formats == formats


def test_every_vector_format_is_its_own_name() -> None:
    assert VectorizeConfig(formats=",".join(choices(VectorFormat))).formats == choices(VectorFormat)


@pytest.mark.parametrize("bad", ["shp", "", "gpkg,kml"])
def test_a_bad_format_is_refused_with_the_keys_name(bad) -> None:
    with pytest.raises(ConfigError, match=r"^options: formats"):
        VectorizeConfig.build(formats=bad)


def test_lists_accept_comma_text() -> None:
    assert VectorizeConfig(classes="water, forest,").classes == ("water", "forest")
    assert VectorizeConfig(classes=[1, 2]).classes == ("1", "2")
    assert TimelineConfig(watch="vegetation->other,water->other").watch == ("vegetation->other", "water->other")


def test_unknown_keys_and_wrong_types_are_refused_by_name() -> None:
    with pytest.raises(ConfigError, match=r"^options: min_aera: "):
        VectorizeConfig.build(min_aera="0.5ha")
    with pytest.raises(ConfigError, match=r"^options: quiklook: "):
        ChangeConfig.build(quiklook=False)
    with pytest.raises(ConfigError, match=r"^options: confirm: "):
        TimelineConfig.build(confirm=0)
    with pytest.raises(ConfigError, match=r"^options: predict\.tile_size: "):
        ChangeConfig.build(predict={"tile_size": -1})


def test_build_leaves_what_is_not_given_at_its_default() -> None:
    assert VectorizeConfig.build(min_area=None, sieve=None, formats=None) == VectorizeConfig()
    assert ChangeConfig.build(predict=PredictConfig(bands="naip"), grid=None).predict.bands == "naip"


def test_configs_are_frozen_values() -> None:
    config = TimelineConfig(min_area="0.5ha")
    with pytest.raises(ValidationError):
        config.min_area = 1.0  # type: ignore[misc]
    assert config == TimelineConfig(min_area=5000) and hash(config) == hash(TimelineConfig(min_area=5000))


def test_parse_area_outside_a_config() -> None:
    assert parse_area("0.5HA") == 5000.0
    with pytest.raises(ConfigError, match="area 'big'"):
        parse_area("big")


@pytest.mark.parametrize("value", ["", "*", (), ("*",), None])
def test_timeline_watch_empty_or_star_means_any_change(value: object) -> None:
    assert TimelineConfig.build(watch=value).watch is None


def test_change_grid_takes_a_path() -> None:
    assert ChangeConfig(grid=Path("ref.tif")).grid == "ref.tif"
