"""Classroom exercises: write a piece of GPT-2 yourself, and have a checker grade it.

Each exercise is one function of the model (softmax, layer norm, attention, the AdamW step...)
with a plain signature: arrays in, arrays out. It comes with a statement (what to implement, the
shapes, the maths it starts from; a backward asks you to derive its gradients), hints revealed
one at a time (`hint(name, n)`), a stub to fill in, a reference solution (picogpt's own code),
and a checker that runs your function on hand-picked edge cases and on inputs drawn by
hypothesis, compares with the reference at tight tolerance, and, when they differ, says on
which input, by how much, and what the mistake probably is. A function that changes an input
it was given, in place, fails too.

    >>> import numpy as np
    >>> import picogpt.exercises as ex
    >>> ex.names()[:3]
    ['softmax', 'layernorm_forward', 'layernorm_backward']
    >>> print(ex.statement("softmax"))                # doctest: +ELLIPSIS
    ## Exercise `softmax`
    ...
    >>> def softmax(x):                               # a student's answer
    ...     e = np.exp(x - x.max(axis=-1, keepdims=True))
    ...     return e / e.sum(axis=-1, keepdims=True)
    >>> result = ex.check("softmax", softmax)         # prints the feedback   # doctest: +ELLIPSIS
    softmax: passed all ... inputs (7 hand-picked edge cases + ... drawn by hypothesis), ...
    >>> bool(result)
    True

From a shell: `python -m picogpt.exercises list | show NAME | hint NAME [N] | stub NAME |
check NAME FILE.py | make-student TEACHER.ipynb STUDENT.ipynb | teacher DST.ipynb` (see
`--help`). From a shell, `check` runs the file in a child process with a time limit, and
passes only on a verdict the child proves it wrote (see `grader`).

The exercises live one per module in `catalog/` (`ex01_softmax.py`, ...): the registry there
discovers every `exNN_<name>.py` module and registers its `EXERCISE`, in file-name order, so
adding an exercise is adding a file (see `catalog/__init__.py`).

For teachers: `teacher.ipynb`, next to this file, has one section per exercise with the solution
between nbgrader's `### BEGIN SOLUTION` / `### END SOLUTION` markers; `make_student` turns it
(or any notebook using those markers) into the students' version. See "For teachers" in the README.
"""

from importlib import resources

from ..errors import PicoGPTError
from .catalog import EXERCISES
from .checker import DEFAULT_MAX_EXAMPLES, CheckResult, run_check
from .student import make_student

__all__ = ["CheckResult", "DEFAULT_MAX_EXAMPLES", "check", "describe", "hint", "make_student", "names",
           "reference", "statement", "stub", "teacher_notebook_path"]


def _catalog():
    return EXERCISES


def get(name):
    """The Exercise called `name`, or one clear sentence listing the names there are."""
    exercises = _catalog()
    if name not in exercises:
        raise PicoGPTError(f"there is no exercise called {name!r}; the exercises are: {', '.join(exercises)}.")
    return exercises[name]


def names():
    """The exercise names, in teaching order."""
    return list(_catalog())


def describe(name):
    """A one-line description of the exercise."""
    return get(name).summary


def statement(name):
    """The statement (markdown): what to implement, the shapes, the maths to start from."""
    return get(name).statement


def hint(name, n=1):
    """Hint number n of exercise `name` (1 is the gentlest; the last one gives the result)."""
    ex = get(name)
    try:
        return ex.hint(n)
    except ValueError:
        raise PicoGPTError(f"{name} has hints 1 to {len(ex.hints)}; there is no hint {n}.") from None


def hint_count(name):
    """How many hints exercise `name` has."""
    return len(get(name).hints)


def stub(name):
    """The stub's source: `import numpy as np` and the function with `raise NotImplementedError`."""
    return get(name).stub


def reference(name):
    """The reference solution: a function with the stub's signature."""
    return get(name).reference


def check(name, fn, max_examples=DEFAULT_MAX_EXAMPLES, seed=0, verbose=True):
    """Check `fn` against exercise `name`; print the feedback (unless verbose=False) and return
    a CheckResult, truthy when `fn` passes.

    max_examples: how many inputs hypothesis draws after the hand-picked ones (more is stricter
        and slower). seed: which inputs it draws; a grader can use another seed than the one
        students practised with.

    This runs `fn` here, in this process, with no time limit (interrupt the kernel to stop it);
    `python -m picogpt.exercises check` runs a file in a child process with a --timeout.
    """
    result = run_check(get(name), fn, max_examples=max_examples, seed=seed)
    if verbose:
        print(result.feedback)
    return result


def teacher_notebook_path():
    """Where the teacher's template notebook is installed (copy it before editing)."""
    return resources.files(__name__).joinpath("teacher.ipynb")
