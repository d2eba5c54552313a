"""Adaptive softmax (Grave et al., 2017): a cheaper output layer for large vocabularies.

GPT-2 does NOT use it: GPT-2's output layer is the full softmax over all 50,257 tokens, with the
weights tied to the token embedding (logits = h @ wte^T). This is an option for models trained
from scratch (`python -m picogpt.train --adaptive-softmax-cutoffs 2000,10000`).

The idea: token frequencies follow Zipf's law, so a few thousand frequent tokens cover most of
the text. The vocabulary (token ids sorted by frequency; GPT-2's BPE ids roughly are, as BPE
merges frequent pairs first) is cut at c_0 < c_1 < ... < V:

    head:      the c_0 frequent tokens, plus one "cluster token" per tail cluster
    tail i:    tokens c_i .. c_{i+1} - 1, scored from a projection of h to d_i = C / 4^(i+1)

    log p(t) = log softmax(h W_head)[t]                                  t < c_0
    log p(t) = log softmax(h W_head)[c_0 + i] + log softmax(h P_i W_i)[t - c_i]   t in tail i

Every position pays for the head (C x (c_0 + K)); only the positions whose target is in tail i
pay for tail i, and through a narrower projection. Parameters, (in, out) like every picogpt
projection (torch's AdaptiveLogSoftmaxWithLoss holds the same matrices transposed, no biases):

    adaptive.head.weight (C, c_0 + K)     adaptive.tail.{i}.proj (C, d_i)   adaptive.tail.{i}.weight (d_i, size_i)
"""

import numpy as np

from . import model as M
from . import safetensors
from .backend import asnumpy, get_array_module
from .errors import PicoGPTError

HEAD = "adaptive.head.weight"
FILE = "adaptive_softmax.safetensors"
DIV = 4   # each tail cluster's projection is 4 times narrower than the one before


def parse_cutoffs(text, vocab_size):
    """'2000,10000' -> [2000, 10000], checked: increasing, positive, below the vocabulary."""
    try:
        cutoffs = [int(c) for c in str(text).split(",")]
    except ValueError:
        raise PicoGPTError(f"--adaptive-softmax-cutoffs takes increasing token counts such as 2000,10000, got {text!r}.") from None
    if any(b <= a for a, b in zip(cutoffs, cutoffs[1:])) or cutoffs[0] < 1 or cutoffs[-1] >= vocab_size:
        raise PicoGPTError(f"adaptive softmax cutoffs must be increasing and between 1 and the vocabulary size "
                           f"({vocab_size:,}) exclusive, got {cutoffs}.")
    return cutoffs


def tail_names(i):
    return f"adaptive.tail.{i}.proj", f"adaptive.tail.{i}.weight"


