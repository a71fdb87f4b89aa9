"""Change over time: common grids, transitions and index differences, alerts, dates, quicklooks."""
