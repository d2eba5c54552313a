"""The exercises, one module each, found by name: adding an exercise is adding a file.

The registry DISCOVERS its exercises (nothing lists them by hand): every module of this
package whose name is `ex<NN>_<name>.py` (two digits, then the exercise's name) is imported,
and its module-level `EXERCISE` (an `Exercise`) is registered. The order of the file names is
the teaching order, so `ex11_...` comes after `ex10_...`. `common.py` holds what several
exercises share (inputs drawn with hypothesis, the tests detectors make); it is not an
exercise.

Every reference is a thin wrapper around picogpt's own code (layers, sampling, optim, the KV
cache) that gives it the exercise's plain signature: arrays in, arrays out, no cache objects.
So the checker holds students to exactly what the library computes.

Inputs come in two kinds. `examples` are hand-picked and readable, simplest first, then the
edge cases the exercise is about (large logits, ties, tiny variances, an empty cache). The
`strategy` draws many more with hypothesis; it is imported only when a check runs, so that
`list`, `show` and `hint` work without it.
"""

import importlib
import pkgutil
import re

from ..exercise import Exercise

MODULE_NAME = re.compile(r"ex\d\d_\w+$")


def discover():
    """{name: Exercise} for every `exNN_*.py` module here, in the order of the file names."""
    found = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not MODULE_NAME.match(info.name):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        exercise = getattr(module, "EXERCISE", None)
        if not isinstance(exercise, Exercise):
            raise TypeError(f"{module.__name__} defines no EXERCISE (an Exercise)")
        if exercise.name in found:
            raise ValueError(f"two exercises are called {exercise.name!r} ({module.__name__} is the second)")
        found[exercise.name] = exercise
    return found


EXERCISES = discover()
