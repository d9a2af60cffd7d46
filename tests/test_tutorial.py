"""docs/tutorial.ipynb runs top to bottom in a real Jupyter kernel (nbclient)."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).parent.parent / "docs" / "tutorial.ipynb"


def test_tutorial_notebook_executes(tmp_path):
    nbformat = pytest.importorskip("nbformat", reason="pip install -e '.[test]'")
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, timeout=180, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = {i: cell.get("outputs", []) for i, cell in enumerate(nb.cells)
               if cell.cell_type == "code"}
    text = "\n".join(o.get("text", "") or str(o.get("data", {}).get("text/plain", ""))
                     for outs in outputs.values() for o in outs)
    assert "[stdout:0] mean on this engine" in text
    assert "[stdout:1] mean on this engine" in text
    assert "slept on engine 0" in text
    assert "ZeroDivisionError on engine" in text
    assert "[3, 3]" in text
    assert "stopped:" in text
    assert "open the dashboard" in "\n".join(
        str(o.get("data", {}).get("text/html", "")) for outs in outputs.values() for o in outs)
    assert not any(o.get("output_type") == "error" for outs in outputs.values() for o in outs)
