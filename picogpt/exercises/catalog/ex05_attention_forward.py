"""Exercise `attention_forward`: causal scaled dot-product attention, every head at once."""

import math

import numpy as np

from ... import layers as L
from ...backend import get_array_module
from ..exercise import Exercise
from .common import array, causal, hyp, overflow_detector, rounded


def reference(q, k, v):
    xp = get_array_module(q)
    T = q.shape[-2]
    return L.attention_forward(q, k, v, mask=L.causal_mask(xp, T, T))[0]


STATEMENT = """\
## Exercise `attention_forward`

Implement `attention_forward(q, k, v)`: causal scaled dot-product attention, every head at once.

- `q`, `k`, `v`: `(B, H, T, D)`: batch, heads, positions, head size.
- returns `out`: `(B, H, T, D)`.

      S   = q @ k^T / sqrt(D)                 (B, H, T, T): S[..., i, j] scores query i against key j
      S[..., i, j] = -inf  where j > i        the causal mask: a position never sees the future
      P   = softmax(S) over the last axis     (each query's weights over the keys sum to 1)
      out = P @ v

Scores can be large (q and k of size 30): the softmax must not overflow (exercise `softmax`).

{check}
"""

STUB = '''\
def attention_forward(q, k, v):
    """Causal scaled dot-product attention.

    q, k, v (B, H, T, D)  ->  out (B, H, T, D)
        out = softmax(q k^T / sqrt(D), with key j > query i masked to -inf) v
    """
    raise NotImplementedError("your code here")
'''

HINTS = (
    "`@` treats the leading (B, H) axes as a batch of (T, D) matrices; k^T transposes the LAST two axes "
    "only: k.swapaxes(-1, -2), shape (B, H, D, T).",
    "np.tril(np.ones((T, T), dtype=bool)) is True where j <= i; np.where(mask, S, -np.inf) hides the "
    "future, and broadcasts over (B, H). Mask before the softmax, with -inf: exp(-inf) = 0.",
    "softmax over the keys, the last axis, subtracting the row max (the diagonal is never masked, so every "
    "row has a finite max); then out = P @ v.",
)

MODEL_ANSWER = """\
T, D = q.shape[-2], q.shape[-1]
S = q @ k.swapaxes(-1, -2) / np.sqrt(D)                  # (B, H, T, T)
S = np.where(np.tril(np.ones((T, T), dtype=bool)), S, -np.inf)
P = np.exp(S - S.max(axis=-1, keepdims=True))
P = P / P.sum(axis=-1, keepdims=True)
return P @ v"""


def examples(with_dout=False):
    rng = np.random.default_rng(5)

    def qkv(shape, scale=1.0):
        arrays = tuple(rounded(rng, shape, scale) for _ in range(3))
        return ((rounded(rng, shape),) + arrays) if with_dout else arrays

    return [
        ("one head, T = 3, D = 2", qkv((1, 1, 3, 2))),
        ("a single position (T = 1)", qkv((1, 1, 1, 2))),
        ("two sequences, two heads, T = 4, D = 3", qkv((2, 2, 4, 3))),
        ("large scores (q and k of size ~30)", qkv((1, 2, 3, 4), 30.0)),
    ]


def strategy(with_dout=False):
    st, _ = hyp()

    @st.composite
    def inputs(draw):
        shape = (draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 5)), draw(st.integers(1, 4)))
        scale = draw(st.sampled_from([1.0, 3.0, 30.0]))
        arrays = tuple(draw(array(shape, -1.0, 1.0)) * (scale if i < 2 else 1.0) for i in range(3))
        return ((draw(array(shape, -2.0, 2.0)),) + arrays) if with_dout else arrays

    return inputs()


def attend(q, k, v, scale=None, mask="causal", axis=-1, how="where"):
    """Attention with the variants of the classic mistakes; returns (out, P, scale)."""
    T, D = q.shape[-2], q.shape[-1]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    S = q @ k.swapaxes(-1, -2) * scale
    allowed = {"causal": causal(T), "none": np.ones((T, T), bool), "upper": causal(T).T}[mask]
    if how == "multiply":
        S = S * allowed
    elif how == "where":
        S = np.where(allowed, S, -np.inf)
    e = np.exp(S - S.max(axis=axis, keepdims=True))
    P = e / e.sum(axis=axis, keepdims=True)
    if how == "after":
        P = P * allowed
    return P @ v, P, scale


EXERCISE = Exercise(
    name="attention_forward",
    summary="causal scaled dot-product attention, all heads at once",
    arg_names=("q", "k", "v"), outputs=("out",), reference=reference,
    statement=STATEMENT, stub_function=STUB, hints=HINTS, model_answer=MODEL_ANSWER,
    examples_fn=examples, strategy=strategy,
    detectors=[overflow_detector],
    mistakes=[
        ("apply the causal mask: query i may only attend to keys j <= i. Set the scores above the diagonal "
         "to -inf before the softmax.", lambda q, k, v: attend(q, k, v, mask="none")[0]),
        ("you masked the wrong triangle: keep keys j <= i (np.tril), hide j > i.",
         lambda q, k, v: attend(q, k, v, mask="upper")[0]),
        ("scale the scores by 1 / sqrt(D), D = the head size q.shape[-1].",
         lambda q, k, v: attend(q, k, v, scale=1.0)[0]),
        ("scale by 1 / sqrt(D), not 1 / D.", lambda q, k, v: attend(q, k, v, scale=1.0 / q.shape[-1])[0]),
        ("the softmax runs over the KEYS, the last axis of the scores (axis=-1), not axis -2.",
         lambda q, k, v: attend(q, k, v, axis=-2)[0]),
        ("mask with -inf, not by multiplying the scores by 0: a score of 0 still gets weight exp(0) = 1.",
         lambda q, k, v: attend(q, k, v, how="multiply")[0]),
        ("mask BEFORE the softmax: zeroing weights afterwards leaves rows that no longer sum to 1.",
         lambda q, k, v: attend(q, k, v, mask="causal", how="after")[0]),
    ],
)
