"""Build the executed chapters as web pages, readable without installing anything.

    pip install ".[notebooks]"
    python docs/build.py              # every chapter: about 10 minutes on two CPU cores
    python docs/build.py 03 10        # only the chapters whose names start with 03 or 10

Each notebooks/NN_*.ipynb runs top to bottom in a fresh Jupyter kernel (nbclient, as
tests/test_notebooks.py runs it), and nbconvert writes the result, outputs and plots included,
to docs/NN_*.html; docs/index.html lists them. The sources in notebooks/ stay cleared.

docs/index.json records, for each chapter, the SHA-256 of its source cells and how long it ran.
tests/test_notebooks.py fails when a chapter's sources no longer match the page built from them,
so a change to a notebook is committed with its rebuilt page.
"""

import hashlib
import html
import json
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"
DOCS = ROOT / "docs"
INDEX = DOCS / "index.json"
CELL_TIMEOUT_S = 300


def chapters():
    return sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


def source_hash(path):
    """SHA-256 of what a reader writes in a notebook: each cell's type and source, in order
    (not outputs, ids or metadata)."""
    cells = json.loads(Path(path).read_text(encoding="utf-8"))["cells"]
    text = json.dumps([(c["cell_type"], "".join(c["source"])) for c in cells], ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def kernel_pythonpath():
    """PYTHONPATH for the kernel: this checkout first, so the chapters import its picogpt."""
    return os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))


def _kernel_failures():
    """The errors of a kernel that died or lost its connection -- not of a cell that failed."""
    import zmq
    from nbclient.exceptions import DeadKernelError

    return DeadKernelError, zmq.ZMQError, ConnectionError


REPLY_GRACE_S = 60


def _client(nb, reply_grace_s):
    """nbclient's NotebookClient, which also notices a kernel that finished a cell but whose reply
    never came. Under heavy load an ipykernel 7 kernel has failed to send its reply ("ZMQError:
    Socket operation on non-socket", in the kernel) after running the cell; nbclient alone then
    waits out the cell timeout and reports a slow cell. Here, once the kernel has said on its IOPub
    channel that the cell is done, the reply gets `reply_grace_s`; after that the wait is cancelled,
    which nbclient reports as a dead kernel (DeadKernelError), and execute() starts afresh."""
    import asyncio

    from nbclient import NotebookClient

    class Client(NotebookClient):
        async def _async_poll_output_msg(self, parent_msg_id, cell, cell_index):
            await super()._async_poll_output_msg(parent_msg_id, cell, cell_index)
            self._watchdog = asyncio.ensure_future(self._expect_reply(self.task_poll_for_reply))

        async def _expect_reply(self, reply):
            done, _ = await asyncio.wait([reply], timeout=reply_grace_s)
            if not done:
                reply.cancel()

    return Client(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK_DIR)}})


def execute(path, attempts=3, log=print, reply_grace_s=REPLY_GRACE_S):
    """Run the notebook at `path` in a fresh kernel: (executed notebook, seconds).

    A kernel that dies, loses its sockets or loses a reply (under memory pressure or heavy load)
    is replaced and the notebook run again from the top, up to `attempts` times; a cell that
    raises, or runs longer than CELL_TIMEOUT_S, is never retried: nbclient's CellExecutionError
    or CellTimeoutError propagates on the first time. The kernel inherits this process's
    environment: put the checkout on PYTHONPATH (kernel_pythonpath) to run its picogpt."""
    import nbformat

    for attempt in range(1, attempts + 1):
        nb = nbformat.read(path, as_version=4)
        t0 = time.perf_counter()
        try:
            _client(nb, reply_grace_s).execute()
        except _kernel_failures() as e:
            if attempt == attempts:
                raise
            log(f"{Path(path).name}: the kernel died or lost its connection ({type(e).__name__}: {e}); "
                f"running it again in a fresh kernel ({attempt + 1} of {attempts})")
            continue
        return nb, time.perf_counter() - t0


