"""Everything from reading a scene to exporting layers: one module per stage, in data-flow order."""
