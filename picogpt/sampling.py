"""From next-token logits to the next token: the rules that reshape the logits, then greedy,
temperature, top-k, top-p.

Everything runs in Hugging Face's order (transformers' `generate`, same names, same defaults):

    repetition_penalty      CTRL's penalty on every token already in the row      (1.0 = off)
    no_repeat_ngram_size    no n-gram may occur twice in a row                    (0 = off)
    min_new_tokens          end-of-text forbidden before that many new tokens     (0 = off)
    temperature, top_k, top_p   the sampling warpers (`warp`)

One small function per rule, its formula in its docstring; `apply_rules` runs the first three.
All of it runs on the logits' own device; only B uniform numbers cross from the host, drawn
from a seeded NumPy Generator, so a seed gives the same tokens on the CPU and on the GPU (up
to rounding). The n-gram rule looks at the tokens on the host (a dictionary of n-grams is
what a reader expects there, and the rows are short).
"""

from typing import NamedTuple

import numpy as np

from .backend import get_array_module
from .dtypes import float32_if_half
from .errors import PicoGPTError
from .layers import softmax_forward


def check_sampling_args(temperature=0.0, top_k=None, top_p=None):
    """One clear sentence for each impossible setting."""
    if temperature is None or not np.isfinite(temperature) or temperature < 0:
        raise PicoGPTError(f"temperature must be >= 0 (0 means greedy), got {temperature}.")
    if top_k is not None and (int(top_k) != top_k or top_k < 1):
        raise PicoGPTError(f"top-k must be a whole number >= 1, got {top_k}.")
    if top_p is not None and not (0.0 < top_p <= 1.0):
        raise PicoGPTError(f"top-p must be in (0, 1], got {top_p}.")


def check_rule_args(repetition_penalty=1.0, no_repeat_ngram_size=0, min_new_tokens=0):
    """One clear sentence for each impossible setting of the rules."""
    if repetition_penalty is None or not np.isfinite(repetition_penalty) or repetition_penalty <= 0:
        raise PicoGPTError(f"repetition_penalty must be > 0 (1.0 = off, > 1 discourages repeats), got {repetition_penalty}.")
    if int(no_repeat_ngram_size) != no_repeat_ngram_size or no_repeat_ngram_size < 0:
        raise PicoGPTError(f"no_repeat_ngram_size must be a whole number >= 0 (0 = off), got {no_repeat_ngram_size}.")
    if int(min_new_tokens) != min_new_tokens or min_new_tokens < 0:
        raise PicoGPTError(f"min_new_tokens must be a whole number >= 0, got {min_new_tokens}.")


def penalise_repeats(logits, seen, penalty):
    """CTRL's repetition penalty (Keskar et al. 2019), as transformers applies it.

    For every token v already in the row (seen[b, v], prompt included, padding not):

        l'_v = l_v / penalty   if l_v > 0
        l'_v = l_v * penalty   otherwise

    so with penalty > 1 a seen token always becomes less likely, whatever its sign.
    logits (B, V), seen bool (B, V) -> (B, V).
    """
    xp = get_array_module(logits)
    penalised = xp.where(logits < 0, logits * penalty, logits / penalty)
    return xp.where(seen, penalised, logits)


def banned_ngram_tokens(row, n):
    """The tokens that would repeat an n-gram of `row` (1-D host ints), as a set.

    With g = the last n-1 tokens of the row: every earlier position where g also occurs is
    followed by a token t, and g + [t] is an n-gram the row already has, so t is banned.
    n = 1 bans every token seen so far.
    """
    row = list(row)
    if n < 1 or len(row) + 1 < n:
        return set()
    g = row[len(row) - n + 1:] if n > 1 else []
    return {row[i + n - 1] for i in range(len(row) - n + 1) if row[i:i + n - 1] == g}


def no_repeat_ngram(logits, rows, n):
    """Set to -inf the logit of every token that would repeat an n-gram of its row.

    logits (B, V); rows: B host int sequences (each row's tokens, prompt included) -> (B, V).
    """
    xp = get_array_module(logits)
    bans = [(b, t) for b, row in enumerate(rows) for t in banned_ngram_tokens(row, n)]
    if not bans:
        return logits
    b, t = (xp.asarray(np.array(a, dtype=np.int64)) for a in zip(*bans))
    out = logits.copy()
    out[b, t] = -xp.inf
    return out


def forbid_token(logits, token):
    """logits[:, token] = -inf: the min_new_tokens rule keeps end-of-text out until enough new
    tokens are made. logits (B, V) -> (B, V)."""
    out = logits.copy()
    out[:, token] = -get_array_module(logits).inf
    return out


