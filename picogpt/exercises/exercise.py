"""What an exercise is: a statement, a stub, a reference, inputs to try, and hints.

Two kinds of hints:
- `hints` are for a student who is stuck before or between attempts: revealed one at a time
  on request (`python -m picogpt.exercises hint NAME [N]`, `picogpt.exercises.hint(NAME, N)`),
  from a nudge to the result, so that the statement can ask for the derivation instead of
  printing the formula to type in.
- The feedback after a failed check carries the most specific hint it can find, in a fixed
  order (see `Exercise.hint_for`): an argument changed in place that must not be; the
  exercise's own detectors, which look at the failing input and your output ("rows don't sum
  to 1", "NaN with large logits"); then its classic mistakes, each a function computing what
  that mistake would output (if yours equals it, the hint names the mistake); then generic
  patterns (a constant factor, a flipped sign); then a hint for the output that is wrong; and
  at least the first of `hints`, with the way to the next one.
"""

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .checker import Outcome, compare, quietly

CHECK_LINE = ("Check it: `picogpt.exercises.check(\"{name}\", {name})` in Python, or "
              "`python -m picogpt.exercises check {name} my_file.py` in a shell.")
HINT_LINE = ("Stuck? {n} hints, one at a time: `python -m picogpt.exercises hint {name}` (then "
             "`hint {name} 2`, ...), or `picogpt.exercises.hint(\"{name}\")` in Python.")
MUTATION_HINT = ("leave your inputs as they were: compute into new arrays (`x - m`, not `x -= m`; "
                 "`np.exp(x)`, not `np.exp(x, out=x)`), or work on a copy (`x = x.copy()`). The caller "
                 "still needs them: in the model, a forward's input is what its backward reads.")

Detector = Callable[[Outcome], str | None]   # a sentence when it recognises the failure, else None


@dataclass
class Exercise:
    name: str
    summary: str                           # one line, for `list`
    arg_names: tuple[str, ...]             # the function's arguments, in order
    outputs: tuple[str, ...]               # names of what it returns, in order
    reference: Callable[..., Any]          # the reference solution, same signature as the stub
    statement: str                         # markdown: the task, the shapes, the maths; `{check}` at the end
    stub_function: str                     # the stub's source: signature, docstring, raise NotImplementedError
    examples_fn: Callable[[], list[tuple[str, tuple]]]   # () -> [(label, args)], hand-picked, simplest first
    strategy: Callable[[], Any]            # () -> a hypothesis strategy of args tuples
    hints: tuple[str, ...]                 # progressive: a nudge first, the result last
    model_answer: str                      # the stub's body as a student would write it (teacher's notebook)
    detectors: list[Detector] = field(default_factory=list)
    mistakes: list[tuple[str, Callable[..., Any]]] = field(default_factory=list)  # (hint, fn like the stub)
    output_hints: dict[str, str] = field(default_factory=dict)   # output label -> hint when it is wrong
    inplace: tuple[str, ...] = ()          # arguments the function must update in place (compared too)
    may_modify: tuple[str, ...] = ()       # arguments it may update in place; every other one must not change

    def __post_init__(self):
        if len(self.hints) < 1:
            raise ValueError(f"exercise {self.name!r} needs at least one hint")
        footer = CHECK_LINE.format(name=self.name) + "\n\n" + HINT_LINE.format(n=len(self.hints), name=self.name)
        self.statement = self.statement.format(check=footer)

    @property
    def inplace_positions(self):
        return tuple(self.arg_names.index(n) for n in self.inplace)

    @property
    def frozen_positions(self):
        """The arguments the function must leave exactly as they were."""
        free = set(self.inplace) | set(self.may_modify)
        return tuple(i for i, n in enumerate(self.arg_names) if n not in free)

    @property
    def output_labels(self):
        return self.outputs + tuple(f"{n} after your call" for n in self.inplace)

    def examples(self):
        return self.examples_fn()

    @property
    def stub(self):
        """The stub as a file a student can fill in: imports, then the function."""
        return "import numpy as np\n\n\n" + self.stub_function

    def hint(self, n=1):
        """Hint number n (1 = the gentlest), or a ValueError naming the range."""
        if not 1 <= n <= len(self.hints):
            raise ValueError(f"{self.name} has hints 1 to {len(self.hints)}, not {n}")
        return self.hints[n - 1]

    def hint_for(self, outcome):
        """The most specific hint for a failed Outcome (see the module docstring)."""
        if outcome.error is not None and isinstance(outcome.error, NotImplementedError):
            # Not a hint yet: on a stub it would hand out part of the answer before any attempt.
            return (f"start from the statement: print(picogpt.exercises.statement({self.name!r})), or "
                    f"`python -m picogpt.exercises show {self.name}` in a shell.")
        if outcome.changed:
            return MUTATION_HINT
        for detect in self.detectors:
            found = detect(outcome)
            if found:
                return found
        if outcome.got is None:
            return self.first_hint()
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
        return self.first_hint()

    def first_hint(self):
        """The last resort of the feedback: hint 1, and how to ask for the next."""
        more = (f" (more: `python -m picogpt.exercises hint {self.name} 2`)" if len(self.hints) > 1 else "")
        return self.hints[0] + more


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
