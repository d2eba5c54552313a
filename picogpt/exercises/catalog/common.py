"""What the exercise modules share: inputs drawn with hypothesis, readable hand-picked values,
and the small tests their hint detectors make on an Outcome.

hypothesis is imported only when a check runs (`hyp()`), so that `list`, `show` and `hint`
work without it.
"""

import numpy as np

from ...backend import get_array_module

OVERFLOW_HINT = ("exp overflowed: exp(710) is already inf in float64, and inf / inf is NaN. Subtract "
                 "the row max before exp: softmax(x) = softmax(x - max(x)), and then the largest "
                 "exponent is exp(0) = 1.")


# --- inputs --------------------------------------------------------------------------------

def hyp():
    """hypothesis's strategies, imported on demand (the checker needs it; list/show do not)."""
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp
    return st, hnp


def floats(lo, hi):
    """Finite float64 values in [lo, hi], no subnormals (they only test the hardware)."""
    st, _ = hyp()
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False, allow_subnormal=False, width=64)


def array(shape, lo, hi):
    """A hypothesis strategy for float64 arrays of `shape` with values in [lo, hi]."""
    _, hnp = hyp()
    return hnp.arrays(np.float64, shape, elements=floats(lo, hi))


def rounded(rng, shape, scale=1.0):
    """Random values with 2 decimals, so that hand-picked inputs read easily in the feedback."""
    return np.round(rng.standard_normal(shape) * scale, 2)


# --- looking at an Outcome (for detectors) -------------------------------------------------

def pair(outcome, i):
    """(yours, expected) for output i as float64 arrays of the same shape, else (None, None)."""
    if outcome.got is None:
        return None, None
    try:
        got = np.asarray(outcome.got[i], dtype=np.float64)
    except (TypeError, ValueError):
        return None, None
    exp = outcome.expected[i]
    return (got, exp) if got.shape == exp.shape else (None, None)


def nonfinite_where_finite(outcome, i=None):
    """True when some output has NaN/inf where the expected value is finite."""
    for j in range(len(outcome.expected)) if i is None else [i]:
        got, exp = pair(outcome, j)
        if got is not None and (~np.isfinite(got) & np.isfinite(exp)).any():
            return True
    return False


def overflow_detector(outcome):
    """A detector for exercises with a softmax inside: NaN/inf where the answer is finite."""
    return OVERFLOW_HINT if nonfinite_where_finite(outcome) else None


def wrong(outcome, label):
    """True when output `label` is among the mismatches."""
    return any(m.output == label for m in outcome.mismatches)


# --- maths the classic mistakes are built from ---------------------------------------------

def softmax(x):
    """A stable softmax over the last axis (for the mistakes and detectors, not the references)."""
    xp = get_array_module(x)
    e = xp.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def causal(T):
    """(T, T) bool, True where key j <= query i."""
    return np.tri(T, T, dtype=bool)
