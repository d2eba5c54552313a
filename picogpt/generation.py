"""The generation loop: prompts in, continued token ids out, one KV-cached step at a time.

The prompt is run through the model once (prefill), filling each layer's key/value cache;
then every step feeds only the newest token and reads the earlier ones from the cache, so a
step costs one position, not the whole sequence.

Prompts of different lengths run together: they are left-padded to one length, and each row's
positions and attention mask skip its padding (see model.positions_and_mask).

The options are transformers' `generate` options, with the same names and defaults:
sampling (temperature, top_k, top_p), the rules that reshape the logits first
(repetition_penalty, no_repeat_ngram_size, min_new_tokens; picogpt/sampling.py), beam search
(num_beams, length_penalty, early_stopping, num_return_sequences; picogpt/beam.py), and
`stop` strings.

The context rule: a prompt plus max_new_tokens may not exceed the model's context (1024 for
GPT-2). By default that is an error; with overflow="truncate" the oldest prompt tokens are
dropped until it fits; with overflow="slide" generation goes on past the context as nanoGPT's
sampler does: once the sequence fills the context, each step keeps only the last n_ctx - 1
tokens and the new one. The positions then shift, so the cache cannot be kept: every step
from there on runs the model over the whole window of n_ctx tokens (a full forward per
token, about n_ctx times the cost of a cached step).

This module asks the model only for what a model object offers (config, xp, check_ids,
new_cache, next_logits, and the cache's reorder), so model.py can import it for
`GPT2.generate` without a cycle. The `python -m picogpt.generate` command lives in
picogpt/generate.py.
"""

import numpy as np

from .backend import asnumpy
from .beam import beam_search, check_beam_args
from .errors import PicoGPTError
from .sampling import Rules, apply_rules, check_rule_args, check_sampling_args, sample
from .tokenizer import get_tokenizer

OVERFLOW_RULES = ("error", "truncate", "slide")


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
        raise PicoGPTError(f"unknown overflow rule {overflow!r}: use 'error', 'truncate' or 'slide'.")
    if overflow == "slide":
        return prompts      # the window slides as needed (Rows.start)
    if max_new_tokens >= n_ctx:
        raise PicoGPTError(f"{max_new_tokens} new tokens leave no room for a prompt in the context of {n_ctx} tokens "
                           f"(overflow='slide', --overflow slide, generates past the context).")
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


def check_stop(stop):
    """stop: None, one string or a list of strings -> a tuple of non-empty strings."""
    if stop is None:
        return ()
    stop = (stop,) if isinstance(stop, str) else tuple(stop)
    if not all(isinstance(s, str) and s for s in stop):
        raise PicoGPTError(f"stop strings must be non-empty text, got {list(stop)!r}.")
    return stop


def cut_at_stop(text, stop):
    """The text before the first stop string in it (all of it when there is none)."""
    ends = [text.find(s) for s in check_stop(stop)]
    ends = [e for e in ends if e >= 0]
    return text[:min(ends)] if ends else text


def stop_checker(stop, tokenizer):
    """A function new_ids -> True once the decoded new tokens contain a stop string (or None)."""
    if not stop:
        return None
    return lambda new_ids: any(s in tokenizer.decode(list(new_ids)) for s in stop)


