"""Exercise `classifier_backward`: the gradients of a sequence classifier's pooling and head."""

import numpy as np

from ... import heads as H
from ..exercise import Exercise
from .common import array, hyp, rounded


def reference(dlogits, hidden, lengths, W):
    pooled, c_pool = H.pool_last_forward(hidden, np.asarray(lengths) - 1)
    _, c_head = H.classifier_forward(pooled, W)
    dpooled, dW = H.classifier_backward(dlogits, c_head)
    return H.pool_last_backward(dpooled, c_pool), dW


STATEMENT = """\
## Exercise `classifier_backward`

Implement `classifier_backward(dlogits, hidden, lengths, W)`: the gradients of the head that
turns GPT-2 into a classifier (transformers' `GPT2ForSequenceClassification`).

Rows of different lengths are right-padded; the classifier reads each row's final hidden state
at its LAST REAL token, then applies one linear map without bias, stored `(out, in)` as torch
stores it:

      pooled[b] = hidden[b, lengths[b] - 1]      (B, C)
      logits    = pooled @ W^T                   (B, K)

- `dlogits`: `(B, K)`, the gradient of the loss with respect to the logits;
  `hidden`: `(B, T, C)`; `lengths`: int `(B,)`, each in `[1, T]`; `W`: `(K, C)`.
- returns `(dhidden, dW)`: `(B, T, C)` and `(K, C)`.

Derive both by hand: which entries of `hidden` does the loss depend on at all?

{check}
"""

STUB = '''\
def classifier_backward(dlogits, hidden, lengths, W):
    """Gradients of logits = hidden[b, lengths[b] - 1] @ W^T.

    dlogits (B, K), hidden (B, T, C), lengths int (B,), W (K, C)  ->  dhidden (B, T, C), dW (K, C)
    """
    raise NotImplementedError("your code here")
'''

HINTS = (
    "two steps, bottom-up: the linear map logits = pooled W^T (write logits[b, k] = sum_c pooled[b, c] "
    "W[k, c] and differentiate), then the pooling, which only copies one position of each row.",
    "the head gives dpooled = dlogits @ W and dW = dlogits^T @ pooled (note W is (K, C), so no "
    "transpose of the result). The padding and the earlier tokens were never read.",
    "dhidden is zero everywhere except dhidden[b, lengths[b] - 1] = dpooled[b]: "
    "dhidden[np.arange(B), lengths - 1] = dlogits @ W.",
)

MODEL_ANSWER = """\
B = hidden.shape[0]
last = np.asarray(lengths) - 1
pooled = hidden[np.arange(B), last]
dW = dlogits.T @ pooled
dhidden = np.zeros_like(hidden)
dhidden[np.arange(B), last] = dlogits @ W
return dhidden, dW"""


def examples():
    rng = np.random.default_rng(13)

    def case(B, T, C, K, lengths):
        return rounded(rng, (B, K)), rounded(rng, (B, T, C)), np.array(lengths), rounded(rng, (K, C))

    return [
        ("one row of length T", case(1, 3, 2, 2, [3])),
        ("two rows, one padded", case(2, 4, 3, 2, [4, 2])),
        ("rows of length 1 (only the first token)", case(3, 3, 2, 3, [1, 1, 3])),
        ("five labels, C = 4", case(2, 5, 4, 5, [5, 3])),
    ]


def strategy():
    st, _ = hyp()

    @st.composite
    def inputs(draw):
        B, T, C, K = (draw(st.integers(lo, hi)) for lo, hi in ((1, 4), (1, 5), (1, 4), (2, 4)))
        lengths = np.array(draw(st.lists(st.integers(1, T), min_size=B, max_size=B)), dtype=np.int64)
        return (draw(array((B, K), -2.0, 2.0)), draw(array((B, T, C), -3.0, 3.0)), lengths,
                draw(array((K, C), -1.0, 1.0)))

    return inputs()


def _variant(dlogits, hidden, lengths, W, where="last", transpose_w=False):
    """The backward with the classic mistakes switched on."""
    B, T, _ = hidden.shape
    last = np.full(B, T - 1) if where == "end" else np.asarray(lengths) - 1
    pooled = hidden[np.arange(B), last]
    dW = dlogits.T @ pooled
    dpooled = dlogits @ W
    dhidden = np.zeros_like(hidden)
    if where == "every":
        dhidden[:] = dpooled[:, None, :]
    else:
        dhidden[np.arange(B), last] = dpooled
    return dhidden, dW


EXERCISE = Exercise(
    name="classifier_backward",
    summary="sequence classifier: last-token pooling and head backward (dhidden, dW)",
    arg_names=("dlogits", "hidden", "lengths", "W"), outputs=("dhidden", "dW"), reference=reference,
    statement=STATEMENT, stub_function=STUB, hints=HINTS, model_answer=MODEL_ANSWER,
    examples_fn=examples, strategy=strategy,
    mistakes=[
        ("rows are right-padded: the head read position lengths[b] - 1, not T - 1, so that is where "
         "the gradient goes back.", lambda *a: _variant(*a, where="end")),
        ("the pooling copied ONE position per row: every other position of hidden gets a zero gradient.",
         lambda *a: _variant(*a, where="every")),
    ],
    output_hints={
        "dW": "dW[k, c] = sum_b dlogits[b, k] pooled[b, c]: dW = dlogits^T @ pooled, shaped like W (K, C).",
        "dhidden": "dhidden is zero except at each row's last real token, where it is dlogits @ W.",
    },
)
