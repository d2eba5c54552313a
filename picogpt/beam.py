"""Beam search, as transformers' `generate(num_beams=K)` runs it.

Each prompt keeps K running hypotheses, rows p*K .. p*K + K - 1 of the batch, each with its
score: the sum of its tokens' log-probabilities. One step:

  1. every running row's next-token log-probabilities, log_softmax(logits), go through the
     rules (sampling.apply_rules) and get the row's score added;
  2. over the K x V candidates of a prompt, the 2K best are kept (2K, so that K survive even
     if K of them end here);
  3. a candidate ends on end-of-text, on a stop string, or at the last step. If it is among
     the K best candidates, it is offered to the prompt's K finished hypotheses with the score

         sum log p / n ** length_penalty          (n: its new tokens, the end included)

     (length_penalty > 0 favours longer hypotheses, < 0 shorter ones);
  4. the K best candidates that did not end are the next running rows: the token rows and
     the KV cache rows are reordered in place to follow them (Rows.reorder), and the new
     tokens are fed.

When a prompt is done (early_stopping):
  True     as soon as it has K finished hypotheses;
  False    when even its best running row, scored at its current length, cannot beat its worst
           finished hypothesis (a heuristic: with length_penalty > 0 a longer one could);
  "never"  the same test, but the best running row scored at the longest length it could still
           reach when length_penalty > 0: the canonical, exact beam search.
Generation stops when every prompt is done (its rows still run with the others until then,
but can no longer change its finished set), or at max_new_tokens. The result for each prompt
is its num_return_sequences best finished hypotheses, best first.

Beam search with sampling (transformers' do_sample with num_beams) is not offered here.
"""

import numpy as np

from .backend import asnumpy, get_array_module
from .errors import PicoGPTError
from .sampling import apply_rules
from .score import log_softmax

EARLY_STOPPING = (True, False, "never")
NEG = np.float32(-1e9)   # transformers' "never this one" score


def check_beam_args(num_beams=1, num_return_sequences=1, temperature=0.0, length_penalty=1.0, early_stopping=False):
    """One clear sentence for each impossible beam setting."""
    if int(num_beams) != num_beams or num_beams < 1:
        raise PicoGPTError(f"num_beams must be a whole number >= 1 (1 = no beam search), got {num_beams}.")
    if int(num_return_sequences) != num_return_sequences or num_return_sequences < 1:
        raise PicoGPTError(f"num_return_sequences must be a whole number >= 1, got {num_return_sequences}.")
    if num_beams > 1 and temperature > 0:
        raise PicoGPTError(f"beam search with sampling (temperature {temperature} and {num_beams} beams) is not "
                           f"supported: use temperature 0 with beams, or 1 beam to sample.")
    if temperature == 0 and num_return_sequences > num_beams:
        raise PicoGPTError(f"num_return_sequences ({num_return_sequences}) must be <= num_beams ({num_beams}): "
                           f"there are only {num_beams} beams to return (or sample with temperature > 0).")
    if not np.isfinite(length_penalty):
        raise PicoGPTError(f"length_penalty must be a finite number, got {length_penalty}.")
    if not any(early_stopping is e for e in EARLY_STOPPING) and early_stopping != "never":
        raise PicoGPTError(f"early_stopping must be True, False or 'never', got {early_stopping!r}.")


def _best(scores, k):
    """Indices of the k largest entries of each row, largest first. (B, N) -> (B, k)."""
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def _top(scores, k):
    """The k largest entries of each row, largest first, on the scores' device -> host
    (indices (B, k), values float32 (B, k)). A partition finds them in O(K V) and only those k
    are sorted, not all K x V candidates."""
    xp = get_array_module(scores)
    part = xp.argpartition(-scores, k - 1, axis=1)[:, :k]
    values = xp.take_along_axis(scores, part, axis=1)
    order = xp.argsort(-values, axis=1)
    return (asnumpy(xp.take_along_axis(part, order, axis=1)),
            asnumpy(xp.take_along_axis(values, order, axis=1)).astype(np.float32))


def _take(a, index):
    """a[b, index[b, j]] for each prompt b: (B, N, ...) gathered by (B, k) -> (B, k, ...)."""
    return a[np.arange(a.shape[0])[:, None], index]


