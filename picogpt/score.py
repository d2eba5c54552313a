"""Log-likelihood scoring, the way lm-evaluation-harness and the GPT-2 paper evaluate a model.

    score(model, contexts, continuations)   log p(continuation | context) of each pair
    choice_accuracy(model, tok, records)    HellaSwag-style multiple choice: acc and acc_norm
    lambada(model, tok, lines)              LAMBADA: last-word accuracy and perplexity

A multiple-choice question is not answered by generating text: each candidate answer is
appended to the question, the model's log-probability of the answer's tokens is summed,

    log p(y | x) = sum_{t=1..|y|} log p(y_t | x, y_1 .. y_{t-1}),

and the most probable candidate is the model's choice. One forward pass over x + y gives every
term at once: position |x| - 1 + t predicts y_t.
"""

import math
import re
from typing import NamedTuple

import numpy as np

from .backend import asnumpy, get_array_module
from .dtypes import float32_if_half
from .errors import PicoGPTError


class Scores(NamedTuple):
    """What `score` returns, one entry per (context, continuation) pair."""

    logprob: np.ndarray   # (N,) float64: sum of log p over the continuation's tokens (nats, <= 0)
    tokens: np.ndarray    # (N,) int64: how many tokens the continuation has
    greedy: np.ndarray    # (N,) bool: every continuation token is the model's argmax (greedy decoding)


# ---------------------------------------------------------------------------------------------
# Text -> tokens at the context/continuation boundary


def encode_pair(tok, context, continuation):
    """(context ids, continuation ids) for two strings, as lm-evaluation-harness splits them.

    BPE merges across the boundary, so encode(context) + encode(continuation) is not always
    encode(context + continuation). The harness therefore:
      - moves trailing spaces of the context to the front of the continuation ("Paris is " +
        "big" -> "Paris is" + " big": GPT-2's tokens carry their leading space),
      - encodes context + continuation whole, and takes as the continuation's tokens what
        follows the context's own tokens;
      - an empty context becomes <|endoftext|> (the model needs one token to predict the first).
    The literal text "<|endoftext|>" is read as that special token (tok.encode), as transformers'
    GPT-2 tokenizer does in the harness.
    """
    if context == "":
        return [tok.eot_token], tok.encode(continuation)
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = tok.encode(context + continuation)
    context_ids = tok.encode(context)
    return context_ids, whole[len(context_ids):]


def _token_pairs(model, tok, contexts, continuations):
    """Both lists as [(context ids, continuation ids)], checked; strings are encoded with `tok`."""
    if isinstance(contexts, str) or isinstance(continuations, str):
        raise PicoGPTError("score takes a list of contexts and a list of continuations, not a single string.")
    contexts, continuations = list(contexts), list(continuations)
    if len(contexts) != len(continuations):
        raise PicoGPTError(f"score got {len(contexts)} contexts but {len(continuations)} continuations: give one continuation per context.")
    pairs = []
    for i, (ctx, cont) in enumerate(zip(contexts, continuations)):
        if isinstance(ctx, str) or isinstance(cont, str):
            if not (isinstance(ctx, str) and isinstance(cont, str)):
                raise PicoGPTError(f"pair {i} mixes text and token ids: give both as text or both as ids.")
            if tok is None:
                raise PicoGPTError("score was given text but no tokenizer: pass tok=picogpt.get_tokenizer().")
            ctx, cont = encode_pair(tok, ctx, cont)
        ctx, cont = [int(t) for t in ctx], [int(t) for t in cont]
        if not ctx:
            raise PicoGPTError(f"the context of pair {i} has no tokens: give at least one (the harness uses <|endoftext|>).")
        if not cont:
            raise PicoGPTError(f"the continuation of pair {i} has no tokens: there is nothing to score.")
        if len(cont) > model.config.n_ctx:
            raise PicoGPTError(f"the continuation of pair {i} has {len(cont)} tokens, more than the model's context of {model.config.n_ctx}.")
        model.check_ids(ctx + cont, f"the tokens of pair {i}")
        pairs.append((ctx, cont))
    return pairs


# ---------------------------------------------------------------------------------------------
# Scoring


def log_softmax(logits):
    """log p = z - log(sum(exp(z))), z = logits - row max (so exp never overflows). (M, V) -> (M, V)."""
    xp = get_array_module(logits)
    z = float32_if_half(logits)
    z = z - z.max(axis=-1, keepdims=True)
    return z - xp.log(xp.exp(z).sum(axis=-1, keepdims=True))