class Rows:
    """Every row's tokens so far and the model's KV cache of them.

    seq (R, P + max_new) int64 on the device: the left-padded prompts, then the new tokens;
    row r's tokens are seq[r, pad[r]:length]. The cache holds at most `window` positions:
    P + max_new_tokens, or the model's context when generating past it (overflow="slide").
    """

    def __init__(self, model, prompts, max_new_tokens):
        self.model, self.xp = model, model.xp
        P = max(len(p) for p in prompts)
        self.pad = np.array([P - len(p) for p in prompts])
        seq = np.zeros((len(prompts), P + max_new_tokens), dtype=np.int64)   # id 0 in the padding
        for r, p in enumerate(prompts):
            seq[r, self.pad[r]:P] = p
        self.seq = self.xp.asarray(seq)
        self.prompt_len = self.length = P
        self.window = min(model.context, P + max_new_tokens)
        self.kv = None

    @property
    def n(self):
        return self.seq.shape[0]

    def start(self):
        """Run the model over the last `window` tokens of each row, into a fresh cache -> logits (R, V).

        This is the prefill; with overflow="slide" it also runs at every step once the rows
        fill the context: the window's first position is position 0 again, so nothing cached
        can be kept."""
        cut = max(self.length - self.window, 0)
        pad = np.maximum(self.pad - cut, 0)
        self.kv = self.model.new_cache(self.n, self.window, pad=pad if pad.any() else None)
        return self.model.next_logits(self.seq[:, cut:self.length], self.kv)

    def push(self, tokens):
        """Append one token per row (R,) (device ids)."""
        self.seq[:, self.length] = tokens
        self.length += 1

    def step(self):
        """The logits (R, V) after the newest token: one cached position, or the whole window
        again when the cache is full (sliding)."""
        if self.kv.length == self.kv.max_len:
            return self.start()
        return self.model.next_logits(self.seq[:, self.length - 1:self.length], self.kv)

    def reorder(self, index):
        """Row r becomes row index[r] (beam search), in place: the tokens and the cache rows."""
        index = np.asarray(index)
        self.seq[...] = self.seq[self.xp.asarray(index)]
        self.pad = self.pad[index]
        self.kv.reorder(index)

    def seen(self, vocab_size):
        """bool (R, V): which tokens each row holds (its padding excluded), on the device."""
        xp = self.xp
        real = xp.arange(self.length)[None, :] >= xp.asarray(self.pad)[:, None]        # (R, T)
        rows = xp.broadcast_to(xp.arange(self.n)[:, None], real.shape)
        seen = xp.zeros((self.n, vocab_size), dtype=bool)
        seen[rows[real], self.seq[:, :self.length][real]] = True
        return seen

    def host_rows(self):
        """Each row's tokens (prompt and new, no padding) as host lists."""
        seq = asnumpy(self.seq[:, :self.length])
        return [row[p:].tolist() for row, p in zip(seq, self.pad)]

    def new_tokens(self):
        """(R, length - P) host array of the new tokens."""
        return asnumpy(self.seq[:, self.prompt_len:self.length])


def generate(model, ids, max_new_tokens=32, temperature=0.0, top_k=None, top_p=None, seed=None,
             stop_at_eot=True, eot_token=50256, overflow="error", on_token=None,
             repetition_penalty=1.0, no_repeat_ngram_size=0, min_new_tokens=0, num_beams=1,
             length_penalty=1.0, early_stopping=False, num_return_sequences=1, stop=None, tokenizer=None):
    """Continue each prompt by up to `max_new_tokens` tokens.

    ids: int (T,), (B, T), or a list of B lists of different lengths.
    temperature 0 is greedy; top_k / top_p filter before sampling; `seed` makes sampling
    reproducible. A row stops at `eot_token` (when stop_at_eot) and is then padded with it;
    generation ends when every row has stopped or the budget is spent.
    on_token(step, tokens) is called with each new (B,) NumPy array of ids, for streaming
    (not with beam search, whose rows are only known at the end).

    transformers' options, same names and defaults:
      repetition_penalty (1.0)      CTRL's penalty on every token already in the row
      no_repeat_ngram_size (0)      no n-gram of that size occurs twice in a row
      min_new_tokens (0)            end-of-text forbidden before that many new tokens
      num_beams (1)                 beam search with that many beams (temperature 0 only)
      length_penalty (1.0)          a finished beam scores sum log p / new_tokens ** length_penalty
      early_stopping (False)        True | False | "never": when beam search stops (picogpt/beam.py)
      num_return_sequences (1)      rows per prompt: the best beams (<= num_beams), or samples
    stop: a string or a list of them; a row ends once its new text contains one. Its ids keep
    the token that completed the stop string (as transformers); the text before the stop
    string is `cut_at_stop(tok.decode(new_ids), stop)`, which the commands print. `tokenizer`
    decodes for that check (default: the model's own, `model.tokenizer`, else GPT-2's).

    Returns NumPy ids shaped like the input: (T + n,), (B, T + n), or a list of lists (each
    row its own prompt plus its new tokens, up to and including its end). With several rows
    per prompt (num_return_sequences), a prompt's rows are consecutive: (B * R, T + n). With
    overflow="truncate" the prompts in the result are the truncated ones.
    """
    check_sampling_args(temperature, top_k, top_p)
    check_rule_args(repetition_penalty, no_repeat_ngram_size, min_new_tokens)
    check_beam_args(num_beams, num_return_sequences, temperature, length_penalty, early_stopping)
    stop = check_stop(stop)
    if int(max_new_tokens) != max_new_tokens or max_new_tokens < 0:
        raise PicoGPTError(f"the number of new tokens must be a whole number >= 0, got {max_new_tokens}.")
    prompts, kind = _as_prompts(ids)
    if not prompts or min(len(p) for p in prompts) == 0:
        raise PicoGPTError("a prompt is empty: give at least one token to continue.")
    config = model.config
    prompts = fit_context(prompts, max_new_tokens, model.context, overflow)   # a prefix takes P positions
    for p in prompts:
        model.check_ids(p)  # one clear sentence for an id outside the vocabulary
    has_eot = eot_token is not None and 0 <= eot_token < config.vocab_size
    fill = eot_token if has_eot else 0            # what finished rows are padded with
    eos = eot_token if has_eot and stop_at_eot else None
    rules = Rules(float(repetition_penalty), int(no_repeat_ngram_size), int(min_new_tokens), eos)
    stopper = stop_checker(stop, tokenizer or getattr(model, "tokenizer", None) or get_tokenizer())
    per_prompt = int(num_return_sequences)
    out_prompts = [p for p in prompts for _ in range(per_prompt)]

    if max_new_tokens == 0:
        new = [[] for _ in out_prompts]
    elif num_beams > 1:
        rows = Rows(model, [p for p in prompts for _ in range(num_beams)], max_new_tokens)
        new = beam_search(rows, num_beams, max_new_tokens, rules, length_penalty, early_stopping, per_prompt, stopper)
    else:
        rows = Rows(model, out_prompts, max_new_tokens)
        new = _sample_loop(rows, max_new_tokens, temperature, top_k, top_p, np.random.default_rng(seed),
                           rules, fill, stopper, on_token)
    return _shaped(out_prompts, new, kind, fill)