def beam_search(rows, K, max_new_tokens, rules, length_penalty=1.0, early_stopping=False,
                num_return_sequences=1, stopper=None):
    """Beam search over `rows` (generation.Rows: B prompts, each repeated K times, rows p*K + j).

    Returns B * num_return_sequences lists of new tokens (each cut after its end), best first
    within a prompt.
    """
    xp, B = rows.xp, rows.n // K
    V = rows.model.config.vocab_size
    running = np.zeros((B, K), dtype=np.float32)
    running[:, 1:] = NEG                       # all K rows start equal: let only the first one expand
    run_seq = np.zeros((B, K, max_new_tokens), dtype=np.int64)   # each running row's new tokens
    fin_score = np.full((B, K), NEG, dtype=np.float32)           # the finished hypotheses
    fin_seq = np.zeros((B, K, max_new_tokens), dtype=np.int64)
    fin_len = np.zeros((B, K), dtype=np.int64)
    fin = np.zeros((B, K), dtype=bool)                           # slot holds a real hypothesis
    improvable = np.ones(B, dtype=bool)                          # the prompt is not done
    top_k = np.arange(2 * K) < K                                 # only these may be finished
    logits = rows.start()
    for step in range(max_new_tokens):
        # 1. log p of every next token, the rules, plus each row's running score: (B, K * V).
        logp = apply_rules(log_softmax(logits), step, rules, rows.seen(V) if rules.need_seen() else None,
                           rows.host_rows() if rules.need_rows() else None)
        total = (logp.reshape(B, K, V) + xp.asarray(running)[:, :, None]).reshape(B, K * V)
        # 2. the 2K best candidates of each prompt (the only numbers brought to the host).
        best, cand_score = _top(total, 2 * K)
        src, token = best // V, best % V                         # (B, 2K): source row, new token
        cand_seq = _take(run_seq, src)
        cand_seq[:, :, step] = token
        # 3. which candidates end here.
        ends = np.full((B, 2 * K), step == max_new_tokens - 1)
        if rules.eos is not None:
            ends |= token == rules.eos
        if stopper is not None:
            ends |= np.array([[stopper(c[:step + 1]) for c in cb] for cb in cand_seq])
        # 4. the K best that did not end run on.
        alive = cand_score + ends * NEG
        keep = _best(alive, K)
        running, run_seq, from_row = _take(alive, keep), _take(cand_seq, keep), _take(src, keep)
        # 3'. the finished set: the K best of the old finished and the new finished.
        final = cand_score / np.float32((step + 1) ** length_penalty)
        if early_stopping is True:
            final += fin.all(axis=1, keepdims=True) * NEG        # full: nothing more enters
        final += ~improvable[:, None] * NEG                      # done: nothing more enters
        final += ~(ends & top_k) * NEG
        merged = np.concatenate([fin_score, final], axis=1)
        pick = _best(merged, K)
        fin_score = _take(merged, pick)
        fin_seq = _take(np.concatenate([fin_seq, cand_seq], axis=1), pick)
        fin_len = _take(np.concatenate([fin_len, np.full((B, 2 * K), step + 1)], axis=1), pick)
        fin = _take(np.concatenate([fin, ends & top_k], axis=1), pick)
        # Is each prompt done? (transformers' early-stop heuristic)
        n = step + 1
        reach = max_new_tokens if early_stopping == "never" and length_penalty > 0 else n
        best_possible = running[:, :1] / np.float32(reach ** length_penalty)
        worst = np.where(fin, fin_score.min(axis=1, keepdims=True), NEG)
        improvable &= (best_possible > worst).any(axis=1)
        if not improvable.any() or (early_stopping is True and fin.all()) or ends.all() or step == max_new_tokens - 1:
            break
        # Follow the chosen rows: token rows and KV cache rows, in place; then feed the new tokens.
        rows.reorder((np.arange(B)[:, None] * K + from_row).ravel())
        rows.push(xp.asarray(run_seq[:, :, step].ravel()))
        logits = rows.step()
    return [fin_seq[b, j, :fin_len[b, j]].tolist() for b in range(B) for j in range(num_return_sequences)]
