"""The checker: run a student's function on many inputs, compare with the reference, explain.

How an exercise is checked
    1. The exercise's hand-picked examples, simplest first, then its edge cases (large logits,
       ties, an empty cache, tiny variances...): a wrong function usually fails on a small,
       readable input, and the student learns most from that one.
    2. `max_examples` inputs drawn by hypothesis (shapes and values) from a fixed seed, so that
       every run, the student's and the grader's, sees the same inputs. hypothesis then shrinks
       the first failing input to the smallest one that still fails.
    The student's function and the reference each get their own copy of every input, so a
    function that writes into its arguments cannot change what the other one sees. After the
    call, every argument the exercise does not let it update (`Exercise.inplace`, `may_modify`)
    is compared with the untouched original: a function that changes its input in place fails,
    even when it returns the right values, since in the model its caller still needs that input.

When is an output right?
    Inputs are float64. Entry by entry, |yours - expected| <= atol + rtol * |expected| with
    rtol = 1e-6 and atol = 1e-8 * max(1, largest |expected|). A correct float64 function, even
    one that orders its sums differently from the reference, agrees to about 1e-12 (16-digit
    rounding, amplified by a few cancellations); an answer off by 1% is off by 1e-2, ten
    thousand times the tolerance. The absolute term judges entries that should be zero, or are
    far smaller than the rest, on the scale of the whole output instead of by a ratio of two
    rounding errors. Infinities (top-p's -inf) and NaNs must match exactly.

What the feedback says
    Which input failed (names, shapes, the values in compact form), which output was wrong,
    the largest absolute and relative errors and where, and a hint: first the exercise's own
    pattern detectors ("rows don't sum to 1"), then its list of classic mistakes (if your output
    equals what a known mistake gives, the hint names that mistake), then generic patterns (a
    constant factor, a flipped sign), and at least the exercise's general hint.
"""

import copy
import os
import traceback
import warnings
from dataclasses import dataclass, field
from random import Random

import numpy as np

from ..errors import PicoGPTError

RTOL = 1e-6
ATOL = 1e-8
DEFAULT_MAX_EXAMPLES = 60


# --- the verdict ---------------------------------------------------------------------------

@dataclass
class CheckResult:
    """What `check` found. Truthy when every input passed; print it (or `.feedback`) to read why.

    `args` and `inputs` hold the failing input (positional, and by name), so that
    `your_function(*result.args)` reproduces the failure.
    """

    name: str
    passed: bool
    examples: int                      # how many inputs were tried
    feedback: str
    args: tuple = None                 # the failing input, positional
    inputs: dict = None                # the same, by argument name
    error: BaseException = None        # what your function raised, if it raised
    max_abs_error: float = None
    max_rel_error: float = None

    def __bool__(self):
        return self.passed

    def __str__(self):
        return self.feedback

    def __repr__(self):
        verdict = "passed" if self.passed else "FAILED"
        return f"<CheckResult {self.name}: {verdict} after {self.examples} inputs>"


@dataclass
class Mismatch:
    """One output that is wrong on one input: a description and, for values, the error sizes."""

    output: str
    kind: str                          # "missing", "type", "shape", "values"
    lines: list
    max_abs: float = None
    max_rel: float = None


@dataclass
class Outcome:
    """One input run through the student's function and the reference."""

    args: tuple
    expected: tuple                    # the reference's outputs (+ in-place arguments), arrays
    got: tuple = None                  # yours, the same layout, or None if unusable
    mismatches: list = field(default_factory=list)
    error: BaseException = None
    error_where: str = ""              # "file, line N: code" of the line that raised
    problem: str = ""                  # a sentence when the return value has the wrong form
    changed: list = field(default_factory=list)   # sentences: arguments changed that must not be

    @property
    def failed(self):
        return self.error is not None or bool(self.problem or self.mismatches or self.changed)


# --- running one input ---------------------------------------------------------------------

def quietly(fn, *args):
    """Call fn without NumPy's overflow/invalid warnings: the report says it better."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args)


def run_reference(ex, args):
    """The reference's outputs for `args`, plus the arguments it updates in place, as arrays."""
    args = copy.deepcopy(args)
    out = quietly(ex.reference, *args)
    out = out if len(ex.outputs) > 1 else (out,)
    return tuple(np.array(o) for o in out) + tuple(np.array(args[i]) for i in ex.inplace_positions)


