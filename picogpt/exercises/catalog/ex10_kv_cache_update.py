"""Exercise `kv_cache_update`: write new keys and values into a preallocated cache, in place."""

from types import SimpleNamespace

import numpy as np

from ...backend import get_array_module
from ...model import KVCache
from ..exercise import Exercise
from .common import array, hyp, rounded, wrong


def reference(k_cache, v_cache, k_new, v_new, length):
    B, H, max_len, D = k_cache.shape
    config = SimpleNamespace(n_layer=1, n_head=H, head_dim=D, heads=lambda i: H)   # heads(i): per-layer count (pruning)
    cache = KVCache(config, B, max_len, get_array_module(k_cache), k_cache.dtype)
    cache.k[0], cache.v[0] = k_cache, v_cache    # the caller's arrays: append writes into them
    cache.length = length
    return cache.append(0, k_new, v_new)


STATEMENT = """\
## Exercise `kv_cache_update`

Implement `kv_cache_update(k_cache, v_cache, k_new, v_new, length)`: store the keys and values
of new positions in a preallocated cache, and return every key and value so far.

While generating, each step computes keys and values only for the new token(s); the ones of
earlier positions are kept in a cache, allocated once for `max_len` positions, so that no step
has to copy it (a concatenate would copy the whole cache every step).

- `k_cache`, `v_cache`: `(B, H, max_len, D)`; positions `0 .. length - 1` are filled, the rest
  is left-over data.
- `k_new`, `v_new`: `(B, H, T, D)`, the next `T` positions; `length + T <= max_len`.
- `length`: an int, how many positions are filled (0 for an empty cache).
- **write** `k_new` and `v_new` into the caches, in place, at positions `length .. length + T - 1`;
  leave every other position as it was (and `k_new`, `v_new` too);
- **return** `(k_all, v_all)`, each `(B, H, length + T, D)`: the filled part of each cache,
  without copying it.

{check}
"""

STUB = '''\
def kv_cache_update(k_cache, v_cache, k_new, v_new, length):
    """Write the new keys/values into the caches in place; return the filled parts.

    k_cache, v_cache (B, H, max_len, D), k_new, v_new (B, H, T, D), length int
        ->  k_all, v_all (B, H, length + T, D)
    """
    raise NotImplementedError("your code here")
'''

HINTS = (
    "positions are axis 2 of (B, H, positions, D): the new ones go at length .. length + T - 1, "
    "with T = k_new.shape[2].",
    "assigning to a slice writes into the array itself: k_cache[:, :, a:b] = k_new changes k_cache in place "
    "(k_cache = ... would only rebind your local name).",
    "a basic slice is a view, not a copy: return k_cache[:, :, :length + T] and v_cache[:, :, :length + T].",
)

MODEL_ANSWER = """\
T = k_new.shape[2]
k_cache[:, :, length:length + T] = k_new                  # in place: no copy of the cache
v_cache[:, :, length:length + T] = v_new
return k_cache[:, :, :length + T], v_cache[:, :, :length + T]"""


def _args(rng, B, H, max_len, D, T, length):
    caches = [rounded(rng, (B, H, max_len, D)) for _ in range(2)]   # left-over data beyond `length`
    news = [rounded(rng, (B, H, T, D)) for _ in range(2)]
    return caches[0], caches[1], news[0], news[1], length


def examples():
    rng = np.random.default_rng(8)
    return [
        ("the prompt: an empty cache (length 0), T = 3", _args(rng, 1, 1, 5, 2, 3, 0)),
        ("a decoding step: length 3, T = 1", _args(rng, 1, 2, 6, 2, 1, 3)),
        ("two sequences, length 2, T = 2", _args(rng, 2, 2, 6, 3, 2, 2)),
        ("filling the cache to the end", _args(rng, 1, 1, 4, 2, 2, 2)),
    ]


def strategy():
    st, _ = hyp()

    @st.composite
    def inputs(draw):
        B, H, D = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 3))
        max_len = draw(st.integers(1, 6))
        T = draw(st.integers(1, max_len))
        length = draw(st.integers(0, max_len - T))
        caches = [draw(array((B, H, max_len, D), -5.0, 5.0)) for _ in range(2)]
        news = [draw(array((B, H, T, D), -5.0, 5.0)) for _ in range(2)]
        return caches[0], caches[1], news[0], news[1], length

    return inputs()


def _detector(outcome):
    k_cache, _, k_new, _, length = outcome.args
    T, max_len = k_new.shape[2], k_cache.shape[2]
    if isinstance(outcome.error, ValueError) and "broadcast" in str(outcome.error):
        return ("the slice you write into must hold exactly T positions: k_cache[:, :, length:length + T] "
                "(positions are axis 2).")
    if outcome.got is None:
        return None
    shapes = [np.shape(g) for g in outcome.got[:2]]
    if any(s != (k_cache.shape[:2] + (length + T, k_cache.shape[3])) for s in shapes):
        if any(len(s) == 4 and s[2] == max_len for s in shapes):
            return "return only the filled part, k_cache[:, :, :length + T], not the whole cache."
        return "k_all is (B, H, length + T, D): positions are axis 2, and it holds the old AND the new ones."
    if not any(wrong(outcome, label) for label in ("k_all", "v_all")):
        return ("write into k_cache and v_cache IN PLACE (k_cache[:, :, length:length + T] = k_new) and leave "
                "the other positions alone: the cache is preallocated so that no step copies it.")
    got_k = np.asarray(outcome.got[0])
    if got_k.shape[2] >= T and np.array_equal(got_k[:, :, :T], k_new) and length:
        return "write the new positions after the cached ones, at length .. length + T - 1, not at 0."
    return None


EXERCISE = Exercise(
    name="kv_cache_update",
    summary="write new keys/values into a preallocated KV cache, return the filled part",
    arg_names=("k_cache", "v_cache", "k_new", "v_new", "length"), outputs=("k_all", "v_all"),
    reference=reference, statement=STATEMENT, stub_function=STUB, hints=HINTS, model_answer=MODEL_ANSWER,
    examples_fn=examples, strategy=strategy, inplace=("k_cache", "v_cache"),
    detectors=[_detector],
)