class Rules(NamedTuple):
    """The rules `apply_rules` runs, with transformers' names and defaults (all off)."""

    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    min_new_tokens: int = 0
    eos: int = None          # the end-of-text id min_new_tokens holds back (None: none)

    def need_seen(self):
        return self.repetition_penalty != 1.0

    def need_rows(self):
        return self.no_repeat_ngram_size > 0


def apply_rules(logits, step, rules, seen=None, rows=None):
    """The rules before sampling, in transformers' order. logits (B, V) -> (B, V).

    step: how many new tokens each row has so far. seen: bool (B, V), the tokens in each row
    (for the repetition penalty); rows: each row's tokens on the host (for the n-gram rule).
    """
    if rules.repetition_penalty != 1.0:
        logits = penalise_repeats(logits, seen, rules.repetition_penalty)
    if rules.no_repeat_ngram_size:
        logits = no_repeat_ngram(logits, rows, rules.no_repeat_ngram_size)
    if rules.eos is not None and step < rules.min_new_tokens:
        logits = forbid_token(logits, rules.eos)
    return logits


def top_k_filter(logits, k):
    """Keep the k largest logits of each row, set the rest to -inf. logits (B, V) -> (B, V).

    The threshold is the k-th largest value (a partition, O(V), not a full sort); ties with
    it are kept too.
    """
    xp = get_array_module(logits)
    if k >= logits.shape[-1]:
        return logits
    # The k-th largest of x is minus the k-th smallest of -x; selecting a small index is the
    # fast case of CuPy's partition (a large one falls back to a full sort there).
    kth = -xp.partition(-logits, k - 1, axis=-1)[:, k - 1:k]
    return xp.where(logits < kth, -xp.inf, logits)


def top_p_filter(logits, p):
    """Nucleus filtering: keep the smallest set of most likely tokens whose probability adds up
    to at least p; set the rest to -inf. logits (B, V) -> (B, V).

    A token is kept when the probability of the tokens strictly more likely than it is < p, so
    the most likely token always survives. In float64, as `sample`'s CDF, so that the kept set
    does not depend on the order the device adds in.
    """
    xp = get_array_module(logits)
    if p >= 1.0:
        return logits
    probs = softmax(logits.astype(xp.float64))
    sorted_p = -xp.sort(-probs, axis=-1)                           # descending
    before = xp.cumsum(sorted_p, axis=-1) - sorted_p               # mass strictly above each
    n_keep = (before < p).sum(axis=-1)                             # >= 1
    threshold = xp.take_along_axis(sorted_p, (n_keep - 1)[:, None], axis=-1)
    return xp.where(probs < threshold, -xp.inf, logits)


def softmax(logits):
    """Row softmax (B, V) -> (B, V), in float32 for float16 logits (layers.softmax_forward)."""
    return softmax_forward(float32_if_half(logits))[0]


def warp(logits, temperature, top_k=None, top_p=None):
    """The logits sampling draws from: logits / temperature, then top-k, then top-p (filtered
    tokens at -inf). logits (B, V) -> float32 or float64 (B, V). temperature > 0."""
    z = float32_if_half(logits) / float(temperature)
    if top_k is not None:
        z = top_k_filter(z, int(top_k))
    if top_p is not None:
        z = top_p_filter(z, top_p)
    return z


def sample(logits, temperature=0.0, top_k=None, top_p=None, rng=None):
    """Pick one token per row. logits (B, V) -> ids int64 (B,) on the logits' device.

    temperature 0 is greedy (argmax; top-k and top-p cannot change it). Otherwise draw from
    softmax(logits / temperature) after the filters, by inverse CDF: the first token whose
    cumulative probability exceeds u * total, with u ~ U[0, 1) from the host `rng`.

    The cumulative sum runs in float64: in float32, adding the tail's tiny probabilities to a
    running total near 1 rounds most of them away, and the GPU's parallel scan rounds them
    differently from the CPU's loop, so the same u could pick different tokens on the two.
    """
    xp = get_array_module(logits)
    if temperature == 0:
        return xp.argmax(logits, axis=-1)
    z = warp(logits, temperature, top_k, top_p)
    cdf = xp.cumsum(softmax(z.astype(xp.float64)), axis=-1)
    rng = rng if rng is not None else np.random.default_rng()
    u = xp.asarray(rng.random(z.shape[0]), dtype=cdf.dtype)[:, None] * cdf[:, -1:]
    ids = (cdf <= u).sum(axis=-1)
    # Rounding can make u equal the total; then take the last token that has any probability
    # (never a filtered one, whose probability is exactly 0).
    last = (cdf < cdf[:, -1:]).sum(axis=-1)
    return xp.minimum(ids, last)