def model_input(context, continuation, n_ctx):
    """The tokens fed to the model for one pair, cut from the left to fit the context window.

    The last token is never an input (nothing after it is scored), so up to n_ctx + 1 tokens of
    context + continuation are used: (context + continuation)[-(n_ctx + 1):][:-1], as the harness.
    The continuation's tokens are the targets of the last len(continuation) input positions.
    """
    return (context + continuation)[-(n_ctx + 1):][:-1]


def score(model, contexts, continuations, tok=None, batch_size=16, progress=None):
    """Summed log-probability of each continuation after its context -> Scores(logprob, tokens, greedy).

    contexts, continuations: two lists of the same length, either both of token-id lists, or
    both of strings (then `tok`, a picogpt tokenizer, encodes them with `encode_pair`).
    batch_size: pairs per forward pass. progress: called as progress(done, total) after each batch.

    Pairs go through the model longest first, `batch_size` at a time, right-padded: attention
    is causal, so tokens appended after a row's end cannot change that row's earlier positions,
    and no mask is needed. Only the positions that predict a continuation token go through the
    LM head (x @ wte^T), not all B x T of them. Contexts longer than the model's window lose
    their oldest tokens (`model_input`).
    """
    if batch_size < 1:
        raise PicoGPTError(f"the batch size must be at least 1, got {batch_size}.")
    pairs = _token_pairs(model, tok, contexts, continuations)
    inputs = [model_input(ctx, cont, model.config.n_ctx) for ctx, cont in pairs]
    n = len(pairs)
    logprob, greedy = np.zeros(n), np.zeros(n, dtype=bool)
    # Longest first (as the harness): the first batch is the largest, so running out of memory
    # shows at once, and rows of similar length share a batch (less padding).
    order = sorted(range(n), key=lambda i: -len(inputs[i]))
    for start in range(0, n, batch_size):
        batch = order[start:start + batch_size]
        x = np.zeros((len(batch), len(inputs[batch[0]])), dtype=np.int64)   # right padding with token 0
        rows, cols, targets, lengths = [], [], [], []
        for r, i in enumerate(batch):
            cont, t = pairs[i][1], len(inputs[i])
            x[r, :t] = inputs[i]
            rows += [r] * len(cont)
            cols += range(t - len(cont), t)      # position t - len(cont) + j predicts cont[j]
            targets += cont
            lengths.append(len(cont))
        token_logp, token_greedy = _score_positions(model, x, rows, cols, targets)
        ends = np.cumsum(lengths)
        for i, lp, gr in zip(batch, np.split(token_logp, ends[:-1]), np.split(token_greedy, ends[:-1])):
            logprob[i], greedy[i] = lp.sum(), gr.all()
        if progress:
            progress(min(start + batch_size, n), n)
    return Scores(logprob, np.array([len(c) for _, c in pairs], dtype=np.int64), greedy)


def _score_positions(model, x, rows, cols, targets, chunk=512):
    """log p(targets[k]) at position (rows[k], cols[k]) of the batch x (B, T), and whether each
    target is the argmax there. -> (float64 (M,), bool (M,)) on the host.

    The LM head runs on `chunk` positions at a time: (chunk, V) logits, never (M, V) at once.
    """
    hidden = model.forward(x, head=False)                             # (B, T, C) after ln_f
    xp = get_array_module(hidden)
    h = hidden[xp.asarray(np.asarray(rows)), xp.asarray(np.asarray(cols))]   # (M, C)
    target = xp.asarray(np.asarray(targets, dtype=np.int64))
    logp, hits = [], []
    for a in range(0, len(targets), chunk):
        logits = h[a:a + chunk] @ model.params["wte.weight"].T        # (m, V): the tied LM head
        t = target[a:a + chunk]
        logp.append(asnumpy(log_softmax(logits)[xp.arange(len(t)), t]).astype(np.float64))
        hits.append(asnumpy(logits.argmax(axis=-1) == t))
    return np.concatenate(logp), np.concatenate(hits)


# ---------------------------------------------------------------------------------------------
# Multiple choice (HellaSwag)


