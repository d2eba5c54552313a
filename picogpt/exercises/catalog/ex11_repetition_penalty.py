"""Exercise `repetition_penalty`: CTRL's penalty on the tokens a row already holds."""

import numpy as np

from ... import sampling
from ..exercise import Exercise
from .common import floats, hyp, pair


def seen_mask(logits, ids):
    """bool (B, V): True where token v occurs in row b of ids (B, T)."""
    seen = np.zeros(np.shape(logits), dtype=bool)
    seen[np.arange(len(ids))[:, None], ids] = True
    return seen


def reference(logits, ids, penalty):
    return sampling.penalise_repeats(logits, seen_mask(logits, ids), penalty)


STATEMENT = """\
## Exercise `repetition_penalty`

A language model decoding greedily often falls into a loop ("the king, the king, the king").
CTRL (Keskar et al. 2019) discourages every token that is already in the text by a penalty
`θ > 1`; transformers' `generate(repetition_penalty=θ)` and picogpt use the same rule.

Implement `repetition_penalty(logits, ids, penalty)`:

- `logits`: `(B, V)` float, the next-token logits of B rows;
- `ids`: `(B, T)` int, the tokens each row holds so far (prompt and generated), in `[0, V)`;
- `penalty`: a float `θ > 0`;
- returns `(B, V)`: new logits; `logits` itself must not change.

The rule: for every token `v` that occurs in row `b` (once or many times, it is penalised once),
move its logit `l` towards "less likely" by the factor θ. Tokens not in the row keep their logit.
Think about the sign: for θ = 2, what must become of a logit of `3.0`, and of `-3.0`, so that the
token becomes *less* likely in both cases? And what does θ < 1 then do?

{check}
"""

STUB = '''\
def repetition_penalty(logits, ids, penalty):
    """CTRL's repetition penalty.

    logits (B, V) float, ids (B, T) int (tokens already in each row), penalty > 0  ->  (B, V)
        every token present in a row gets its logit made less likely by the factor `penalty`
        (once, however often it occurs); the others are unchanged; `logits` is not modified.
    """
    raise NotImplementedError("your code here")
'''

HINTS = (
    "first mark, for each row, which tokens it holds: a (B, V) boolean array `seen`, "
    "seen[np.arange(B)[:, None], ids] = True (fancy indexing sets each present token once).",
    "dividing a positive logit by θ > 1 lowers it; dividing a negative one RAISES it (-3 / 2 = -1.5), "
    "which makes the token more likely. Negative logits must be multiplied instead.",
    "penalised = np.where(logits < 0, logits * penalty, logits / penalty); "
    "return np.where(seen, penalised, logits).",
)

MODEL_ANSWER = """\
seen = np.zeros(logits.shape, dtype=bool)
seen[np.arange(len(ids))[:, None], ids] = True            # each present token once
penalised = np.where(logits < 0, logits * penalty, logits / penalty)
return np.where(seen, penalised, logits)"""


def examples():
    return [
        ("one row, positive logits", (np.array([[2.0, 1.0, 0.5, 3.0]]), np.array([[0, 3]]), 2.0)),
        ("negative logits: multiplied", (np.array([[-2.0, 1.0, -0.5, 3.0]]), np.array([[0, 2]]), 2.0)),
        ("a token repeated in the row is penalised once", (np.array([[4.0, -4.0, 1.0]]), np.array([[0, 0, 0, 1]]), 2.0)),
        ("two rows, different histories", (np.array([[1.0, -1.0, 2.0], [1.0, -1.0, 2.0]]),
                                           np.array([[0, 1], [2, 2]]), 1.5)),
        ("penalty < 1 encourages repeats", (np.array([[2.0, -2.0, 1.0]]), np.array([[0, 1]]), 0.5)),
        ("a zero logit stays zero", (np.array([[0.0, 1.0]]), np.array([[0]]), 3.0)),
    ]


def strategy():
    st, hnp = hyp()

    @st.composite
    def inputs(draw):
        B, V, T = draw(st.integers(1, 3)), draw(st.integers(1, 8)), draw(st.integers(1, 6))
        logits = draw(hnp.arrays(np.float64, (B, V), elements=floats(-5.0, 5.0)))
        ids = draw(hnp.arrays(np.int64, (B, T), elements=st.integers(0, V - 1)))
        return logits, ids, draw(st.sampled_from([0.5, 1.2, 1.3, 2.0]) | floats(0.1, 4.0))

    return inputs()


def _always_divide(logits, ids, penalty):
    return np.where(seen_mask(logits, ids), logits / penalty, logits)


def _per_occurrence(logits, ids, penalty):
    out = logits.copy()
    for b, row in enumerate(ids):
        for t in row:
            out[b, t] = out[b, t] * penalty if out[b, t] < 0 else out[b, t] / penalty
    return out


def _detector(outcome):
    got, exp = pair(outcome, 0)
    if got is None:
        return None
    logits, ids, _ = outcome.args
    untouched = ~seen_mask(logits, ids)
    if not np.allclose(got[untouched], logits[untouched], rtol=1e-12, atol=0):
        return "change only the tokens that occur in the row: every other logit stays exactly as it was."
    return None


EXERCISE = Exercise(
    name="repetition_penalty",
    summary="CTRL's repetition penalty on the tokens a row already holds",
    arg_names=("logits", "ids", "penalty"), outputs=("penalised",), reference=reference,
    statement=STATEMENT, stub_function=STUB, hints=HINTS, model_answer=MODEL_ANSWER,
    examples_fn=examples, strategy=strategy,
    detectors=[_detector],
    mistakes=[
        ("a negative logit divided by θ > 1 moves towards 0, so the token becomes MORE likely: multiply "
         "negative logits by θ, divide positive ones.", _always_divide),
        ("penalise each token once, however many times it occurs in the row (build a set / boolean mask "
         "of the present tokens first).", _per_occurrence),
    ],
)
