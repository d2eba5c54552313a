"""Exercise `top_p_filter`: nucleus filtering of logits, ties included."""

import numpy as np

from ... import sampling
from ..exercise import Exercise
from .common import floats, hyp, pair, softmax


def reference(logits, p):
    return sampling.top_p_filter(logits, p)


STATEMENT = """\
## Exercise `top_p_filter`

Implement `top_p_filter(logits, p)`: nucleus filtering, row by row. Keep the smallest set of
most likely tokens whose probability adds up to at least `p`; set every other logit to `-inf`
(so that sampling can never pick it).

- `logits`: `(B, V)`; `p`: a float in (0, 1].
- returns `(B, V)`: the kept logits unchanged, the others exactly `-inf`.

The rule, per row: compute the probabilities `softmax(logits)` and sort them, most likely
first. A token is kept when the total probability of the tokens *before* it in that order is
`< p`, so the most likely token is always kept, and so is the token whose probability makes the
total reach `p`. **Ties:** a token whose probability equals that of the last kept token is kept
too (sorting cannot decide between equals, so the rule must not depend on their order). `p = 1`
keeps everything.

Example: probabilities `[0.5, 0.3, 0.15, 0.05]` with `p = 0.7` keep the first two (0.5 < 0.7
before the second, 0.8 >= 0.7 before the third).

{check}
"""

STUB = '''\
def top_p_filter(logits, p):
    """Nucleus (top-p) filtering: set the logits outside the nucleus to -inf.

    logits (B, V), p in (0, 1]  ->  (B, V)
        keep a token when the probability of the tokens more likely than it is < p;
        keep ties with the last kept token; leave kept logits unchanged.
    """
    raise NotImplementedError("your code here")
'''

HINTS = (
    "work on sorted probabilities: sorted_p = -np.sort(-probs, axis=-1) is most likely first; "
    "np.cumsum(sorted_p, axis=-1) - sorted_p is the mass of the tokens before each one.",
    "count the kept tokens of each row, n_keep = (mass before < p).sum(axis=-1), at least 1; the "
    "probability of the last kept one, sorted_p[row, n_keep - 1], is that row's threshold.",
    "keep probs >= threshold, compared in the ORIGINAL positions (this keeps the ties too): "
    "np.where(probs >= threshold[:, None], logits, -np.inf).",
)

MODEL_ANSWER = """\
e = np.exp(logits - logits.max(axis=-1, keepdims=True))
probs = e / e.sum(axis=-1, keepdims=True)
sorted_p = -np.sort(-probs, axis=-1)                      # most likely first
before = np.cumsum(sorted_p, axis=-1) - sorted_p          # mass of the tokens before each
n_keep = (before < p).sum(axis=-1)                        # >= 1: the top token always stays
threshold = sorted_p[np.arange(len(probs)), n_keep - 1][:, None]
return np.where(probs >= threshold, logits, -np.inf)      # ties with the threshold stay too"""


def examples():
    return [
        ("one row, p = 0.5", (np.array([[3.0, 2.0, 1.0, 0.0]]), 0.5)),
        ("one row, p = 0.9", (np.array([[3.0, 2.0, 1.0, 0.0]]), 0.9)),
        ("tokens in a shuffled order, two rows", (np.array([[0.0, 3.0, 1.0, 2.0], [1.0, -1.0, 2.5, 0.0]]), 0.8)),
        ("ties with the last kept token", (np.array([[2.0, 1.0, 1.0, 1.0, 0.0]]), 0.5)),
        ("p = 1 keeps everything", (np.array([[0.0, 1.0, 2.0, 3.0]]), 1.0)),
        ("a tiny p keeps only the top token", (np.array([[0.0, 1.0, 2.0, 3.0]]), 0.01)),
        ("large logits (1e3 scale)", (np.array([[1000.0, 999.0, 0.0, 998.0]]), 0.9)),
    ]


def _unambiguous(args):
    """Drop draws where p is within rounding of a cumulative sum, or two probabilities are equal
    to within rounding but not exactly: there the answer depends on the order of additions,
    not on understanding the rule."""
    logits, p = args
    probs = -np.sort(-softmax(logits), axis=-1)
    before = np.cumsum(probs, axis=-1) - probs
    gaps = np.abs(np.diff(probs, axis=-1))
    return np.abs(before[:, 1:] - p).min(initial=1.0) > 1e-9 and not ((gaps > 0) & (gaps < 1e-12)).any()


def strategy():
    st, hnp = hyp()

    @st.composite
    def inputs(draw):
        shape = (draw(st.integers(1, 3)), draw(st.integers(1, 8)))
        values = st.one_of(st.integers(-3, 3).map(float), floats(-5.0, 5.0))  # small integers make ties
        return draw(hnp.arrays(np.float64, shape, elements=values)), draw(floats(0.05, 0.99))

    return inputs().filter(_unambiguous)


def _detector(outcome):
    got, exp = pair(outcome, 0)
    if got is None:
        return None
    logits, p = outcome.args
    kept_exp, kept_got = np.isfinite(exp), np.isfinite(got)
    probs = softmax(logits)
    if (~kept_exp & kept_got & (got != logits)).any():    # filtered, but to a number, not to -inf
        return "set the filtered logits to exactly -inf (-np.inf), not to a large negative number or 0."
    both = kept_exp & kept_got
    if both.any() and not np.allclose(got[both], logits[both], rtol=1e-12, atol=0):
        if np.allclose(got[both], probs[both], rtol=1e-9, atol=1e-12):
            return "return the LOGITS (unchanged where kept, -inf elsewhere), not the probabilities."
        return "leave the kept logits unchanged: no renormalising or rescaling, only -inf where filtered."
    missing, extra = kept_exp & ~kept_got, kept_got & ~kept_exp
    if missing.any() and not extra.any():
        # Ties: every token you dropped is as likely as the least likely one you kept.
        smallest_kept = np.where(kept_got, probs, np.inf).min(axis=-1, keepdims=True)
        if np.all(np.isclose(probs, smallest_kept, rtol=1e-12, atol=0)[missing]):
            return ("keep the ties: a token whose probability equals the last kept token's is kept too. "
                    "Compare probabilities with a threshold (probs >= smallest kept probability) rather than "
                    "keeping the first n positions of the sorted order.")
        return ("you keep too few tokens: a token is kept when the mass of the tokens BEFORE it is < p, so the "
                "token that makes the total reach p is kept (and the top token always is).")
    if extra.any() and not missing.any():
        return ("you keep too many tokens: stop at the first token whose preceding mass plus itself reaches p; "
                "a token is kept only when the mass of the tokens before it is < p.")
    return ("you keep the wrong tokens: sort the probabilities in DESCENDING order (most likely first), and "
            "compare every token's probability with the threshold in its original position.")


EXERCISE = Exercise(
    name="top_p_filter",
    summary="nucleus (top-p) filtering of logits, ties included",
    arg_names=("logits", "p"), outputs=("filtered",), reference=reference,
    statement=STATEMENT, stub_function=STUB, hints=HINTS, model_answer=MODEL_ANSWER,
    examples_fn=examples, strategy=strategy,
    detectors=[_detector],
)
