"""Make the students' notebook from the teacher's: solutions out, stubs in.

The markers are nbgrader's, so a notebook written for nbgrader works here unchanged:

- in a code cell, every region from a `### BEGIN SOLUTION` line to the next `### END SOLUTION`
  line (markers included) becomes one line, `raise NotImplementedError("your code here")`,
  indented like the BEGIN line; in a markdown cell it becomes `YOUR ANSWER HERE`, as in
  nbgrader. A cell that nbgrader's metadata marks as a solution, but that has no markers, is
  replaced whole, again as nbgrader does.
- every region from `### BEGIN HIDDEN TESTS` to `### END HIDDEN TESTS` is removed.
- code cells lose their outputs and execution counts.

Everything else (other cells, metadata, cell ids) is left as it is. The notebook is read and
written as plain JSON, so this works without Jupyter installed. A marker is a line whose text
is `#` signs followed by the marker's words (any number of `#`, as nbgrader allows).
"""

import json
import os
import re

from ..errors import PicoGPTError
from ..files import atomic_open

CODE_STUB = 'raise NotImplementedError("your code here")'
TEXT_STUB = "YOUR ANSWER HERE"

_MARKER = re.compile(r"^(\s*)#+\s*(BEGIN|END) (SOLUTION|HIDDEN TESTS)\b")


def make_student(src, dst, force=False):
    """Write the student version of notebook `src` to `dst`. Returns a summary dict:
    {"solutions": regions replaced, "hidden_tests": regions removed, "cells": cells changed}.
    Raises PicoGPTError with one sentence when src is missing, is not a notebook, or has
    unbalanced markers, and when `dst` is a folder or already exists, unless force=True
    (nothing is written then)."""
    nb = _read_notebook(src)
    if os.path.exists(dst) and os.path.samefile(src, dst):
        raise PicoGPTError(f"{dst} is the teacher's notebook itself: write the student version to another file.")
    check_output_path(dst, force, example="student.ipynb")
    summary = {"solutions": 0, "hidden_tests": 0, "cells": 0}
    for number, cell in enumerate(nb["cells"], start=1):
        if _student_cell(cell, number, summary):
            summary["cells"] += 1
    with atomic_open(dst, "w") as f:   # never a half-written notebook
        f.write(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return summary


def check_output_path(dst, force, example):
    """One sentence (a PicoGPTError) unless `dst` can name a new notebook file: not empty, not a
    folder, and not an existing file unless `force` (the teacher's `--force`)."""
    dst = os.fspath(dst)
    if not dst.strip():
        raise PicoGPTError(f"the notebook to write needs a file name, e.g. {example} (got an empty one).")
    if os.path.isdir(dst) or os.path.basename(dst) in ("", ".", ".."):
        raise PicoGPTError(f"{dst} is a folder: name the notebook to write in it, e.g. "
                           f"{os.path.join(dst, example)}.")
    if os.path.exists(dst) and not force:
        raise PicoGPTError(f"{dst} already exists: choose another name, or pass --force (force=True in Python) "
                           "to replace it.")


def _read_notebook(src):
    try:
        with open(src, encoding="utf-8") as f:
            nb = json.load(f)
    except FileNotFoundError:
        raise PicoGPTError(f"no such notebook: {src}.") from None
    except IsADirectoryError:
        raise PicoGPTError(f"{src} is a folder, not a notebook.") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise PicoGPTError(f"{src} is not a Jupyter notebook (it is not JSON).") from None
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list) or nb.get("nbformat") != 4:
        raise PicoGPTError(f"{src} is not a Jupyter notebook in format 4 (no 'cells' list, or 'nbformat' is not 4).")
    for number, cell in enumerate(nb["cells"], start=1):
        if not isinstance(cell, dict) or "cell_type" not in cell or "source" not in cell:
            raise PicoGPTError(f"{src} is not a valid notebook: cell {number} has no cell_type or source.")
    return nb


def _student_cell(cell, number, summary):
    """Turn one cell into its student version, in place. True when it changed."""
    was_list = isinstance(cell["source"], list)
    source = "".join(cell["source"]) if was_list else cell["source"]
    stub = CODE_STUB if cell["cell_type"] == "code" else TEXT_STUB
    new, hidden = _cut(source, "HIDDEN TESTS", None, number)
    new, solutions = _cut(new, "SOLUTION", stub, number)
    if not solutions and _nbgrader_solution(cell) and cell["cell_type"] in ("code", "markdown"):
        new, solutions = stub, 1      # nbgrader replaces a marker-less solution cell whole
    summary["solutions"] += solutions
    summary["hidden_tests"] += hidden
    changed = new != source
    if changed:
        cell["source"] = new.splitlines(keepends=True) if was_list else new
    if cell["cell_type"] == "code" and (cell.get("outputs") or cell.get("execution_count") is not None):
        cell["outputs"], cell["execution_count"] = [], None
        changed = True
    return changed


def _cut(source, kind, stub, number):
    """Replace each BEGIN kind .. END kind region by `stub` (or drop it when stub is None).
    Returns (new source, number of regions)."""
    out, inside, regions = [], None, 0
    lines = source.splitlines(keepends=True)
    for lineno, line in enumerate(lines, start=1):
        m = _MARKER.match(line)
        if m and m.group(3) == kind:
            indent, which = m.group(1), m.group(2)
            if which == "BEGIN":
                if inside is not None:
                    raise PicoGPTError(f"cell {number}, line {lineno}: a second '### BEGIN {kind}' before the "
                                       f"'### END {kind}' of the one on line {inside}.")
                inside, regions = lineno, regions + 1
                if stub is not None:
                    out.append(indent + stub + "\n")
            else:
                if inside is None:
                    raise PicoGPTError(f"cell {number}, line {lineno}: '### END {kind}' without a "
                                       f"'### BEGIN {kind}' before it.")
                inside = None
                if not line.endswith("\n") and out and out[-1].endswith("\n"):
                    out[-1] = out[-1][:-1]    # the region ended the cell: so does the stub
        elif inside is None:
            out.append(line)
    if inside is not None:
        raise PicoGPTError(f"cell {number}, line {inside}: '### BEGIN {kind}' has no '### END {kind}' after it.")
    return "".join(out), regions


def _nbgrader_solution(cell):
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return isinstance(meta, dict) and meta.get("solution") is True