BIG_IMAGE_BYTES = 150_000


def shrink_images(nb):
    """Plots whose PNG is over BIG_IMAGE_BYTES (noisy heat maps) become JPEG, where that is
    smaller, so the pages stay small; the rest stay PNG, sharp."""
    import base64
    import io

    from PIL import Image

    for cell in nb.cells:
        for out in cell.get("outputs", []):
            png = out.get("data", {}).get("image/png")
            if not png or len(png) < BIG_IMAGE_BYTES:
                continue
            jpeg = io.BytesIO()
            Image.open(io.BytesIO(base64.b64decode(png))).convert("RGB").save(jpeg, "JPEG", quality=85)
            encoded = base64.b64encode(jpeg.getvalue()).decode()
            if len(encoded) < len(png):
                del out.data["image/png"]
                out.data["image/jpeg"] = encoded


STYLE = re.compile(r"<style[^>]*>(.*?)</style>", re.S)
MERMAID = re.compile(r"<script type=\"module\">(?:(?!</script>).)*mermaid.*?</script>", re.S)


def share_head(page):
    """(page, style sheets): the template's style sheets, the same on every page, taken out of
    the page (they go to docs/style.css once), and the Mermaid diagram loader dropped (no chapter
    draws one)."""
    sheets = STYLE.findall(page)
    page = MERMAID.sub("", STYLE.sub("", page))
    link = '<link rel="stylesheet" href="style.css"/>'
    return (page if link in page else page.replace("</head>", link + "\n</head>", 1)), sheets


def export(nb, title):
    """The executed notebook as an HTML page (plots embedded), and its style sheets."""
    from nbconvert import HTMLExporter

    page, _ = HTMLExporter(template_name="lab").from_notebook_node(nb, resources={"metadata": {"name": title}})
    return share_head(page)


def index_page(entries):
    rows = "\n".join(f'<li><a href="{html.escape(e["html"])}">{html.escape(e["title"])}</a></li>' for e in entries)
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>picogpt: the chapters</title></head>\n"
            "<body style=\"font-family: sans-serif; max-width: 50em; margin: 2em auto\">\n"
            "<h1>picogpt: the chapters, executed</h1>\n"
            "<p>Built from <code>notebooks/</code> by <code>python docs/build.py</code>. "
            "To run them yourself: <code>pip install \".[notebooks]\"</code>, then <code>jupyter lab</code> "
            "in <code>notebooks/</code>.</p>\n<ol>\n" + rows + "\n</ol>\n</body></html>\n")


def write(path, text):
    from picogpt.files import atomic_open

    with atomic_open(path, "w") as f:
        f.write(text)


def main(prefixes):
    os.environ["PYTHONPATH"] = kernel_pythonpath()
    index = json.loads(INDEX.read_text()) if INDEX.is_file() else {}
    for path in chapters():
        if prefixes and not path.stem.startswith(tuple(prefixes)):
            continue
        nb, seconds = execute(path)
        title = nb.cells[0].source.splitlines()[0].lstrip("# ").strip() if nb.cells else path.stem
        shrink_images(nb)
        page, shared = export(nb, title)
        write(DOCS / f"{path.stem}.html", page)
        write(DOCS / "style.css", "\n".join(shared))
        index[path.stem] = {"html": f"{path.stem}.html", "title": title, "seconds": round(seconds, 1),
                            "source_sha256": source_hash(path)}
        index = {k: index[k] for k in sorted(index) if (NOTEBOOK_DIR / f"{k}.ipynb").is_file()}
        write(INDEX, json.dumps(index, indent=1, ensure_ascii=False) + "\n")   # after each page: a
        write(DOCS / "index.html", index_page(index.values()))                  # failure keeps the rest
        print(f"{path.name}: {seconds:.0f} s -> docs/{path.stem}.html")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main(sys.argv[1:])
