"""One colour language: the palette rules, and every picture and colour table taking its colours from
pipeline.colours (the change COG's colour table, the quicklook's pixels, the area plot's lines)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from PIL import Image
from rasterio.crs import CRS

from pipeline import colours
from pipeline.change.quicklook import save_area_plot, save_pair_quicklook
from pipeline.change.transitions import CHANGE_NODATA, transition_names
from pipeline.config import ChangeConfig
from pipeline.models.contract import ModelRef
from pipeline.models.loader import describe_model
from workflows.change import detect_change

VEG = ("other", "vegetation")


def test_vegetation_loss_is_red_gain_green_no_change_grey() -> None:
    names = transition_names(VEG)
    palette = dict(zip(names, colours.change_colours(names), strict=True))
    assert palette == {"no change": colours.NO_CHANGE, "vegetation->other": colours.LOSS,
                       "other->vegetation": colours.GAIN}


@pytest.mark.parametrize(("classes", "loss", "gain"), [
    (("unburned", "burned"), "unburned->burned", "burned->unburned"),
    (("canopy", "bare"), "canopy->bare", "bare->canopy"),
    (("other", "water"), "water->other", "other->water"),
    (("background", "foreground"), "foreground->background", "background->foreground"),
])
def test_loss_is_leaving_the_reference_class(classes, loss, gain) -> None:
    names = transition_names(classes)
    palette = dict(zip(names, colours.change_colours(names), strict=True))
    assert palette[loss] == colours.LOSS and palette[gain] == colours.GAIN


def test_three_classes_losses_are_reds_gains_greens_others_neither() -> None:
    names = transition_names(("water", "cleared", "forest"))  # water is the reference (first cover)
    palette = dict(zip(names, colours.change_colours(names), strict=True))
    assert palette["water->cleared"] == colours.LOSS and palette["water->forest"] in colours.LOSS_SHADES
    assert palette["cleared->water"] == colours.GAIN and palette["forest->water"] in colours.GAIN_SHADES
    others = {palette["cleared->forest"], palette["forest->cleared"]}
    assert others <= set(colours.OTHER_CHANGE) and len(others) == 2


def test_index_difference_names_follow_the_same_words() -> None:
    from pipeline.change.transitions import DIFFERENCE_MODELS

    dndvi = DIFFERENCE_MODELS["dndvi"].class_names
    palette = dict(zip(dndvi, colours.change_colours(dndvi), strict=True))
    assert palette["vegetation loss"] == colours.LOSS and palette["vegetation gain"] == colours.GAIN


def test_class_colours_are_the_models_else_a_documented_fallback() -> None:
    info = describe_model(ModelRef.of("vegetation"))
    assert colours.class_colours(info.class_names, info.class_colors) == tuple(c.lower() for c in info.class_colors)
    fallback = colours.class_colours(("other", "vegetation", "road", "roof"))
    assert fallback[:2] == (colours.NAMED_CLASS_COLOURS["other"], colours.NAMED_CLASS_COLOURS["vegetation"])
    assert len(set(fallback)) == 4


def test_dates_ramp_from_yellow_to_dark_red_and_no_alert_is_grey() -> None:
    names = ["no alert", "2020-01-01", "2020-06-01", "2021-01-01"]
    ramp = colours.layer_colours(names)
    assert ramp[0] == colours.NO_CHANGE and ramp[1] == colours.DATE_RAMP[0] and ramp[-1] == colours.DATE_RAMP[-1]


def _write_classes(path: Path, classes: np.ndarray, names=VEG) -> Path:
    with rasterio.open(path, "w", driver="GTiff", width=classes.shape[1], height=classes.shape[0], count=1,
                       dtype="uint8", crs=CRS.from_epsg(32633), transform=Affine(10, 0, 600000, 0, -10, 5000000),
                       nodata=255) as dst:
        dst.write(classes.astype(np.uint8), 1)
        dst.update_tags(SCENEWATCH_CLASSES=",".join(names), SCENEWATCH_MODEL="vegetation",
                        SCENEWATCH_MODEL_VERSION="1")
    return path


def _near(image: np.ndarray, colour: str, tol: int = 12) -> np.ndarray:
    rgb = np.asarray(colours.rgba(colour)[:3])
    return np.all(np.abs(image[..., :3].astype(int) - rgb) <= tol, axis=-1)


def test_change_cog_colour_table_and_quicklook_pixels_come_from_the_palette(tmp_path: Path) -> None:
    before = np.ones((60, 60), np.uint8)  # vegetation
    before[:, 40:] = 0
    after = before.copy()
    after[:, :30] = 0  # vegetation -> other: loss
    after[:, 40:50] = 1  # other -> vegetation: gain
    result = detect_change(_write_classes(tmp_path / "a_20200101.classes.tif", before),
                           _write_classes(tmp_path / "a_20210101.classes.tif", after), out_dir=tmp_path / "out",
                           config=ChangeConfig(polygons=False), progress=False)
    names = result.class_names
    expected = colours.colour_table(colours.change_colours(names), CHANGE_NODATA)
    with rasterio.open(result.change_path) as src:
        table = src.colormap(1)
    assert {k: table[k] for k in expected} == expected
    assert table[names.index("vegetation->other")] == colours.rgba(colours.LOSS)

    assert result.quicklook_path is not None
    image = np.asarray(Image.open(result.quicklook_path).convert("RGB"))
    third = image.shape[1] // 3
    before_panel, change_panel = image[:, :third], image[:, 2 * third:]
    assert _near(change_panel, colours.LOSS).sum() > 1000  # the loss half is red...
    assert _near(change_panel, colours.GAIN).sum() > 200  # ...the gain strip green
    assert _near(change_panel, "#2c7bb6").sum() < 50  # and nothing blue (the old palette's second colour)
    # class rasters are drawn in their class colours: "other" is beige, never black (black read as no data)
    assert _near(before_panel, colours.NAMED_CLASS_COLOURS["other"]).sum() > 1000


def test_quicklook_hatches_nodata_and_keeps_loss_red(tmp_path: Path) -> None:
    names = transition_names(VEG)
    change = np.full((100, 100), names.index("vegetation->other"), np.uint8)
    change[:, 80:] = CHANGE_NODATA
    rgb = np.ones((100, 100, 4), np.float32)
    save_pair_quicklook(tmp_path / "q.png", rgb, rgb, change, names)
    image = np.asarray(Image.open(tmp_path / "q.png").convert("RGB"))
    assert _near(image[:, 2 * image.shape[1] // 3:], colours.LOSS).sum() > 1000


def test_area_plot_draws_each_class_in_its_colour(tmp_path: Path) -> None:
    info = describe_model(ModelRef.of("vegetation"))
    dates = [dt.date(2020, 1, 1), dt.date(2021, 1, 1)]
    save_area_plot(tmp_path / "a.png", dates, {"other": [1e6, 2e6], "vegetation": [3e6, 2e6]},
                   colours=info.class_colors)
    image = np.asarray(Image.open(tmp_path / "a.png").convert("RGB"))
    assert _near(image, info.class_colors[1], tol=8).sum() > 100  # the model's green, not matplotlib's orange
    assert _near(image, "#ff7f0e", tol=8).sum() == 0


def test_class_cog_colour_table_is_the_models_or_the_fallback() -> None:
    from pipeline.models.contract import ModelInfo
    from workflows.scene import _class_colormap

    bare = ModelInfo(name="m", version="1", bands=("red",), class_names=("other", "vegetation"))
    assert _class_colormap(bare) == {0: colours.rgba("#d9d0b4"), 1: colours.rgba("#1a9641"), 255: (0, 0, 0, 0)}
    own = ModelInfo(name="m", version="1", bands=("red",), class_names=("a", "b"), class_colors=("#010203", "#AABBCC"))
    assert _class_colormap(own)[1] == (0xAA, 0xBB, 0xCC, 255)


def _sld_fills(gpkg: Path) -> dict[str, str]:
    import sqlite3
    import xml.etree.ElementTree as ET

    with sqlite3.connect(gpkg) as db:
        (sld,) = db.execute("SELECT styleSLD FROM layer_styles WHERE useAsDefault = 1").fetchone()
    ns = {"se": "http://www.opengis.net/se", "ogc": "http://www.opengis.net/ogc"}
    return {r.find("ogc:Filter/ogc:PropertyIsEqualTo/ogc:Literal", ns).text:
            r.find("se:PolygonSymbolizer/se:Fill/se:SvgParameter[@name='fill']", ns).text
            for r in ET.fromstring(sld.encode()).findall(".//se:Rule", ns)}


def test_vectorized_layer_is_styled_in_the_rasters_colour_table_else_the_fallback(tmp_path: Path,
                                                                                  dask_client) -> None:
    from workflows.vectorize import vectorize_scene

    classes = np.zeros((40, 40), np.uint8)
    classes[10:30, 10:30] = 1
    plain = _write_classes(tmp_path / "plain.classes.tif", classes)
    coloured = _write_classes(tmp_path / "coloured.classes.tif", classes)
    with rasterio.open(coloured, "r+") as dst:  # as predict writes it: the model's colours
        dst.write_colormap(1, {0: (1, 2, 3, 255), 1: (200, 100, 50, 255)})
    styled = vectorize_scene(coloured, tmp_path / "out", client=dask_client, progress=False)
    assert _sld_fills(styled.paths["gpkg"]) == {"other": "#010203", "vegetation": "#c86432"}
    fallback = vectorize_scene(plain, tmp_path / "out", client=dask_client, progress=False)
    assert _sld_fills(fallback.paths["gpkg"]) == dict(zip(VEG, colours.class_colours(VEG), strict=True))
