"""The chapter notebooks: each one runs top to bottom in a real Jupyter kernel, and stays small.

Every `notebooks/NN_*.ipynb` is found automatically and executed with nbclient, as a reader would
run it: a fresh `python3` kernel, the notebooks folder as working directory, cells in order. Any
error fails the test with the notebook, the cell and the traceback. The notebooks must run offline
(they use the bundled model or tiny configs, and only use GPT-2 weights already in weights/).

The kernel imports the picogpt of this checkout: the repository root is put on PYTHONPATH, which
the kernel inherits, so this works with an installed package and from a plain clone alike.

Executing needs the `notebooks` extra (`pip install -e '.[test,notebooks]'`): without nbclient or
ipykernel those tests are skipped, saying so. The checks on the committed files need nothing.
"""

import importlib.util
import json
import os
import re
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
INDEXES = [NOTEBOOK_DIR / "README.md", ROOT / "README.md"]

CELL_TIMEOUT_S = 300
MAX_BYTES = 100_000
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _importable(module):
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: a module in sys.modules without a spec
        return False


HAVE_JUPYTER = all(_importable(m) for m in ("nbclient", "nbformat", "ipykernel"))
NO_JUPYTER = ("executing the notebooks needs nbclient, nbformat and ipykernel: "
              "pip install -e '.[test,notebooks]'")

params = [pytest.param(p, id=p.stem) for p in NOTEBOOKS]


def test_there_are_chapter_notebooks():
    assert NOTEBOOKS, f"no notebooks/NN_*.ipynb found in {NOTEBOOK_DIR}"


def _error_report(nb, path):
    """The first cell with an error output: its number, source and traceback, as text."""
    for n, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                tb = ANSI.sub("", "\n".join(out.get("traceback", [])))   # IPython colours its tracebacks
                return f"{path.name}, cell {n}:\n{cell.source}\n---\n{out['ename']}: {out['evalue']}\n{tb}"
    return None


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_JUPYTER, reason=NO_JUPYTER)
@pytest.mark.parametrize("path", params)
def test_notebook_runs(path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    # The kernel is a child process: it inherits this environment, so it imports this checkout.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    t0 = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError as e:
        pytest.fail(_error_report(nb, path) or f"{path.name}: {e}", pytrace=False)
    except CellTimeoutError as e:
        pytest.fail(f"{path.name}: a cell ran longer than {CELL_TIMEOUT_S} s: {e}", pytrace=False)
    except DeadKernelError as e:
        pytest.fail(f"{path.name}: the kernel died (out of memory?): {e}", pytrace=False)
    print(f"{path.name}: executed in {time.perf_counter() - t0:.1f} s")


@pytest.mark.parametrize("path", params)
def test_notebook_is_committed_clean_and_small(path):
    """Outputs are stripped before committing: small diffs, small files, no stale results."""
    size = path.stat().st_size
    assert size < MAX_BYTES, f"{path.name} is {size / 1000:.0f} KB (limit {MAX_BYTES / 1000:.0f} KB)"
    nb = json.loads(path.read_text(encoding="utf-8"))
    dirty = [n for n, cell in enumerate(nb["cells"])
             if cell["cell_type"] == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)]
    assert not dirty, (f"{path.name}: cells {dirty} have outputs or execution counts; clear them before "
                       f"committing (jupyter nbconvert --clear-output --inplace {path.name})")
    assert nb["metadata"].get("kernelspec", {}).get("language") == "python"


def test_every_chapter_is_listed():
    """The chapter index (notebooks/README.md or the README) names every notebook."""
    text = "\n".join(p.read_text(encoding="utf-8") for p in INDEXES if p.is_file())
    missing = [p.name for p in NOTEBOOKS if p.name not in text]
    assert not missing, f"not listed in notebooks/README.md or README.md: {missing}"
