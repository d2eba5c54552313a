"""From next-token logits to the next token: greedy, temperature, top-k, top-p.

The filters run in Hugging Face's order: temperature, then top-k, then top-p. All of it runs
on the logits' own device; only B uniform numbers cross from the host, drawn from a seeded
NumPy Generator, so a seed gives the same tokens on the CPU and on the GPU (up to rounding).
"""

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
    the most likely token always survives.
    """
    xp = get_array_module(logits)
    if p >= 1.0:
        return logits
    probs = softmax(logits)
    sorted_p = -xp.sort(-probs, axis=-1)                           # descending
    before = xp.cumsum(sorted_p, axis=-1) - sorted_p               # mass strictly above each
    n_keep = (before < p).sum(axis=-1)                             # >= 1
    threshold = xp.take_along_axis(sorted_p, (n_keep - 1)[:, None], axis=-1)
    return xp.where(probs < threshold, -xp.inf, logits)


def softmax(logits):
    """Row softmax (B, V) -> (B, V), in float32 for float16 logits (layers.softmax_forward)."""
    return softmax_forward(float32_if_half(logits))[0]


def sample(logits, temperature=0.0, top_k=None, top_p=None, rng=None):
    """Pick one token per row. logits (B, V) -> ids int64 (B,) on the logits' device.

    temperature 0 is greedy (argmax; top-k and top-p cannot change it). Otherwise draw from
    softmax(logits / temperature) after the filters, by inverse CDF: the first token whose
    cumulative probability exceeds u * total, with u ~ U[0, 1) from the host `rng`.
    """
    xp = get_array_module(logits)
    if temperature == 0:
        return xp.argmax(logits, axis=-1)
    z = float32_if_half(logits) / float(temperature)
    if top_k is not None:
        z = top_k_filter(z, int(top_k))
    if top_p is not None:
        z = top_p_filter(z, top_p)
    cdf = xp.cumsum(softmax(z), axis=-1)
    rng = rng if rng is not None else np.random.default_rng()
    u = xp.asarray(rng.random(z.shape[0]), dtype=cdf.dtype)[:, None] * cdf[:, -1:]
    ids = (cdf <= u).sum(axis=-1)
    # Rounding can make u equal the total; then take the last token that has any probability
    # (never a filtered one, whose probability is exactly 0).
    last = (cdf < cdf[:, -1:]).sum(axis=-1)
    return xp.minimum(ids, last)
