"""`python -m picogpt.exercises`: list, read, check and hand out the exercises.

    list                              the exercises, one line each
    show NAME                         the statement and the stub
    stub NAME                         only the stub (python -m picogpt.exercises stub softmax > softmax.py)
    check NAME FILE.py [--examples N] [--seed S]
                                      check the function NAME (or `solution`) defined in FILE.py
    make-student SRC.ipynb DST.ipynb  the students' notebook: solutions replaced by stubs
    teacher DST.ipynb                 a copy of the teacher's template notebook to edit

Exit status: 0 done (for `check`: passed); 1 `check` ran and the function failed, or FILE.py
could not even be run; 2 the command could not be carried out as asked (an unknown exercise, a
missing file, no such function, a notebook with unbalanced markers), with one sentence saying why.
"""

import argparse
import importlib.util
import os
import shutil
import sys
import traceback
import uuid

from ..cli import run_command
from ..errors import PicoGPTError
from ..files import atomic_open
from . import DEFAULT_MAX_EXAMPLES, check, describe, get, names, teacher_notebook_path
from .student import make_student


class SubmissionError(Exception):
    """The student's file could not be run: a failed check, not a usage error (exit 1)."""


def build_parser():
    p = argparse.ArgumentParser(prog="python -m picogpt.exercises",
                                description="picogpt's classroom exercises and their checker.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("list", help="list the exercises")
    for name, text in (("show", "print an exercise's statement and stub"), ("stub", "print only the stub")):
        sub.add_parser(name, help=text).add_argument("name", help="the exercise")
    c = sub.add_parser("check", help="check a function from a Python file")
    c.add_argument("name", help="the exercise")
    c.add_argument("file", help="a .py file defining a function called NAME (or `solution`)")
    c.add_argument("--examples", type=int, default=DEFAULT_MAX_EXAMPLES,
                   help=f"inputs drawn by hypothesis after the hand-picked ones (default {DEFAULT_MAX_EXAMPLES})")
    c.add_argument("--seed", type=int, default=0, help="which inputs hypothesis draws (default 0)")
    m = sub.add_parser("make-student", help="make the students' notebook from the teacher's")
    m.add_argument("src", help="the teacher's notebook")
    m.add_argument("dst", help="where to write the students' notebook")
    t = sub.add_parser("teacher", help="copy the teacher's template notebook, to edit")
    t.add_argument("dst", help="where to write it")
    return p


def main(argv=None):
    return run_command(_dispatch, build_parser().parse_args(argv))


def _dispatch(args):
    try:
        return COMMANDS[args.command](args)
    except SubmissionError as e:  # the student's file does not even run: a fail (1), not a usage error (2)
        print(f"FAILED: {e}", file=sys.stderr)
        return 1


def _list(args):
    width = max(len(n) for n in names())
    for name in names():
        print(f"{name:<{width}}  {describe(name)}")
    return 0


def _show(args):
    ex = get(args.name)
    print(ex.statement)
    print("```python")
    print(ex.stub, end="")
    print("```")
    return 0


def _stub(args):
    print(get(args.name).stub, end="")
    return 0


def _check(args):
    get(args.name)  # an unknown exercise is a usage error, before any student code runs
    if args.examples < 0:
        raise PicoGPTError(f"--examples must be >= 0, got {args.examples}.")
    fn = load_function(args.file, args.name)
    return 0 if check(args.name, fn, max_examples=args.examples, seed=args.seed) else 1


def load_function(path, name):
    """The function `name` (else `solution`) defined in the Python file at `path`."""
    if not os.path.isfile(path):
        raise PicoGPTError(f"no such file: {path}." if not os.path.exists(path) else f"{path} is not a file.")
    spec = importlib.util.spec_from_file_location(f"_submission_{uuid.uuid4().hex}", path)
    if spec is None or spec.loader is None:
        raise PicoGPTError(f"{path} cannot be loaded as Python: name it with a .py extension.")
    module = importlib.util.module_from_spec(spec)
    folder = os.path.dirname(os.path.abspath(path))
    sys.path.insert(0, folder)  # so the submission can import its own helper files
    try:
        spec.loader.exec_module(module)
    except BaseException as e:  # SystemExit too: a submission must not end the grader
        if isinstance(e, KeyboardInterrupt):
            raise
        last = traceback.format_exception_only(type(e), e)[-1].strip()
        raise SubmissionError(f"{path} could not be run: {last}") from None
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    for attr in (name, "solution"):
        fn = getattr(module, attr, None)
        if callable(fn):
            return fn
    raise PicoGPTError(f"{path} defines no function called {name!r} (nor one called 'solution').")


def _make_student(args):
    s = make_student(args.src, args.dst)
    print(f"wrote {args.dst}: {s['solutions']} solution regions replaced by stubs, "
          f"{s['hidden_tests']} hidden-test regions removed, outputs cleared.")
    return 0


def _teacher(args):
    if os.path.exists(args.dst):
        raise PicoGPTError(f"{args.dst} already exists: choose another name, or remove it first.")
    with teacher_notebook_path().open("rb") as src, atomic_open(args.dst) as dst:
        shutil.copyfileobj(src, dst)
    print(f"wrote {args.dst}: edit it, then `python -m picogpt.exercises make-student {args.dst} STUDENT.ipynb`.")
    return 0


COMMANDS = {"list": _list, "show": _show, "stub": _stub, "check": _check, "make-student": _make_student,
            "teacher": _teacher}

if __name__ == "__main__":
    sys.exit(main())