def evaluate(ex, fn, args):
    """Run `fn` on a copy of `args` and compare with the reference: an Outcome."""
    outcome = Outcome(args=args, expected=run_reference(ex, args))
    mine = copy.deepcopy(args)
    try:
        result = quietly(fn, *mine)
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # the student's bug (sys.exit too), reported with the input that caused it
        outcome.error, outcome.error_where = e, _where_raised(e)
        return outcome
    outcome.changed = [_changed(ex.arg_names[i], args[i], mine[i]) for i in ex.frozen_positions
                       if not _same(args[i], mine[i])]
    got, outcome.problem = _unpack(ex, result)
    if outcome.problem or outcome.changed:
        return outcome
    outcome.got = got + tuple(mine[i] for i in ex.inplace_positions)
    for label, g, e in zip(ex.output_labels, outcome.got, outcome.expected):
        m = compare(label, g, e)
        if m is not None:
            outcome.mismatches.append(m)
    return outcome


def _same(a, b):
    """True when argument `b` (after the call) is exactly `a` (before): shape, dtype, values."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)) or a.shape != b.shape \
                or a.dtype != b.dtype:
            return False
        return bool(np.all(_same_special(a, b))) if a.dtype.kind in "fc" else bool(np.array_equal(a, b))
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    try:
        return bool(a == b)
    except Exception:
        return False


def _changed(name, before, after):
    """A sentence saying how the call changed argument `name`."""
    if isinstance(before, np.ndarray) and isinstance(after, np.ndarray) and before.shape == after.shape \
            and before.dtype == after.dtype:
        diff = ~_same_special(before, after) if before.dtype.kind in "fc" else before != after
        i = _index(np.argmax(diff), before.shape)
        return (f"your function changed its argument '{name}' in place: {int(diff.sum())} of {diff.size} "
                f"entries differ after the call; first at index {i}: {_num(before[i])} before, "
                f"{_num(after[i])} after.")
    return f"your function changed its argument '{name}' in place: {describe_value(after)} after the call."


def _unpack(ex, result):
    """The function's return value as a tuple of outputs, or a sentence saying what is wrong."""
    n = len(ex.outputs)
    names = ", ".join(ex.outputs)
    if result is None:
        return None, "your function returned None: did you forget the `return` statement?"
    if n == 1:
        if isinstance(result, tuple):
            return None, (f"your function returned a tuple of {len(result)} things; return just the array "
                          f"{names} (not ({names}, cache) as picogpt's own layers do).")
        return (result,), ""
    if not isinstance(result, (tuple, list)) or len(result) != n:
        what = f"a {type(result).__name__}" if not isinstance(result, (tuple, list)) else f"{len(result)} values"
        return None, f"your function must return {n} values ({names}), it returned {what}."
    return tuple(result), ""


def _where_raised(e):
    """'file, line N -> code' for the innermost line of the student's own code that raised
    (frames inside NumPy say less: the line that called NumPy is the one to look at)."""
    frames = traceback.extract_tb(e.__traceback__)[1:]      # [0] is `quietly` calling fn
    own = [f for f in frames if not f.filename.startswith(_LIBRARY_DIRS)]
    if not (own or frames):
        return ""
    f = (own or frames)[-1]
    code = f" -> {f.line.strip()}" if f.line else ""
    return f"{f.filename}, line {f.lineno}{code}"


_LIBRARY_DIRS = (os.path.dirname(np.__file__),)


# --- comparing one output ------------------------------------------------------------------

