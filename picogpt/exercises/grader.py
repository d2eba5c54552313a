"""Grading a student's file: it runs in a child process, which must prove that it finished.

`python -m picogpt.exercises check NAME FILE.py` is what a teacher's grading loop runs on
every submission, and its exit status is the grade. So a submission must not be able to pass
by ending the process early, nor stop the grading by never ending. The parent:

1. starts a child Python (`child_main`), in its own process group, and writes a fresh random
   nonce to the child's stdin. The child reads it BEFORE it loads the submission;
2. the child loads the file, runs the checker, and writes a result record
   {"nonce", "verdict", "feedback"} to a file the parent named;
3. the parent counts as a pass only a record that carries this run's nonce and says "passed".
   No record (the submission called `os._exit(0)`, or crashed the interpreter), a record
   without the nonce (printed or forged by the submission), or a child still running after
   `timeout` seconds (then killed, with its own children) is a fail that says what happened
   and, from a progress file the child keeps, on which input.

A submission that does not even load (a syntax error, an exception at the top level,
`sys.exit()`) is a fail whose feedback shows the file, the line and the error.

This is a guard against accidents and naive tricks, not a sandbox: the submission runs with
the grader's rights and could, with effort, find the nonce in its own process or rewrite the
checker. Grade code you do not trust in a container, as with any autograder.
"""

import importlib.util
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import traceback
import uuid
from dataclasses import dataclass

from ..errors import PicoGPTError
from . import get
from .checker import describe_value, run_check

DEFAULT_TIMEOUT = 60        # seconds for one whole check; a correct answer takes 2-4 s at 300 inputs


class SubmissionError(Exception):
    """The student's file could not be run: a failed check, not a usage error (exit 1)."""


@dataclass
class Verdict:
    """What grading a file found: passed only on positive evidence; `feedback` says why."""

    passed: bool
    feedback: str


# --- the parent ----------------------------------------------------------------------------

def grade_file(name, path, max_examples, seed, timeout=DEFAULT_TIMEOUT):
    """Check the function NAME (or `solution`) of the Python file `path` in a child process.

    Returns a Verdict. Raises PicoGPTError when the file defines no such function (a usage
    error, as in-process `check` would).
    """
    nonce = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="picogpt-grade-") as tmp:
        record, progress = os.path.join(tmp, "record.json"), os.path.join(tmp, "progress.txt")
        code = "from picogpt.exercises.grader import child_main; child_main()"
        argv = [sys.executable, "-c", code, name, path, record, progress, str(max_examples), str(seed)]
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, env=_child_env(), start_new_session=True)
        try:
            try:
                proc.stdin.write(nonce.encode("ascii") + b"\n")
                proc.stdin.close()
            except BrokenPipeError:     # the child is already gone: its exit status will say why
                pass
            status = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(proc)
            return Verdict(False, f"{name}: FAILED: the check did not finish within {timeout:g} s (--timeout): "
                                  f"an infinite loop, or a function far too slow. {_last_progress(progress)}")
        except BaseException:           # Ctrl-C included: never leave the child running
            _kill(proc)
            raise
        return _read_record(name, path, record, progress, nonce, status)


def _read_record(name, path, record, progress, nonce, status):
    try:
        with open(record, encoding="utf-8") as f:
            rec = json.load(f)
    except (OSError, ValueError):
        how = (f"killed by signal {signal.Signals(-status).name}" if status < 0 and -status in _SIGNALS
               else f"exit status {status}")
        return Verdict(False, f"{name}: FAILED: {path} ended the checker before it gave a verdict ({how}, no "
                              "result): a submission must not exit (os._exit, sys.exit in a function) nor "
                              f"crash the interpreter. {_last_progress(progress)}")
    if not isinstance(rec, dict) or rec.get("nonce") != nonce:
        return Verdict(False, f"{name}: FAILED: the result of this check was not written by the checker "
                              "(it lacks this run's random nonce).")
    if rec.get("verdict") == "usage":
        raise PicoGPTError(rec.get("feedback", "the file could not be checked."))
    return Verdict(rec.get("verdict") == "passed", str(rec.get("feedback", "")))


