"""Polygon stages: polygonize a core, merge seams, measure, export layers."""