def _sample_loop(rows, max_new_tokens, temperature, top_k, top_p, rng, rules, fill, stopper, on_token):
    """Greedy decoding or sampling, one token per row per step -> each row's new tokens (lists;
    a finished row keeps its end-of-text or stop token, then `fill` up to the longest)."""
    xp, V = rows.xp, rows.model.config.vocab_size
    # Each token comes back to the host as it is made only when something there must look at
    # it (the end-of-text check, stop strings, streaming); otherwise the GPU runs ahead.
    to_host = rules.eos is not None or stopper is not None or on_token is not None
    done = np.zeros(rows.n, dtype=bool)
    end = np.zeros(rows.n, dtype=np.int64)   # how many new tokens a finished row has (0: running)
    logits = rows.start()   # prefill: the whole prompt at once
    for step in range(max_new_tokens):
        logits = apply_rules(logits, step, rules, rows.seen(V) if rules.need_seen() else None,
                             rows.host_rows() if rules.need_rows() else None)
        tok = sample(logits, temperature, top_k, top_p, rng).astype(np.int64)   # (R,)
        if to_host:
            host = np.where(done, fill, asnumpy(tok))
            rows.push(xp.asarray(host))
            ended = host == rules.eos if rules.eos is not None else np.zeros(rows.n, dtype=bool)
            if stopper is not None:
                new = rows.new_tokens()
                ended |= [not done[r] and stopper(new[r]) for r in range(rows.n)]
            end[ended & ~done] = step + 1
            done |= ended
            if on_token is not None:
                on_token(step, host)
        else:
            rows.push(tok)
        if step == max_new_tokens - 1 or done.all():
            break
        logits = rows.step()   # one new position per step (or the slid window)
    return [row[:e] if e else row for row, e in zip(rows.new_tokens().tolist(), end)]


def _shaped(prompts, new, kind, fill):
    """Prompts + new tokens in the input's form; array rows padded with `fill` to one length."""
    if kind == "ragged":
        return [p + row for p, row in zip(prompts, new)]
    width = max(len(row) for row in new)
    full = np.array([p + row + [fill] * (width - len(row)) for p, row in zip(prompts, new)], dtype=np.int64)
    return full[0] if kind == "flat" and len(full) == 1 else full