def init_params(C, cutoffs, vocab_size, xp, dtype, seed=0):
    """N(0, 0.02) matrices for the head and every tail cluster."""
    rng = np.random.default_rng(seed)
    bounds = cutoffs + [vocab_size]
    shapes = {HEAD: (C, cutoffs[0] + len(cutoffs))}
    for i in range(len(cutoffs)):
        d = max(1, C // DIV ** (i + 1))
        proj, weight = tail_names(i)
        shapes[proj], shapes[weight] = (C, d), (d, bounds[i + 1] - bounds[i])
    return {k: xp.asarray(rng.normal(0.0, 0.02, s).astype(dtype)) for k, s in shapes.items()}


def _log_softmax(z):
    xp = get_array_module(z)
    z = z - z.max(axis=-1, keepdims=True)
    return z - xp.log(xp.exp(z).sum(axis=-1, keepdims=True))


def adaptive_forward(x, targets, head, tails, cutoffs, ignore_index=-100):
    """Mean -log p(target) under the adaptive softmax.

    x (N, C), targets int (N,), head (C, c_0 + K), tails [(P_i (C, d_i), W_i (d_i, size_i))],
    cutoffs [c_0, ..., c_{K-1}] -> (loss 0-d, cache). Rows whose target is ignore_index count for nothing.
    """
    xp = get_array_module(x)
    valid = targets != ignore_index
    w = (valid / xp.maximum(valid.sum(), 1)).astype(x.dtype)        # each row's weight in the mean
    c0 = cutoffs[0]
    # the head's target: the token itself, or its cluster's token c_0 + i
    cluster = xp.searchsorted(xp.asarray(cutoffs), targets, side="right")   # 0 = head, i + 1 = tail i
    head_target = xp.where(cluster == 0, targets, c0 + cluster - 1)
    head_target = xp.where(valid, head_target, 0)
    head_logp = _log_softmax(x @ head)
    rows = xp.arange(x.shape[0])
    logp = head_logp[rows, head_target]
    tail_caches = []
    for i, (P, W) in enumerate(tails):
        idx = xp.nonzero((cluster == i + 1) & valid)[0]               # only these rows pay for tail i
        h = x[idx] @ P
        tail_logp = _log_softmax(h @ W)
        local = targets[idx] - cutoffs[i]
        logp[idx] += tail_logp[xp.arange(len(idx)), local]
        tail_caches.append((idx, h, tail_logp, local))
    loss = -(logp * w).sum()
    return loss, (x, head, tails, w, head_logp, head_target, tail_caches)


def adaptive_backward(dloss, cache):
    """dloss (scalar) -> (dx (N, C), dhead, [(dP_i, dW_i)]).

    Each log softmax with a target behaves like cross-entropy: d(-log softmax(z)[t])/dz =
    softmax(z) - onehot(t). So, with w the rows' weights:
        dz_head = (p_head - onehot(head target)) w,           dhead = x^T dz_head,   dx = dz_head head^T
    and for the rows r of tail i, with h = x[r] P_i:
        dz_i = (p_i - onehot(t - c_i)) w[r],   dW_i = h^T dz_i,   dh = dz_i W_i^T,   dP_i = x[r]^T dh,   dx[r] += dh P_i^T
    """
    x, head, tails, w, head_logp, head_target, tail_caches = cache
    xp = get_array_module(x)
    scale = w * dloss
    dz = xp.exp(head_logp)
    dz[xp.arange(x.shape[0]), head_target] -= 1.0
    dz *= scale[:, None]
    dhead = x.T @ dz
    dx = dz @ head.T
    dtails = []
    for (P, W), (idx, h, tail_logp, local) in zip(tails, tail_caches):
        dzt = xp.exp(tail_logp)
        dzt[xp.arange(len(idx)), local] -= 1.0
        dzt *= scale[idx][:, None]
        dW = h.T @ dzt
        dh = dzt @ W.T
        dP = x[idx].T @ dh
        dx[idx] += dh @ P.T                                          # idx has no repeats: += is safe
        dtails.append((dP, dW))
    return dx, dhead, dtails


# --- in the model -----------------------------------------------------------------------------

def cutoffs_of(params):
    """The cutoffs of the adaptive softmax in params (from its tails' sizes), or None without one."""
    if HEAD not in params:
        return None
    K = 0
    while tail_names(K)[1] in params:
        K += 1
    cutoffs = [int(params[HEAD].shape[1]) - K]          # the head holds c_0 tokens and K cluster tokens
    for i in range(K - 1):
        cutoffs.append(cutoffs[-1] + int(params[tail_names(i)[1]].shape[1]))
    return cutoffs


def _parts(params):
    cutoffs = cutoffs_of(params)
    return params[HEAD], [(params[p], params[w]) for p, w in map(tail_names, range(len(cutoffs)))], cutoffs


def loss_and_grads(params, config, ids, targets, rng=None, wanted=None, ignore_index=-100):
    """The model's loss with the adaptive softmax as its output layer, and the gradients."""
    wanted = set(M.param_names(config)) | {k for k in params if k.startswith("adaptive.")} if wanted is None else wanted
    hidden, caches = M.forward(params, config, ids, rng=rng, head=False)
    B, T, C = hidden.shape
    head, tails, cutoffs = _parts(params)
    loss, cache = adaptive_forward(hidden.reshape(B * T, C), targets.reshape(-1), head, tails, cutoffs, ignore_index)
    dx, dhead, dtails = adaptive_backward(1.0, cache)
    grads = M.backward_hidden(dx.reshape(B, T, C), caches, config, wanted)   # wte: the lookup only (not tied here)
    grads[HEAD] = dhead
    for i, (dP, dW) in enumerate(dtails):
        grads.update(zip(tail_names(i), (dP, dW)))
    return float(loss), {k: g for k, g in grads.items() if k in wanted}


def loss(params, config, ids, targets, ignore_index=-100):
    """Mean cross-entropy under the adaptive softmax, without gradients."""
    hidden, _ = M.forward(params, config, ids, head=False, keep_caches=False)
    head, tails, cutoffs = _parts(params)
    return float(adaptive_forward(hidden.reshape(-1, config.n_embd), targets.reshape(-1), head, tails, cutoffs,
                                  ignore_index)[0])


def split(params):
    """(the GPT-2 parameters, the adaptive softmax's) of a params dict."""
    return ({k: a for k, a in params.items() if not k.startswith("adaptive.")},
            {k: a for k, a in params.items() if k.startswith("adaptive.")})


def save(params, folder):
    """The adaptive softmax's matrices -> folder/adaptive_softmax.safetensors (beside the model)."""
    _, own = split(params)
    safetensors.save({k: asnumpy(a) for k, a in own.items()}, f"{folder}/{FILE}",
                     metadata={"cutoffs": ",".join(map(str, cutoffs_of(params)))})
