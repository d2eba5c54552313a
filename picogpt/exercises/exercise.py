"""What an exercise is: a statement, a stub, a reference, inputs to try, and hints.

The hints are found in a fixed order, most specific first (see `Exercise.hint_for`):
the exercise's own detectors, which look at the failing input and your output ("rows don't
sum to 1", "NaN with large logits"); then its classic mistakes, each a function computing
what that mistake would output (if yours equals it, the hint names the mistake); then generic
patterns (a constant factor, a flipped sign); then a hint for the output that is wrong; and
always, at least, the exercise's general hint.
"""

import copy
from dataclasses import dataclass, field

import numpy as np

from .checker import compare, quietly


@dataclass
class Exercise:
    name: str
    summary: str                 # one line, for `list`
    arg_names: tuple             # the function's arguments, in order
    outputs: tuple               # names of what it returns, in order
    reference: callable          # the reference solution, same signature as the stub
    statement: str               # markdown: what to implement, shapes, maths, a hint
    stub_function: str           # the stub's source: signature, docstring, raise NotImplementedError
    examples_fn: callable        # () -> [(label, args)], hand-picked, simplest first
    strategy: callable           # () -> a hypothesis strategy of args tuples
    hint: str                    # the general hint, the last resort
    detectors: list = field(default_factory=list)       # [outcome -> str or None]
    mistakes: list = field(default_factory=list)        # [(hint, fn with the stub's signature)]
    output_hints: dict = field(default_factory=dict)    # output label -> hint when it is wrong
    inplace: tuple = ()          # arguments the function must update in place (compared too)

    @property
    def inplace_positions(self):
        return tuple(self.arg_names.index(n) for n in self.inplace)

    @property
    def output_labels(self):
        return self.outputs + tuple(f"{n} after your call" for n in self.inplace)

    def examples(self):
        return self.examples_fn()

    @property
    def stub(self):
        """The stub as a file a student can fill in: imports, then the function."""
        return "import numpy as np\n\n\n" + self.stub_function

    def hint_for(self, outcome):
        """The most specific hint for a failed Outcome (see the module docstring)."""
        if outcome.error is not None and isinstance(outcome.error, NotImplementedError):
            # Not the general hint: on a stub it would hand out the answer before any attempt.
            return (f"start from the statement: print(picogpt.exercises.statement({self.name!r})), or "
                    f"`python -m picogpt.exercises show {self.name}` in a shell.")
        for detect in self.detectors:
            found = detect(outcome)
            if found:
                return found
        if outcome.got is None:
            return self.hint
        for hint, mistake in self.mistakes:
            if _matches(self, mistake, outcome):
                return hint
        wrong = [m for m in outcome.mismatches if m.kind == "values"]
        for m in wrong:
            i = self.output_labels.index(m.output)
            found = pattern_hint(m.output, outcome.got[i], outcome.expected[i])
            if found:
                return found
        for m in outcome.mismatches:
            if m.output in self.output_hints:
                return self.output_hints[m.output]
        return self.hint


def _matches(ex, mistake, outcome):
    """True when the mistake, run on the failing input, gives exactly your (wrong) outputs."""
    try:
        out = quietly(mistake, *copy.deepcopy(outcome.args))
    except Exception:
        return False
    out = out if len(ex.outputs) > 1 else (out,)
    for label, mine, theirs in zip(ex.outputs, outcome.got, out):
        if compare(label, mine, np.asarray(theirs, dtype=np.float64)) is not None:
            return False
    return True


def pattern_hint(label, got, expected):
    """A sentence for a constant factor, a flipped sign, or a constant offset; else ""."""
    got = np.asarray(got, dtype=np.float64)
    if got.shape != expected.shape or not np.isfinite(got).all() or not np.isfinite(expected).all():
        return ""
    big = np.abs(expected) > 1e-6 * max(1.0, np.abs(expected).max(initial=0.0))
    if big.sum() >= 2:
        ratio = got[big] / expected[big]
        r = float(np.median(ratio))
        if abs(r - 1) > 1e-6 and np.all(np.abs(ratio - r) <= 1e-6 * abs(r)):
            if abs(r + 1) < 1e-6:
                return f"'{label}' is exactly -1 times the expected one everywhere: the sign is flipped."
            return (f"'{label}' is {r:.6g} times the expected one at every entry: a constant factor is off "
                    "(a missing or extra scale, a division by the wrong count).")
    offset = got - expected
    c = float(np.median(offset))
    if got.size >= 2 and abs(c) > 1e-6 and np.all(np.abs(offset - c) <= 1e-6 * abs(c)):
        return f"'{label}' is the expected one plus the constant {c:.6g} everywhere: an offset is off."
    return ""