def hellaswag_preprocess(text):
    """lm-evaluation-harness's clean-up of HellaSwag text: strip, WikiHow's " [title]" -> ". ",
    drop other [bracketed] markers, and collapse double spaces."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def choice_item(record, i):
    """One HellaSwag record -> (context, [endings], label), as the harness builds them.

    Accepts HellaSwag's own fields: `ctx` (or `ctx_a` + `ctx_b`, joined with ctx_b capitalised),
    an optional `activity_label` (prefixed as "label: "), `endings` (a list of strings) and
    `label` (an int or a digit string). Context and endings go through `hellaswag_preprocess`.
    """
    if not isinstance(record, dict):
        raise PicoGPTError(f"record {i} must be a JSON object with ctx, endings and label.")
    missing = [k for k in ("endings", "label") if k not in record]
    if "ctx" not in record and not ("ctx_a" in record and "ctx_b" in record):
        missing.insert(0, "ctx")
    if missing:
        raise PicoGPTError(f"record {i} has no {', '.join(missing)}: each record needs ctx, endings and label.")
    endings = record["endings"]
    if isinstance(endings, str) or not isinstance(endings, list) or len(endings) < 2 \
            or not all(isinstance(e, str) for e in endings):
        raise PicoGPTError(f"record {i}: endings must be a list of at least two strings.")
    endings = [hellaswag_preprocess(e) for e in endings]
    if not all(endings):
        raise PicoGPTError(f"record {i} has an empty ending: acc_norm divides by each ending's length.")
    try:
        label = int(record["label"])
    except (TypeError, ValueError):
        label = -1
    if not 0 <= label < len(endings):
        raise PicoGPTError(f"record {i}: label must be an index into its {len(endings)} endings, got {record['label']!r}.")
    if "ctx_a" in record and "ctx_b" in record:
        ctx = record["ctx_a"] + " " + record["ctx_b"].capitalize()
    else:
        ctx = record["ctx"]
    if record.get("activity_label"):
        ctx = record["activity_label"] + ": " + ctx
    return hellaswag_preprocess(ctx), endings, label


def choice_accuracy(model, tok, records, batch_size=16, progress=None):
    """Zero-shot multiple-choice accuracy, as lm-evaluation-harness's hellaswag task.

    Each ending is scored as the continuation " " + ending of the context. Returns a dict:
      acc       fraction of records whose most probable ending is the label:
                argmax_k log p(ending_k | context)
      acc_norm  the same with each log-probability divided by the ending's length in
                characters, len(ending_k) (the harness's `completion_len`; the byte length for
                ASCII text): long endings are not penalised for having more tokens to pay for.
      n, pred, pred_norm   the number of records and each record's chosen index under both.
    progress(done, total) counts (context, ending) pairs.
    """
    records = list(records)
    if not records:
        raise PicoGPTError("choice_accuracy needs at least one record.")
    items = [choice_item(r, i) for i, r in enumerate(records)]
    contexts = [ctx for ctx, endings, _ in items for _ in endings]
    continuations = [" " + e for _, endings, _ in items for e in endings]
    lls = score(model, contexts, continuations, tok=tok, batch_size=batch_size, progress=progress).logprob
    pred, pred_norm, start = [], [], 0
    for _, endings, _ in items:
        ll = lls[start:start + len(endings)]
        start += len(endings)
        pred.append(int(np.argmax(ll)))
        pred_norm.append(int(np.argmax(ll / np.array([float(len(e)) for e in endings]))))
    labels = np.array([label for _, _, label in items])
    return {"acc": float(np.mean(np.array(pred) == labels)), "acc_norm": float(np.mean(np.array(pred_norm) == labels)),
            "n": len(items), "pred": pred, "pred_norm": pred_norm}


# ---------------------------------------------------------------------------------------------
# LAMBADA


def lambada_split(text):
    """(context, " last word") of one LAMBADA passage, as the harness's lambada_openai:
    the words are split on single spaces, and the space before the last word goes with it."""
    words = text.split(" ")
    return " ".join(words[:-1]), " " + words[-1]


def lambada(model, tok, lines, batch_size=16, progress=None):
    """LAMBADA (Paperno et al. 2016) zero-shot, as the GPT-2 paper and lm-evaluation-harness.

    lines: one passage per line (blank lines are skipped). The task is the last word. Returns:
      acc   fraction of passages whose last word greedy decoding would produce: every one of
            its tokens is the model's argmax given the tokens before it
      ppl   exp(-mean over passages of log p(last word | passage)): the perplexity of the last
            word, per word, as the harness's `perplexity` aggregation (not per token)
      n, tokens   the number of passages, and of last-word tokens scored
    """
    texts = [t.strip() for t in lines if t.strip()]
    if not texts:
        raise PicoGPTError("lambada needs at least one non-empty line of text.")
    contexts, words = zip(*(lambada_split(t) for t in texts))
    s = score(model, contexts, words, tok=tok, batch_size=batch_size, progress=progress)
    return {"acc": float(s.greedy.mean()), "ppl": math.exp(-float(s.logprob.mean())),
            "n": len(texts), "tokens": int(s.tokens.sum())}
