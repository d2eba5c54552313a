"""Exercise `softmax`: the softmax over the last axis, stable for large logits."""

import numpy as np

from ... import layers as L
from ..exercise import Exercise
from .common import array, hyp, overflow_detector, pair, rounded


def reference(x):
    return L.softmax_forward(x)[0]


STATEMENT = """\
## Exercise `softmax`

Implement `softmax(x)`: the softmax over the **last axis** of `x`.

- `x`: float array of shape `(..., K)`, any number of leading axes; each `x[..., :]` is a row.
- returns `p`, the same shape: every row is positive and sums to 1.

      p[..., i] = exp(x[..., i]) / sum_j exp(x[..., j])

Written as it stands, this fails on real inputs: `exp(710)` is already `inf` in float64, and
logits of size 1000 do happen. Your function must give the right answer for them too. Find a
way to compute the same `p` without overflow (what can you change in every entry of a row
without changing the fraction?). Entries that are `-inf` (masked positions in attention) must
come out as exactly 0.

{check}
"""

STUB = '''\
def softmax(x):
    """Softmax over the last axis, without overflow for large x.

    x: float array (..., K)  ->  p: (..., K), each row positive and summing to 1.
        p[..., i] = exp(x[..., i]) / sum_j exp(x[..., j])
    """
    raise NotImplementedError("your code here")
'''

HINTS = (
    "multiply the top and the bottom of the fraction by the same number, exp(-c): the fraction "
    "does not change, and every exponent becomes x[..., i] - c. Which c, chosen per row, keeps every "
    "exponent <= 0?",
    "c = the row max: softmax(x) = softmax(x - max(x)), and then the largest exponent is exp(0) = 1, "
    "so nothing overflows and the sum is at least 1. An -inf entry becomes exp(-inf) = 0.",
    "p = exp(x - m) / sum(exp(x - m)) with m = x.max(axis=-1, keepdims=True); reduce with axis=-1, "
    "keepdims=True, so that the row max and the row sum keep a length-1 last axis and broadcast.",
)

MODEL_ANSWER = """\
z = x - x.max(axis=-1, keepdims=True)   # the largest exponent is now exp(0) = 1
e = np.exp(z)
return e / e.sum(axis=-1, keepdims=True)"""


def examples():
    rng = np.random.default_rng(1)
    return [
        ("a small 2-D input", (np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]),)),
        ("a single row (1-D)", (np.array([0.5, -1.0, 2.0, 0.0]),)),
        ("a batch of rows (3-D)", (rounded(rng, (2, 3, 4)),)),
        ("a square input, where the wrong axis still broadcasts", (rounded(rng, (3, 3)),)),
        ("large logits (1e3 scale)", (np.array([[1000.0, 999.0, 998.0], [-1000.0, 0.0, 1000.0]]),)),
        ("all logits very negative", (np.array([[-1000.0, -1001.0, -1002.0]]),)),
        ("masked (-inf) entries", (np.array([[0.0, -np.inf, 1.0], [2.0, 2.0, -np.inf]]),)),
    ]


def strategy():
    st, hnp = hyp()

    @st.composite
    def inputs(draw):
        shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6))
        scale = draw(st.sampled_from([1.0, 10.0, 1e3]))   # 1e3: logits that overflow exp
        return (draw(array(shape, -1.0, 1.0)) * scale,)

    return inputs()


def _sums(outcome):
    got, exp = pair(outcome, 0)
    if got is None or not np.isfinite(got).all():
        return None
    sums = got.sum(axis=-1)
    if np.allclose(sums, 1.0, rtol=0, atol=1e-6):   # smaller slips: the generic patterns say it better
        return None
    if got.ndim > 1 and (np.allclose(got.sum(axis=0), 1.0, rtol=0, atol=1e-9)
                         or np.isclose(got.sum(), 1.0, rtol=0, atol=1e-9)):
        return ("your output sums to 1 over the wrong axis: normalise each row, over the LAST axis "
                "(e.sum(axis=-1, keepdims=True)).")
    return (f"the rows of your output sum to {float(sums.reshape(-1)[0]):.6g} (first row), not 1: divide "
            "each row's exponentials by their own row sum, over the last axis with keepdims=True.")


KEEPDIMS_HINT = ("reduce with keepdims=True: without it the row sums have shape (...,) and broadcast along the "
                 "wrong axis (or not at all).")


def _keepdims(outcome):
    if isinstance(outcome.error, ValueError) and "broadcast" in str(outcome.error):
        return KEEPDIMS_HINT
    return None


def _no_keepdims(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1)


EXERCISE = Exercise(
    name="softmax",
    summary="softmax over the last axis, stable for large logits",
    arg_names=("x",), outputs=("p",), reference=reference,
    statement=STATEMENT, stub_function=STUB, hints=HINTS, model_answer=MODEL_ANSWER,
    examples_fn=examples, strategy=strategy,
    detectors=[_keepdims, overflow_detector, _sums],
    mistakes=[(KEEPDIMS_HINT, _no_keepdims)],
)
