"""`python -m picogpt.exercises`: list, read, check and hand out the exercises.

    list                              the exercises, one line each
    show NAME                         the statement and the stub
    hint NAME [N]                     hints 1 to N (default 1): a nudge first, the result last
    stub NAME                         only the stub (python -m picogpt.exercises stub softmax > softmax.py)
    check NAME FILE.py [--examples N] [--seed S] [--timeout SECONDS]
                                      check the function NAME (or `solution`) defined in FILE.py
    make-student SRC.ipynb DST.ipynb [--force]
                                      the students' notebook: solutions replaced by stubs
    teacher DST.ipynb [--force]       a copy of the teacher's template notebook to edit

`check` runs FILE.py in a child process (see picogpt/exercises/grader.py): it passes only when
the child writes a verdict carrying a random nonce of this run, and fails when the file exits
early, crashes, or takes longer than --timeout (default 60 s) for the whole check.
`make-student` and `teacher` never replace an existing file unless given --force.

Exit status: 0 done (for `check`: passed); 1 `check` ran and the function failed, or FILE.py
could not even be run, ended early or timed out; 2 the command could not be carried out as
asked (an unknown exercise, a missing file, no such function, a notebook with unbalanced
markers, an output that exists or is a folder), with one sentence saying why.
"""

import argparse
import os
import shutil
import sys

from ..cli import run_command
from ..errors import PicoGPTError
from ..files import atomic_open
from . import DEFAULT_MAX_EXAMPLES, describe, get, hint, hint_count, names, teacher_notebook_path
from .grader import DEFAULT_TIMEOUT, grade_file
from .student import check_output_path, make_student


def build_parser():
    p = argparse.ArgumentParser(prog="python -m picogpt.exercises",
                                description="picogpt's classroom exercises and their checker.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("list", help="list the exercises")
    for name, text in (("show", "print an exercise's statement and stub"), ("stub", "print only the stub")):
        sub.add_parser(name, help=text).add_argument("name", help="the exercise")
    h = sub.add_parser("hint", help="print an exercise's hints, one more each time you ask")
    h.add_argument("name", help="the exercise")
    h.add_argument("n", nargs="?", type=int, default=1, help="show hints 1 to N (default 1)")
    c = sub.add_parser("check", help="check a function from a Python file")
    c.add_argument("name", help="the exercise")
    c.add_argument("file", help="a .py file defining a function called NAME (or `solution`)")
    c.add_argument("--examples", type=int, default=DEFAULT_MAX_EXAMPLES,
                   help=f"inputs drawn by hypothesis after the hand-picked ones (default {DEFAULT_MAX_EXAMPLES})")
    c.add_argument("--seed", type=int, default=0, help="which inputs hypothesis draws (default 0)")
    c.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                   help=f"seconds the whole check may take before it counts as a fail (default {DEFAULT_TIMEOUT})")
    m = sub.add_parser("make-student", help="make the students' notebook from the teacher's")
    m.add_argument("src", help="the teacher's notebook")
    m.add_argument("dst", help="where to write the students' notebook (a new file)")
    m.add_argument("--force", action="store_true", help="replace DST if it exists")
    t = sub.add_parser("teacher", help="copy the teacher's template notebook, to edit")
    t.add_argument("dst", help="where to write it (a new file)")
    t.add_argument("--force", action="store_true", help="replace DST if it exists")
    return p


def main(argv=None):
    return run_command(_dispatch, build_parser().parse_args(argv))


def _dispatch(args):
    return COMMANDS[args.command](args)


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


def _hint(args):
    hint(args.name, args.n)     # an unknown exercise or hint number: one sentence before any output
    total = hint_count(args.name)
    for i in range(1, args.n + 1):
        print(f"Hint {i} of {total}: {hint(args.name, i)}\n")
    if args.n < total:
        print(f"Still stuck? `python -m picogpt.exercises hint {args.name} {args.n + 1}`.")
    return 0


def _stub(args):
    print(get(args.name).stub, end="")
    return 0


def _check(args):
    get(args.name)  # an unknown exercise is a usage error, before any student code runs
    if args.examples < 0:
        raise PicoGPTError(f"--examples must be >= 0, got {args.examples}.")
    if not args.timeout > 0:    # `not >` also refuses NaN
        raise PicoGPTError(f"--timeout must be a number of seconds > 0, got {args.timeout:g}.")
    path = args.file
    if not os.path.isfile(path):
        raise PicoGPTError(f"no such file: {path}." if not os.path.exists(path) else f"{path} is not a file.")
    sys.stdout.flush()      # the child's prints and ours in the order they happen
    verdict = grade_file(args.name, path, args.examples, args.seed, args.timeout)
    print(verdict.feedback)
    return 0 if verdict.passed else 1


def _make_student(args):
    s = make_student(args.src, args.dst, force=args.force)
    print(f"wrote {args.dst}: {s['solutions']} solution regions replaced by stubs, "
          f"{s['hidden_tests']} hidden-test regions removed, outputs cleared.")
    return 0


def _teacher(args):
    check_output_path(args.dst, args.force, example="course.ipynb")
    with teacher_notebook_path().open("rb") as src, atomic_open(args.dst) as dst:
        shutil.copyfileobj(src, dst)
    print(f"wrote {args.dst}: edit it, then `python -m picogpt.exercises make-student {args.dst} STUDENT.ipynb`.")
    return 0


COMMANDS = {"list": _list, "show": _show, "hint": _hint, "stub": _stub, "check": _check,
            "make-student": _make_student, "teacher": _teacher}

if __name__ == "__main__":
    sys.exit(main())