def compare(label, got, expected, rtol=RTOL, atol=ATOL):
    """None when `got` matches `expected`, else a Mismatch describing how it does not."""
    try:
        got = np.asarray(got)
    except Exception:
        return Mismatch(label, "type", [f"'{label}' is a {type(got).__name__}, which is not an array."])
    if got.dtype.kind not in "biuf":
        return Mismatch(label, "type", [f"'{label}' has dtype {got.dtype}; expected an array of numbers."])
    if got.shape != expected.shape:
        return Mismatch(label, "shape", [f"'{label}' has shape {got.shape}, expected {expected.shape}."])
    got64 = got.astype(np.float64)
    exp = expected.astype(np.float64)
    finite = np.isfinite(exp) & np.isfinite(got64)
    diff = np.zeros(exp.shape)
    diff[finite] = np.abs(got64[finite] - exp[finite])
    scale = max(1.0, float(np.abs(np.where(np.isfinite(exp), exp, 0.0)).max(initial=0.0)))
    allowed = atol * scale + rtol * np.abs(np.where(finite, exp, 0.0))
    special = ~(np.isfinite(exp) & np.isfinite(got64)) & ~_same_special(got64, exp)
    bad = (diff > allowed) | special
    if not bad.any():
        return None
    rel = diff / np.maximum(np.abs(np.where(finite, exp, 0.0)), atol * scale)
    lines = [f"'{label}' is wrong at {int(bad.sum())} of {bad.size} entries."]
    for where, what in ((special & np.isfinite(exp), "are NaN or inf where the expected value is finite"),
                        (special & ~np.isfinite(exp), "should be NaN or inf but are not, or are the wrong one")):
        if where.any():
            i = _index(np.argmax(where), exp.shape)
            lines.append(f"  {int(where.sum())} entries {what}; first at index {i}: yours {_num(got64[i])},"
                         f" expected {_num(exp[i])}.")
    max_abs = max_rel = None
    if diff.any():
        ia, ir = _index(np.argmax(diff), exp.shape), _index(np.argmax(rel), exp.shape)
        max_abs, max_rel = float(diff[ia]), float(rel[ir])
        lines.append(f"  largest absolute error {max_abs:.2e} at index {ia}: yours {_num(got64[ia])},"
                     f" expected {_num(exp[ia])}")
        lines.append(f"  largest relative error {max_rel:.2e} at index {ir}: yours {_num(got64[ir])},"
                     f" expected {_num(exp[ir])}")
    lines.append(f"  (allowed: |yours - expected| <= {atol * scale:.0e} + {rtol:.0e} * |expected|)")
    return Mismatch(label, "values", lines, max_abs, max_rel)


def _same_special(a, b):
    """Entries where a and b are the same infinity, or both NaN."""
    return (a == b) | (np.isnan(a) & np.isnan(b))


def _index(flat, shape):
    return tuple(int(j) for j in np.unravel_index(flat, shape)) if shape else ()


def _num(x):
    return f"{float(x):.6g}"


# --- the search ----------------------------------------------------------------------------

def run_check(ex, fn, max_examples=DEFAULT_MAX_EXAMPLES, seed=0, progress=None):
    """Check `fn` against exercise `ex`: hand-picked examples, then hypothesis. A CheckResult.

    progress: None, or a function called with (which input, its args) before each call of `fn`,
        so that a grader that has to stop a function that never returns can say on what input.
    """
    if not callable(fn):
        raise PicoGPTError(f"check({ex.name!r}, ...) needs a function, got a {type(fn).__name__}.")
    progress = progress or (lambda which, args: None)
    tried = 0
    for label, args in ex.examples():
        tried += 1
        progress(f"input {tried} ({label})", args)
        outcome = evaluate(ex, fn, args)
        if outcome.failed:
            return _failure(ex, fn, outcome, f"input {tried} ({label})", tried)
    failure, drawn = _search(ex, fn, max_examples, seed, progress)
    tried += drawn
    if failure is not None:
        return _failure(ex, fn, failure, f"random input {drawn} drawn by hypothesis (shown shrunk"
                        " to the smallest input that still fails)", tried)
    n_fixed = tried - drawn
    text = (f"{ex.name}: passed all {tried} inputs ({n_fixed} hand-picked edge cases + {drawn} drawn by "
            f"hypothesis), within rtol {RTOL:g} of the reference. Well done!")
    return CheckResult(ex.name, True, tried, text)


