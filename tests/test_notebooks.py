"""The notebooks never rot: each runs top to bottom on tiny inputs, and is committed run.

Every notebook in ``notebooks/`` has one code cell tagged ``parameters`` that sets its
sizes. The test inserts a cell right after it with the tiny sizes of `TINY` (as
papermill does), executes the notebook with nbclient in a fresh kernel (working
directory: a temporary folder) and fails on the first cell that raises.

The tiny sizes keep every fit at 4 × 4 bins and a few exposures, so one notebook
runs in ~10-20 s on 2 cores (mostly compilation). They also keep each batched
LAPACK call under jaxlib's threshold for splitting it over threads (batch × cost <
2e5 flop), which keeps these runs clear of the jaxlib CPU thread-pool deadlock that
two split LAPACK calls running side by side can hit on a 2-core machine.
"""

import ast
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = pathlib.Path(__file__).resolve().parent.parent / "notebooks"

#: Tiny sizes, run after each notebook's ``parameters`` cell.
TINY = {
    "quickstart.ipynb": "N, SIZE, BIN = 3, 64, 16",
    "lsst_usage.ipynb": "N, SIZE, BIN = 3, 64, 16",
    "gpu_batching.ipynb": "N, SIZE, BIN, REPEATS = 3, 64, 16, 1",
    "tuning.ipynb": "N, SIZE, BIN = 3, 64, 16\nSCAN, STEPS = 3, 2",
    "fits_workflow.ipynb": "N, SIZE, BIN = 3, 64, 16",
    "rubin.ipynb": "PATCHES, VISITS, SIZE, BIN = 2, 3, 64, 16",  # needs the [lsst] extra
}
CELL_TIMEOUT = 300  # [s] per cell; a tiny cell takes a few seconds


def _read(name):
    return nbformat.read(NOTEBOOKS / name, as_version=4)


def _assigned(source):
    """Names assigned at the top level of a cell."""
    names = set()
    for node in ast.parse(source).body:
        for target in getattr(node, "targets", []):
            names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
    return names


def _parameters_cell(nb, name):
    index = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(index) == 1, f"{name}: tag exactly one code cell 'parameters', found {len(index)}"
    return index[0]


def _errors(nb):
    return [
        f"cell {i}: {out.ename}: {out.evalue}"
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code"
        for out in cell.outputs
        if out.output_type == "error"
    ]


def test_every_notebook_has_tiny_parameters():
    assert {p.name for p in NOTEBOOKS.glob("*.ipynb")} == set(TINY)
    for name, tiny in TINY.items():
        nb = _read(name)
        cell = nb.cells[_parameters_cell(nb, name)]
        unknown = _assigned(tiny) - _assigned(cell.source)
        assert not unknown, f"{name}: TINY sets {sorted(unknown)}, not in its parameters cell"


@pytest.mark.parametrize("name", sorted(TINY))
def test_notebook_is_committed_executed(name):
    """Committed with outputs, from one clean top-to-bottom run, without errors."""
    nb = _read(name)
    counts = [c.execution_count for c in nb.cells if c.cell_type == "code"]
    assert counts == list(range(1, len(counts) + 1)), f"{name}: re-run it top to bottom"
    assert any(c.outputs for c in nb.cells if c.cell_type == "code"), f"{name}: no outputs"
    assert not _errors(nb)


@pytest.mark.parametrize("name", sorted(TINY))
def test_notebook_runs_on_tiny_inputs(name, tmp_path):
    if name == "rubin.ipynb":
        pytest.importorskip("lsst.pipe.base")
    nb = _read(name)
    at = _parameters_cell(nb, name)
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(TINY[name]))
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError, with the traceback, on a failing cell
    assert not _errors(nb)
