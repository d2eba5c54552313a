"""The generation loop: prompts in, continued token ids out, one KV-cached step at a time.

The prompt is run through the model once (prefill), filling each layer's key/value cache;
then every step feeds only the newest token and reads the earlier ones from the cache, so a
step costs one position, not the whole sequence.

Prompts of different lengths run together: they are left-padded to one length, and each row's
positions and attention mask skip its padding (see model.positions_and_mask).

The context rule: a prompt plus max_new_tokens may not exceed the model's context (1024 for
GPT-2). By default that is an error; with overflow="truncate" the oldest prompt tokens are
dropped until it fits.

This module asks the model only for what a model object offers (config, xp, check_ids,
new_cache, next_logits), so model.py can import it for `GPT2.generate` without a cycle.
The `python -m picogpt.generate` command lives in picogpt/generate.py.
"""

import numpy as np

from .backend import asnumpy
from .errors import PicoGPTError
from .sampling import check_sampling_args, sample

OVERFLOW_RULES = ("error", "truncate")


def _as_prompts(ids):
    """ids (T,) | (B, T) | list of B lists -> (list of int lists, how to shape the output)."""
    if isinstance(ids, (list, tuple)) and ids and isinstance(ids[0], (list, tuple, np.ndarray)):
        rows = [list(map(int, r)) for r in ids]
        kind = "array" if len({len(r) for r in rows}) == 1 else "ragged"
        return rows, kind
    a = asnumpy(ids)
    if a.ndim == 1:
        return [a.tolist()], "flat"
    if a.ndim == 2:
        return a.tolist(), "array"
    raise PicoGPTError(f"prompt ids must be (T,), (B, T) or a list of lists, got shape {a.shape}.")


def fit_context(prompts, max_new_tokens, n_ctx, overflow="error"):
    """Apply the context rule to each prompt (a list of ids); returns the prompts to run."""
    if overflow not in OVERFLOW_RULES:
        raise PicoGPTError(f"unknown overflow rule {overflow!r}: use 'error' or 'truncate'.")
    if max_new_tokens >= n_ctx:
        raise PicoGPTError(f"{max_new_tokens} new tokens leave no room for a prompt in the context of {n_ctx} tokens.")
    room = n_ctx - max_new_tokens
    longest = max(len(p) for p in prompts)
    if longest <= room:
        return prompts
    if overflow == "error":
        raise PicoGPTError(
            f"the prompt ({longest} tokens) plus {max_new_tokens} new tokens exceeds the model's context of "
            f"{n_ctx} tokens: shorten the prompt, ask for fewer new tokens, or allow truncation "
            f"(overflow='truncate', --overflow truncate) to keep only the last {room} prompt tokens.")
    return [p[-room:] for p in prompts]


def generate(model, ids, max_new_tokens=32, temperature=0.0, top_k=None, top_p=None, seed=None,
             stop_at_eot=True, eot_token=50256, overflow="error", on_token=None):
    """Continue each prompt by up to `max_new_tokens` tokens.

    ids: int (T,), (B, T), or a list of B lists of different lengths.
    temperature 0 is greedy; top_k / top_p filter before sampling; `seed` makes sampling
    reproducible. A row stops at `eot_token` (when stop_at_eot) and is then padded with it;
    generation ends when every row has stopped or the budget is spent.
    on_token(step, tokens) is called with each new (B,) NumPy array of ids, for streaming.

    Returns NumPy ids shaped like the input: (T + n,), (B, T + n), or a list of lists (each
    row its own prompt plus its new tokens, up to and including the end-of-text token). With
    overflow="truncate" the prompts in the result are the truncated ones.
    """
    check_sampling_args(temperature, top_k, top_p)
    if int(max_new_tokens) != max_new_tokens or max_new_tokens < 0:
        raise PicoGPTError(f"the number of new tokens must be a whole number >= 0, got {max_new_tokens}.")
    prompts, kind = _as_prompts(ids)
    if not prompts or min(len(p) for p in prompts) == 0:
        raise PicoGPTError("a prompt is empty: give at least one token to continue.")
    config = model.config
    prompts = fit_context(prompts, max_new_tokens, config.n_ctx, overflow)
    for p in prompts:
        model.check_ids(p)  # one clear sentence for an id outside the vocabulary
    if eot_token is None or eot_token >= config.vocab_size:
        stop_at_eot = False

    B, lengths = len(prompts), [len(p) for p in prompts]
    P = max(lengths)
    pad = np.array([P - n for n in lengths])
    batch = np.zeros((B, P), dtype=np.int64)   # id 0 in the padding; the mask hides it
    for b, p in enumerate(prompts):
        batch[b, pad[b]:] = p
    # Each token comes back to the host as it is made only when something there must look at
    # it (the end-of-text check, streaming); otherwise the GPU runs ahead without waiting.
    to_host = stop_at_eot or on_token is not None
    xp, steps = model.xp, 0
    new = xp.zeros((B, max_new_tokens), dtype=np.int64)
    done = np.zeros(B, dtype=bool)
    rng = np.random.default_rng(seed)
    if max_new_tokens:
        kv = model.new_cache(B, P + max_new_tokens, pad=pad if pad.any() else None)

        logits = model.next_logits(xp.asarray(batch), kv)  # prefill: the whole prompt at once
        for steps in range(1, max_new_tokens + 1):
            tok = sample(logits, temperature, top_k, top_p, rng).astype(np.int64)   # (B,)
            if to_host:
                host = asnumpy(tok)
                if stop_at_eot:
                    host = np.where(done, eot_token, host)
                    done |= host == eot_token
                if on_token is not None:
                    on_token(steps - 1, host)
                tok = xp.asarray(host)
            new[:, steps - 1] = tok
            if steps == max_new_tokens or done.all():
                break
            logits = model.next_logits(tok[:, None], kv)    # one new position per step
    new = asnumpy(new[:, :steps])
    if kind == "ragged":
        out = []
        for p, row in zip(prompts, new.tolist()):
            if stop_at_eot and eot_token in row:
                row = row[:row.index(eot_token) + 1]
            out.append(p + row)
        return out
    full = np.concatenate([np.array(prompts, dtype=np.int64).reshape(B, -1), new], axis=1)
    return full[0] if kind == "flat" else full
