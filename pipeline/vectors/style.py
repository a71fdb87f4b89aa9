"""Layer styles: a categorized style on ``class_name`` as QGIS QML and OGC SLD 1.1 text.

A layer's categories are its classes (the legend label is the class name), each filled with its colour from
:mod:`pipeline.colours` (the model's class colours; the change palette for change layers; the date ramp for
a timeline's events) and outlined in a darker shade of it. :func:`pipeline.vectors.export.export_layer`
stores both in the GeoPackage's ``layer_styles`` table (the QGIS convention), marked as the default, so the
layer opens styled in QGIS; the SLD serves GeoServer, MapServer and other OGC clients. Pure text, no I/O.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.colours import rgba

__all__ = ["Category", "qml_style", "sld_style", "STYLE_FIELD", "QGIS_VERSION"]

STYLE_FIELD = "class_name"
QGIS_VERSION = "3.28.0-Firenze"  # the QML dialect written: read by QGIS 3.x
_OUTLINE_WIDTH_MM = 0.26

_SLD = "http://www.opengis.net/sld"
_SE = "http://www.opengis.net/se"
_OGC = "http://www.opengis.net/ogc"
_XSI = "http://www.w3.org/2001/XMLSchema-instance"
_XLINK = "http://www.w3.org/1999/xlink"


@dataclass(frozen=True, slots=True)
class Category:
    """One legend entry: features whose ``class_name`` is ``value``, filled with ``colour`` (``#rrggbb``)."""

    value: str
    colour: str

    @property
    def outline(self) -> str:
        """The fill darkened to 60 %: edges between touching polygons of one class stay visible."""
        r, g, b, _ = rgba(self.colour)
        return f"#{round(r * 0.6):02x}{round(g * 0.6):02x}{round(b * 0.6):02x}"


def _qgis_rgba(colour: str) -> str:
    return ",".join(str(v) for v in rgba(colour))


def _fill_symbol(parent: ET.Element, name: str, category: Category) -> None:
    symbol = ET.SubElement(parent, "symbol", {"type": "fill", "name": name, "alpha": "1", "clip_to_extent": "1",
                                              "force_rhr": "0"})
    layer = ET.SubElement(symbol, "layer", {"class": "SimpleFill", "enabled": "1", "locked": "0", "pass": "0"})
    props = {"color": _qgis_rgba(category.colour), "outline_color": _qgis_rgba(category.outline),
             "outline_style": "solid", "outline_width": str(_OUTLINE_WIDTH_MM), "outline_width_unit": "MM",
             "style": "solid", "joinstyle": "bevel"}
    # QGIS >= 3.10 reads the Option map; older 3.x the prop list: both are written, as QGIS itself did
    options = ET.SubElement(layer, "Option", {"type": "Map"})
    for key, value in props.items():
        ET.SubElement(options, "Option", {"type": "QString", "name": key, "value": value})
    for key, value in props.items():
        ET.SubElement(layer, "prop", {"k": key, "v": value})


def qml_style(categories: Sequence[Category], field: str = STYLE_FIELD) -> str:
    """A QGIS categorized-symbol renderer: one category per class, labelled with the class name."""
    root = ET.Element("qgis", {"version": QGIS_VERSION, "styleCategories": "Symbology"})
    renderer = ET.SubElement(root, "renderer-v2", {"type": "categorizedSymbol", "attr": field,
                                                    "symbollevels": "0", "enableorderby": "0", "forceraster": "0"})
    cats = ET.SubElement(renderer, "categories")
    symbols = ET.SubElement(renderer, "symbols")
    for i, category in enumerate(categories):
        ET.SubElement(cats, "category", {"symbol": str(i), "value": category.value, "label": category.value,
                                         "render": "true"})
        _fill_symbol(symbols, str(i), category)
    ET.SubElement(root, "layerGeometryType").text = "2"  # polygons
    ET.indent(root)
    return "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n" + ET.tostring(root, encoding="unicode")


def sld_style(layer: str, categories: Sequence[Category], field: str = STYLE_FIELD) -> str:
    """The same style as OGC SLD 1.1 (Symbology Encoding): one rule per class, titled with its name."""
    ET.register_namespace("", _SLD)
    for prefix, uri in (("se", _SE), ("ogc", _OGC), ("xsi", _XSI), ("xlink", _XLINK)):
        ET.register_namespace(prefix, uri)
    root = ET.Element(f"{{{_SLD}}}StyledLayerDescriptor", {
        "version": "1.1.0",
        f"{{{_XSI}}}schemaLocation": "http://www.opengis.net/sld "
                                     "http://schemas.opengis.net/sld/1.1.0/StyledLayerDescriptor.xsd",
    })
    named = ET.SubElement(root, f"{{{_SLD}}}NamedLayer")
    ET.SubElement(named, f"{{{_SE}}}Name").text = layer
    user = ET.SubElement(named, f"{{{_SLD}}}UserStyle")
    ET.SubElement(user, f"{{{_SE}}}Name").text = layer
    fts = ET.SubElement(user, f"{{{_SE}}}FeatureTypeStyle")
    for category in categories:
        rule = ET.SubElement(fts, f"{{{_SE}}}Rule")
        ET.SubElement(rule, f"{{{_SE}}}Name").text = category.value
        description = ET.SubElement(rule, f"{{{_SE}}}Description")
        ET.SubElement(description, f"{{{_SE}}}Title").text = category.value
        flt = ET.SubElement(rule, f"{{{_OGC}}}Filter")
        equal = ET.SubElement(flt, f"{{{_OGC}}}PropertyIsEqualTo")
        ET.SubElement(equal, f"{{{_OGC}}}PropertyName").text = field
        ET.SubElement(equal, f"{{{_OGC}}}Literal").text = category.value
        symbolizer = ET.SubElement(rule, f"{{{_SE}}}PolygonSymbolizer")
        fill = ET.SubElement(symbolizer, f"{{{_SE}}}Fill")
        ET.SubElement(fill, f"{{{_SE}}}SvgParameter", {"name": "fill"}).text = category.colour
        stroke = ET.SubElement(symbolizer, f"{{{_SE}}}Stroke")
        ET.SubElement(stroke, f"{{{_SE}}}SvgParameter", {"name": "stroke"}).text = category.outline
        ET.SubElement(stroke, f"{{{_SE}}}SvgParameter", {"name": "stroke-width"}).text = "1"
        ET.SubElement(stroke, f"{{{_SE}}}SvgParameter", {"name": "stroke-linejoin"}).text = "bevel"
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode")