def _search(ex, fn, max_examples, seed, progress):
    """(the smallest failing Outcome hypothesis finds or None, how many inputs it drew)."""
    if max_examples <= 0:
        return None, 0
    try:
        from hypothesis import HealthCheck, Phase, Verbosity, find, settings
        from hypothesis.errors import NoSuchExample
    except ImportError:
        raise PicoGPTError("the checker draws its inputs with hypothesis, which is not installed: "
                           "`pip install hypothesis` (or, in a clone of picogpt, "
                           "`pip install -e '.[exercises]'`).") from None
    drawn, first = [0], []

    def fails(args):
        drawn[0] += 1
        progress(f"random input {drawn[0]} drawn by hypothesis" if not first
                 else "an input hypothesis tried while shrinking a failing one", args)
        outcome = evaluate(ex, fn, args)
        if outcome.failed and not first:
            first.append((outcome, drawn[0]))
        return outcome.failed

    # No example database (nothing written to the student's folder), no deadline (a busy
    # laptop is not a bug), a seeded random source: every run draws the same inputs.
    options = settings(max_examples=max_examples, deadline=None, database=None,
                       suppress_health_check=list(HealthCheck), verbosity=Verbosity.quiet,
                       phases=[Phase.generate, Phase.shrink], print_blob=False)
    try:
        smallest = find(ex.strategy(), fails, settings=options, random=Random(seed))
    except NoSuchExample:
        return None, min(drawn[0], max_examples)
    except Exception:
        # hypothesis gave up after a failure (e.g. a function that answers differently each
        # call): report that failure. Without one, it is a bug in the checker: let it show.
        if first:
            return first[0]
        raise
    # Shrinking re-ran the function many times; the count to report is when it first failed.
    outcome, at = first[0]
    progress("the smallest failing input hypothesis found", smallest)
    shrunk = evaluate(ex, fn, smallest)
    return (shrunk if shrunk.failed else outcome), at


# --- writing the feedback ------------------------------------------------------------------

def _failure(ex, fn, outcome, which, tried):
    lines = [f"{ex.name}: FAILED on {which}.", "", "input:"]
    lines += [f"  {name} = {describe_value(value)}" for name, value in zip(ex.arg_names, outcome.args)]
    lines += ["", "problem:"]
    if outcome.error is not None:
        lines += _error_lines(outcome)
    elif outcome.problem or outcome.changed:
        lines += [f"  {sentence}" for sentence in outcome.changed + [outcome.problem] if sentence]
    else:
        for m in outcome.mismatches:
            lines += [f"  {line}" for line in m.lines]
    lines += ["", f"hint: {ex.hint_for(outcome)}"]
    lines.append(f"(in Python, result = check({ex.name!r}, ...) keeps this input: "
                 f"{fn_name(fn, ex)}(*result.args) runs your function on it again)")
    worst = max(outcome.mismatches, key=lambda m: m.max_abs or 0, default=None)
    return CheckResult(ex.name, False, tried, "\n".join(lines), args=outcome.args,
                       inputs=dict(zip(ex.arg_names, outcome.args)), error=outcome.error,
                       max_abs_error=worst.max_abs if worst else None,
                       max_rel_error=worst.max_rel if worst else None)


def _error_lines(outcome):
    e = outcome.error
    last = traceback.format_exception_only(type(e), e)[-1].strip()
    if isinstance(e, NotImplementedError):
        return ["  your function raised NotImplementedError: it is still the stub.",
                "  Replace the `raise NotImplementedError(...)` line with your code."]
    lines = [f"  your function raised {last}"]
    if outcome.error_where:
        lines.append(f"  at {outcome.error_where}")
    return lines


def fn_name(fn, ex):
    """How to call the student's function in the feedback: its own name when it has one."""
    name = getattr(fn, "__name__", None)
    return name if name and name.isidentifier() else "your_function"


def describe_value(value):
    """A compact, one-or-few-line view of an argument: dtype, shape and the values."""
    if isinstance(value, np.ndarray):
        with np.printoptions(precision=4, threshold=24, edgeitems=2, linewidth=96, suppress=False):
            body = np.array2string(value, separator=", ", prefix="      ")
        head = f"{value.dtype} array, shape {value.shape}"
        if value.size > 24 and value.dtype.kind == "f":
            finite = value[np.isfinite(value)]
            if finite.size:
                head += f", values in [{finite.min():.4g}, {finite.max():.4g}]"
        return f"{head}:\n      {body}" if "\n" in body or len(body) > 60 else f"{head}: {body}"
    return repr(value)
