"""The chapter notebooks: each one runs top to bottom in a real Jupyter kernel, stays small, and
has an up-to-date executed page in docs/.

Every `notebooks/NN_*.ipynb` is found automatically and executed with nbclient, as a reader would
run it: a fresh `python3` kernel, the notebooks folder as working directory, cells in order. Any
error fails the test with the notebook, the cell and the traceback. A kernel that dies or loses its
connection (it happened once under heavy load) is replaced and the notebook run again from the top,
up to three times; a failing cell is never retried. The notebooks must run offline (they use the
bundled model or tiny configs, and only use GPT-2 weights already in weights/). How long each one
took is printed in a table at the end of the run.

The kernel imports the picogpt of this checkout: the repository root is put on PYTHONPATH, which
the kernel inherits, so this works with an installed package and from a plain clone alike.

Executing needs the `notebooks` extra (`pip install ".[notebooks]"`, which brings pytest too):
without nbclient or ipykernel those tests are skipped, saying so. The other checks need nothing.
Running and building share docs/build.py (`execute`, `source_hash`).
"""

import importlib.util
import json
import re

import pytest
from helpers import ROOT

NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
INDEXES = [NOTEBOOK_DIR / "README.md", ROOT / "README.md"]
MAX_BYTES = 100_000
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _load_build():
    spec = importlib.util.spec_from_file_location("docs_build", ROOT / "docs" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _load_build()


def _importable(module):
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: a module in sys.modules without a spec
        return False


HAVE_JUPYTER = all(_importable(m) for m in ("nbclient", "nbformat", "ipykernel", "zmq"))
NO_JUPYTER = 'executing the notebooks needs nbclient, nbformat and ipykernel: pip install ".[notebooks]"'

params = [pytest.param(p, id=p.stem) for p in NOTEBOOKS]


def test_there_are_chapter_notebooks():
    assert NOTEBOOKS, f"no notebooks/NN_*.ipynb found in {NOTEBOOK_DIR}"


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_JUPYTER, reason=NO_JUPYTER)
@pytest.mark.parametrize("path", params)
def test_notebook_runs(path, monkeypatch, record_property):
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    # The kernel is a child process: it inherits this environment, so it imports this checkout.
    monkeypatch.setenv("PYTHONPATH", build.kernel_pythonpath())
    try:
        _, seconds = build.execute(path, log=print)
    except CellExecutionError as e:
        # nbclient's message holds the cell's source and its traceback (coloured by IPython).
        pytest.fail(f"{path.name}: {ANSI.sub('', str(e))}", pytrace=False)
    except CellTimeoutError as e:
        pytest.fail(f"{path.name}: a cell ran longer than {build.CELL_TIMEOUT_S} s: {e}", pytrace=False)
    except DeadKernelError as e:
        pytest.fail(f"{path.name}: the kernel died three times (out of memory?): {e}", pytrace=False)
    record_property("notebook_seconds", seconds)   # conftest prints the table at the end


@pytest.mark.skipif(not HAVE_JUPYTER, reason=NO_JUPYTER)
def test_a_dead_kernel_is_retried_and_a_failing_cell_is_not(monkeypatch):
    import nbclient
    import zmq
    from nbclient.exceptions import CellExecutionError, DeadKernelError

    runs = []

    def fails_with(*errors):
        def execute(client):
            runs.append(client)
            if len(runs) <= len(errors):
                raise errors[len(runs) - 1]
        return execute

    said = []
    monkeypatch.setattr(nbclient.NotebookClient, "execute", fails_with(DeadKernelError("Kernel died"),
                                                                       zmq.ZMQError(msg="Socket operation on non-socket")))
    build.execute(NOTEBOOKS[0], log=said.append)
    assert len(runs) == 3 and len(said) == 2 and "fresh kernel" in said[0]
    assert runs[0] is not runs[1]                                   # a new client, a new kernel
    runs.clear()
    monkeypatch.setattr(nbclient.NotebookClient, "execute", fails_with(*[DeadKernelError("Kernel died")] * 3))
    with pytest.raises(DeadKernelError):
        build.execute(NOTEBOOKS[0], log=said.append)
    assert len(runs) == 3                                           # three tries, then it says so
    runs.clear()
    monkeypatch.setattr(nbclient.NotebookClient, "execute", fails_with(CellExecutionError("tb", "ValueError", "bad")))
    with pytest.raises(CellExecutionError):
        build.execute(NOTEBOOKS[0], log=said.append)
    assert len(runs) == 1                                           # a failing cell: never again


LOSE_THE_FIRST_REPLY = """
import os, zmq
if not os.path.exists({marker!r}):              # the first kernel only
    open({marker!r}, "w").close()
    kernel = get_ipython().kernel
    send = kernel.session.send
    def lose_the_reply(stream, msg_type, *args, **kwargs):
        if msg_type == "execute_reply":          # what ipykernel 7 did under load
            kernel.session.send = send
            raise zmq.ZMQError(msg="Socket operation on non-socket")
        return send(stream, msg_type, *args, **kwargs)
    kernel.session.send = lose_the_reply
"""


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_JUPYTER, reason=NO_JUPYTER)
def test_a_kernel_that_loses_a_reply_is_replaced(tmp_path, monkeypatch):
    """A real kernel finishes the cell but its reply never comes: the notebook runs again in a
    fresh kernel, within the grace period rather than the cell timeout."""
    import nbformat

    path = tmp_path / "lost_reply.ipynb"
    cells = [nbformat.v4.new_code_cell(LOSE_THE_FIRST_REPLY.format(marker=str(tmp_path / "lost"))),
             nbformat.v4.new_code_cell("print(6 * 7)")]
    nbformat.write(nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}}), path)
    monkeypatch.setenv("PYTHONPATH", build.kernel_pythonpath())
    said = []
    nb, seconds = build.execute(path, log=said.append, reply_grace_s=2)
    assert len(said) == 1 and "DeadKernelError" in said[0], said
    assert nb.cells[1].outputs[0]["text"] == "42\n"


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


@pytest.mark.parametrize("path", params)
def test_the_executed_page_is_built_from_these_sources(path):
    """docs/NN_*.html was built from the notebook as it is now (docs/index.json holds the hash of
    the source cells it was built from): change a chapter, rebuild its page."""
    index = json.loads(build.INDEX.read_text()) if build.INDEX.is_file() else {}
    entry = index.get(path.stem)
    rebuild = f"rebuild its page: python docs/build.py {path.stem[:2]}"
    assert entry and (build.DOCS / entry["html"]).is_file(), f"{path.name} has no page in docs/: {rebuild}"
    assert entry["source_sha256"] == build.source_hash(path), f"{path.name} changed since docs/{entry['html']}: {rebuild}"


def test_every_chapter_is_listed():
    """The chapter index (notebooks/README.md or the README) names every notebook."""
    text = "\n".join(p.read_text(encoding="utf-8") for p in INDEXES if p.is_file())
    missing = [p.name for p in NOTEBOOKS if p.name not in text]
    assert not missing, f"not listed in notebooks/README.md or README.md: {missing}"