_SIGNALS = {s.value for s in signal.Signals}


def _last_progress(progress):
    try:
        with open(progress, encoding="utf-8") as f:
            where = f.read().strip()
    except OSError:
        where = ""
    return f"It was {where}" if where else ""


def _child_env():
    """The parent's environment, with the folder holding this picogpt on the path: the child grades
    with the same code as the parent, installed or not. It goes last: for an installed picogpt that
    folder is all of site-packages, which must not override the user's own PYTHONPATH."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), root) if p)
    return env


def _kill(proc):
    """Stop the child and anything it started (its process group), then reap it."""
    try:
        if hasattr(os, "killpg"):
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


# --- the child -----------------------------------------------------------------------------

def child_main():
    """In the child: read the nonce, load the file, check it, write the record."""
    nonce = sys.stdin.readline().strip()         # before any submission code runs
    sys.stdin = open(os.devnull)                 # a submission that reads input gets EOF
    name, path, record, progress, max_examples, seed = sys.argv[1:7]
    fd = os.open(progress, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)

    def note(text):                              # unbuffered: what the parent reads if it must stop us
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, text.encode("utf-8", "replace"))

    def on_input(which, args):
        lines = [f"  {n} = {describe_value(v)}" for n, v in zip(exercise.arg_names, args)]
        note(f"running your function on {which}:\n" + "\n".join(lines))

    exercise = get(name)
    note(f"loading {path} (the code at its top level).")
    try:
        fn = load_function(path, name)
    except PicoGPTError as e:
        return _write_record(record, nonce, "usage", str(e))
    except SubmissionError as e:
        return _write_record(record, nonce, "failed", f"{name}: FAILED: {e}")
    try:
        result = run_check(exercise, fn, max_examples=int(max_examples), seed=int(seed), progress=on_input)
    except PicoGPTError as e:        # the checker itself cannot run here (no hypothesis installed)
        return _write_record(record, nonce, "usage", str(e))
    _write_record(record, nonce, "passed" if result.passed else "failed", result.feedback)


def _write_record(path, nonce, verdict, feedback):
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"nonce": nonce, "verdict": verdict, "feedback": feedback}, f)
    os.replace(tmp, path)


def load_function(path, name):
    """The function `name` (else `solution`) defined in the Python file at `path`.

    Raises SubmissionError when the file cannot be run (with the file, line and error), and
    PicoGPTError when it runs but defines no such function.
    """
    spec = importlib.util.spec_from_file_location(f"_submission_{uuid.uuid4().hex}", path)
    if spec is None or spec.loader is None:
        raise PicoGPTError(f"{path} cannot be loaded as Python: name it with a .py extension.")
    module = importlib.util.module_from_spec(spec)
    folder = os.path.dirname(os.path.abspath(path))
    sys.path.insert(0, folder)  # so the submission can import its own helper files
    try:
        spec.loader.exec_module(module)
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # SystemExit too: a submission must not end the grader
        raise SubmissionError(f"{path} could not be run:\n{_load_error(e, path)}") from None
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    for attr in (name, "solution"):
        fn = getattr(module, attr, None)
        if callable(fn):
            return fn
    raise PicoGPTError(f"{path} defines no function called {name!r} (nor one called 'solution').")


def _load_error(e, path):
    """The error, indented, with the line of the file that caused it (a SyntaxError shows its
    line and a caret under the spot)."""
    if isinstance(e, SyntaxError):
        text = "".join(traceback.format_exception_only(type(e), e))
    else:
        own = [f for f in traceback.extract_tb(e.__traceback__)
               if os.path.abspath(f.filename) == os.path.abspath(path)]
        where = (f'  File "{own[-1].filename}", line {own[-1].lineno}\n    {(own[-1].line or "").strip()}\n'
                 if own else "")
        text = where + traceback.format_exception_only(type(e), e)[-1]
    return "\n".join(f"  {line}" for line in text.rstrip("\n").splitlines())
