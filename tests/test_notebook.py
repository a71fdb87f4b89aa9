"""The example notebook runs end to end, as a user would run it (a real Jupyter kernel via nbclient)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO


@pytest.mark.slow
def test_change_over_time_notebook_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    notebook = REPO / "examples" / "change_over_time.ipynb"
    nb = nbformat.read(notebook, as_version=4)
    monkeypatch.setenv("SCENEWATCH_NOTEBOOK_OUT", str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    # "python3" is ipykernel's own kernel: jupyter_client starts it with this interpreter (sys.executable)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(notebook.parent)}}).execute()
    errors = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs if o.output_type == "error"]
    assert not errors
    assert (tmp_path / "naip_timeline.events.gpkg").exists()
    pictures = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs
                if o.get("data", {}).get("image/png")]
    assert len(pictures) >= 3  # change map, quicklook, timeline facets: inline plotting still works
