"""Exercise `attention_backward`: the gradients of causal attention, line by line backwards."""

from ... import layers as L
from ...backend import get_array_module
from ..exercise import Exercise
from .common import overflow_detector
from .ex05_attention_forward import attend, examples, strategy


def reference(dout, q, k, v):
    xp = get_array_module(q)
    T = q.shape[-2]
    _, cache = L.attention_forward(q, k, v, mask=L.causal_mask(xp, T, T))
    return L.attention_backward(dout, cache)


STATEMENT = """\
## Exercise `attention_backward`

Implement `attention_backward(dout, q, k, v)`: the gradients of causal attention (exercise
`attention_forward`) with respect to `q`, `k` and `v`.

- `dout`, `q`, `k`, `v`: `(B, H, T, D)`; `dout` is the gradient of the loss with respect to `out`.
- returns `(dq, dk, dv)`, each `(B, H, T, D)`.

The forward, one line at a time (`s = 1 / sqrt(D)`, `^T` transposes the last two axes):

      S = q @ k^T * s,   then S[..., i, j] = -inf where j > i
      P = softmax(S)     over the last axis
      out = P @ v

Recompute the forward, then go through it backwards, last line first, deriving the gradient
of each input of a line from the gradient of its output. Two rules to work out: the gradient
through a matrix product, and the Jacobian of a softmax row (every `P_i` depends on every
`S_j` of its row). Masked scores need no special case if your softmax line is right.

{check}
"""

STUB = '''\
def attention_backward(dout, q, k, v):
    """Gradients of causal attention out = softmax(q k^T / sqrt(D), masked) v.

    dout, q, k, v (B, H, T, D)  ->  dq, dk, dv (B, H, T, D)
    """
    raise NotImplementedError("your code here")
'''

HINTS = (
    "for a matrix product Y = A @ B, dA = dY @ B^T and dB = A^T @ dY (check the shapes: each gradient has "
    "the shape of its matrix). So out = P @ v gives dv and dP; S = q @ k^T * s gives dq and dk from dS.",
    "dv = P^T @ dout and dP = dout @ v^T. For the softmax, dP_i / dS_j = P_i (delta_ij - P_j) within a "
    "row, so dS_j = sum_i dP_i P_i (delta_ij - P_j) = ?",
    "dS = P * (dP - sum(dP * P, last axis, keepdims=True)); masked entries have P = 0, so dS = 0 there. "
    "Then dq = dS @ k * s and dk = dS^T @ q * s, with s = 1 / sqrt(D).",
)

MODEL_ANSWER = """\
T, D = q.shape[-2], q.shape[-1]
s = 1.0 / np.sqrt(D)
S = np.where(np.tril(np.ones((T, T), dtype=bool)), q @ k.swapaxes(-1, -2) * s, -np.inf)
P = np.exp(S - S.max(axis=-1, keepdims=True))
P = P / P.sum(axis=-1, keepdims=True)
dv = P.swapaxes(-1, -2) @ dout
dP = dout @ v.swapaxes(-1, -2)
dS = P * (dP - (dP * P).sum(axis=-1, keepdims=True))
dq = dS @ k * s
dk = dS.swapaxes(-1, -2) @ q * s
return dq, dk, dv"""


def _variant(dout, q, k, v, mask="causal", scale_grads=True, softmax="full", transpose_dk=True,
             transpose_dv=True):
    """The backward with the classic mistakes switched on."""
    out, P, s = attend(q, k, v, mask=mask)
    dv = (P.swapaxes(-1, -2) if transpose_dv else P) @ dout
    dP = dout @ v.swapaxes(-1, -2)
    if softmax == "full":
        dS = P * (dP - (dP * P).sum(axis=-1, keepdims=True))
    elif softmax == "diagonal":
        dS = dP * P * (1 - P)
    else:
        dS = dP
    s = s if scale_grads else 1.0
    dq = dS @ k * s
    dk = (dS.swapaxes(-1, -2) if transpose_dk else dS) @ q * s
    return dq, dk, dv


EXERCISE = Exercise(
    name="attention_backward",
    summary="causal attention backward: dq, dk, dv from dout",
    arg_names=("dout", "q", "k", "v"), outputs=("dq", "dk", "dv"), reference=reference,
    statement=STATEMENT, stub_function=STUB, hints=HINTS, model_answer=MODEL_ANSWER,
    examples_fn=lambda: examples(with_dout=True), strategy=lambda: strategy(with_dout=True),
    detectors=[overflow_detector],
    mistakes=[
        ("dq and dk need the forward's scale too: S = q k^T * s with s = 1 / sqrt(D), so s multiplies "
         "both of their gradients.", lambda d, q, k, v: _variant(d, q, k, v, scale_grads=False)),
        ("the softmax Jacobian is not diagonal: each P_i depends on every S_j of its row, "
         "dP_i/dS_j = P_i (delta_ij - P_j). dP * P * (1 - P) keeps only the i = j terms.",
         lambda d, q, k, v: _variant(d, q, k, v, softmax="diagonal")),
        ("go back through the softmax: dS is not dP (`python -m picogpt.exercises hint attention_backward 2`).",
         lambda d, q, k, v: _variant(d, q, k, v, softmax="none")),
        ("recompute the forward WITH the causal mask: keys j > i get P = 0.",
         lambda d, q, k, v: _variant(d, q, k, v, mask="none")),
        ("dk comes from S = q @ k^T: transpose dS, whose last axis is the keys (dk = dS^T @ q * s).",
         lambda d, q, k, v: _variant(d, q, k, v, transpose_dk=False)),
        ("dv = P^T dout: transpose P.", lambda d, q, k, v: _variant(d, q, k, v, transpose_dv=False)),
    ],
    output_hints={
        "dv": "dv comes from out = P @ v alone: dv = P^T @ dout, with P the causal attention weights.",
        "dq": "dq is wrong: check the softmax line (dS from dP) and then S = q @ k^T * s "
              "(`python -m picogpt.exercises hint attention_backward 2`).",
        "dk": "dk is wrong: check the softmax line (dS from dP) and then S = q @ k^T * s; k appears "
              "transposed there (`python -m picogpt.exercises hint attention_backward 3`).",
    },
)
