"""Exercise `cross_entropy_backward`: the gradient of the mean cross-entropy over the logits."""

import numpy as np

from ... import layers as L
from ..exercise import Exercise
from .common import array, hyp, overflow_detector, rounded, softmax


def reference(logits, targets):
    _, cache = L.cross_entropy_forward(logits, targets)
    return L.cross_entropy_backward(1.0, cache)


STATEMENT = """\
## Exercise `cross_entropy_backward`

Implement `cross_entropy_backward(logits, targets)`: the gradient of the mean cross-entropy
loss with respect to the logits.

- `logits`: `(N, V)`, one row of scores over the vocabulary per position; `targets`: int `(N,)`,
  the right token of each row.
- returns `dlogits`: `(N, V)`, the gradient of `loss` with respect to every logit.

      loss = (1/N) sum_n -log softmax(logits[n])[targets[n]]

Derive `d loss / d logits[n, i]` by hand first: it has a short closed form, with no logarithm
left in it. Logits of size 1000 occur: your function must not overflow.

{check}
"""

STUB = '''\
def cross_entropy_backward(logits, targets):
    """Gradient of the mean cross-entropy loss with respect to the logits.

    logits (N, V), targets int (N,)  ->  dlogits (N, V)
        loss = mean over n of -log softmax(logits[n])[targets[n]]
    """
    raise NotImplementedError("your code here")
'''

HINTS = (
    "write the loss of one row without the fraction: with z = that row's logits and t its target, "
    "-log softmax(z)[t] = -z_t + log sum_j exp(z_j). Now differentiate with respect to z_i.",
    "d/dz_i log sum_j exp(z_j) = exp(z_i) / sum_j exp(z_j) = softmax(z)_i, and d(-z_t)/dz_i is -1 when "
    "i = t, else 0. The loss is a MEAN over the N rows, which scales every row's gradient.",
    "dlogits = (softmax(logits) - onehot(targets)) / N: a stable softmax (subtract the row max), then "
    "subtract 1 at [np.arange(N), targets], then divide by N.",
)

MODEL_ANSWER = """\
N = logits.shape[0]
e = np.exp(logits - logits.max(axis=-1, keepdims=True))
d = e / e.sum(axis=-1, keepdims=True)
d[np.arange(N), targets] -= 1.0
return d / N"""


def examples():
    rng = np.random.default_rng(6)
    return [
        ("a small input", (np.array([[1.0, 2.0, 3.0], [1.0, 1.0, 1.0]]), np.array([2, 0]))),
        ("a single row", (np.array([[0.5, -1.0, 0.0, 2.0]]), np.array([1]))),
        ("four rows, repeated targets", (rounded(rng, (4, 5)), np.array([3, 3, 0, 4]))),
        ("large logits (1e3 scale)", (np.array([[1000.0, 0.0, -1000.0], [500.0, 500.0, 0.0]]), np.array([1, 0]))),
    ]


def strategy():
    st, _ = hyp()

    @st.composite
    def inputs(draw):
        N, V = draw(st.integers(1, 5)), draw(st.integers(2, 8))
        scale = draw(st.sampled_from([1.0, 10.0, 1e3]))
        logits = draw(array((N, V), -1.0, 1.0)) * scale
        targets = np.array(draw(st.lists(st.integers(0, V - 1), min_size=N, max_size=N)), dtype=np.int64)
        return logits, targets

    return inputs()


def _variant(logits, targets, divide=True, onehot="rows"):
    """The gradient with the classic mistakes switched on."""
    N = logits.shape[0]
    d = softmax(logits)
    if onehot == "rows":
        d[np.arange(N), targets] -= 1.0
    elif onehot == "columns":
        d[:, targets] -= 1.0
    return d / N if divide else d


EXERCISE = Exercise(
    name="cross_entropy_backward",
    summary="gradient of the mean cross-entropy with respect to the logits",
    arg_names=("logits", "targets"), outputs=("dlogits",), reference=reference,
    statement=STATEMENT, stub_function=STUB, hints=HINTS, model_answer=MODEL_ANSWER,
    examples_fn=examples, strategy=strategy,
    detectors=[overflow_detector],
    mistakes=[
        ("the loss is the MEAN over the N rows: divide the gradient by N.",
         lambda z, t: _variant(z, t, divide=False)),
        ("the -log p[target] part contributes -1 at each row's target: your gradient is missing it.",
         lambda z, t: _variant(z, t, onehot="none")),
        ("index the one-hot by row AND column, p[np.arange(N), targets] -= 1: p[:, targets] -= 1 "
         "subtracts at every row.", lambda z, t: _variant(z, t, onehot="columns")),
    ],
)
