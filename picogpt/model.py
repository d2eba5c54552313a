"""GPT-2: the forward pass over the parameter dict, its backward pass, and the KV cache.

Parameters are one flat dict keyed by Hugging Face's GPT-2 names, with Conv1D's (in, out)
layout so that every projection is `x @ W + b`:

    wte.weight (V, C)   wpe.weight (n_ctx, C)   ln_f.weight/bias (C,)
    h.{i}.ln_1.weight/bias (C,)            h.{i}.ln_2.weight/bias (C,)
    h.{i}.attn.c_attn.weight (C, 3C) .bias (3C,)    output is [q | k | v]
    h.{i}.attn.c_proj.weight (C, C)  .bias (C,)
    h.{i}.mlp.c_fc.weight   (C, 4C)  .bias (4C,)
    h.{i}.mlp.c_proj.weight (4C, C)  .bias (C,)

With config.bias False (nanoGPT's bias=False) no `.bias` exists: every projection is `x @ W` and
every layer norm `n * g`. config.gelu picks the MLP's activation: GPT-2's tanh GELU or the exact one.

The LM head is tied to `wte`: logits = ln_f(x) @ wte^T. LoRA adapters, when present, add
`<name>.lora_A` (in, r) and `<name>.lora_B` (r, out) beside a projection's weight; a prefix
(`prefix.*`, picogpt/peft/prefix.py) adds keys and values in front of every layer's; bottleneck
adapters (`h.{i}.adapter_attn.*`, `h.{i}.adapter_mlp.*`, picogpt/peft/adapters.py) follow a
sublayer, before its residual add.

`forward` returns the logits and the caches of every op, by name (ForwardCache, one
BlockCache per block); `backward` walks the same ops bottom-up, calling each op's backward
with its cache.
"""

from dataclasses import dataclass, field

import numpy as np

from . import layers as L
from .backend import asnumpy, get_array_module, resolve_device, to_device
from .dtypes import resolve_dtype
from .errors import PicoGPTError
from .generation import generate
from .score import score
from .peft import adapters as AD
from .peft import prefix as PX
from . import gates as G

LORA_SUFFIXES = (".lora_A", ".lora_B")

# config.gelu -> the MLP's activation, (forward, backward): GPT-2's tanh form or the exact (erf) one
GELU = {"tanh": (L.gelu_forward, L.gelu_backward), "exact": (L.gelu_exact_forward, L.gelu_exact_backward)}


@dataclass
class BlockCache:
    """What one block's backward needs: each op's own cache, named after the op, in forward order.

    A new op in the block (an adapter, a prefix, a gate) adds a field here, set in
    block_forward and read in block_backward by the same name.
    """
    ln1: tuple = None     # layernorm_forward: ln_1
    qkv: tuple = None     # _linear: attn.c_attn (x -> [q | k | v])
    att: tuple = None     # attention_forward: (q, k, v, softmax cache, dropped probs, dropout cache, scale)
    gate: tuple = None    # head_gate_forward (picogpt/gates.py), if the block has head gates
    prefix: bool = False  # True: `att` is prefix_attention_forward's cache (keys and values behind a prefix)
    causal: bool = False  # True: `att` is causal_attention_forward's cache (probabilities in blocks of queries)
    proj: tuple = None    # _linear: attn.c_proj
    drop1: tuple = None   # dropout_forward on the attention branch
    adapter_attn: tuple = None   # adapter_forward after the attention (Houlsby), if any
    ln2: tuple = None     # layernorm_forward: ln_2
    fc: tuple = None      # _linear: mlp.c_fc
    gelu: tuple = None    # gelu_forward
    mproj: tuple = None   # _linear: mlp.c_proj
    drop2: tuple = None   # dropout_forward on the MLP branch
    adapter_mlp: tuple = None    # adapter_forward after the MLP, if any


@dataclass
class ForwardCache:
    """What the model's backward needs, by name: the embeddings, every block, the final norm, the head.

    blocks is empty when forward ran with keep_caches=False; head is None when it ran with
    head=False (the loss then applies the head itself).
    """
    prefix: tuple = None  # prefix_forward: the prefix table's cache (None: no prefix, or a KV cache holds it)
    wte: tuple = None     # embedding_forward: token lookup
    wpe: tuple = None     # embedding_forward: position lookup
    drop: tuple = None    # dropout_forward on the embeddings
    blocks: list = field(default_factory=list)   # one BlockCache per block
    lnf: tuple = None     # layernorm_forward: ln_f
    head: tuple = None    # linear_forward: the tied LM head x @ wte^T


class KVCache:
    """Keys and values of every layer, preallocated for `max_len` positions.

    k[i], v[i]: (B, H, max_len, D). `length` positions are filled. `pad` (B,) int, or None,
    is how many left-padding positions each row has (prompts of different lengths).
    Allocating once avoids a concatenate (a copy of the whole cache) at every step.

    One forward step: every layer calls `append(layer, k, v)`, which writes its T new keys and
    values after the `length` filled ones; then `advance(T)` counts them as filled. Until
    then every layer of the step sees the same `length`.
    """

    def __init__(self, config, batch, max_len, xp, dtype, pad=None):
        shapes = [(batch, config.heads(i), max_len, config.head_dim) for i in range(config.n_layer)]   # heads: pruning
        self.k = [xp.zeros(shape, dtype=dtype) for shape in shapes]
        self.v = [xp.zeros(shape, dtype=dtype) for shape in shapes]
        self.max_len = max_len
        self.length = 0
        self.prefix = 0   # how many of the first positions hold a prefix (peft.prefix.fill_cache)
        self.pad = None if pad is None else xp.asarray(pad)

    def append(self, layer, k, v):
        """Write k, v (B, H, T, D) of `layer` at positions length .. length+T-1; return that
        layer's keys and values so far, (B, H, length+T, D) each."""
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise PicoGPTError(f"the KV cache holds {self.max_len} positions; {start} are used and {k.shape[2]} more do not fit.")
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, t):
        """Count the `t` positions every layer has just appended as filled."""
        self.length += t

    def reorder(self, index):
        """Row b becomes row index[b], in place (beam search follows its best rows):
        k[i][b] = k[i][index[b]] for the filled positions of every layer; nothing is recomputed.
        index: (B,) host ints. The identity (no row changed) copies nothing."""
        index = np.asarray(index)
        if (index == np.arange(len(index))).all():
            return
        xp = get_array_module(self.k[0])
        rows, n = xp.asarray(index), self.length
        for cache in self.k + self.v:
            cache[:, :, :n] = cache[rows, :, :n]
        if self.pad is not None:
            self.pad = self.pad[rows]


def positions_and_mask(xp, t, start=0, pad=None, prefix=0):
    """Position ids and the attention mask for `t` new tokens after `start` cached ones.

    Without padding: positions (T,) = start .. start+T-1 and the causal mask (Tq, Tk), or None
    when a single query may see every key (decoding). With left padding `pad` (B,): row b's
    real tokens start at pad[b], so its positions are shifted by pad[b] and its padding keys
    are hidden; a padding query still sees itself, so no softmax row is all -inf. A prefix
    (the first `prefix` cached positions, before any padding) is seen by every query.
    """
    tk = start + t
    if pad is None:
        mask = None if t == 1 else L.causal_mask(xp, t, tk)
        return xp.arange(start, tk), mask
    q_abs = xp.arange(start, tk)                                     # (Tq,)
    keys = xp.arange(tk)                                             # (Tk,)
    pos = xp.maximum(q_abs[None, :] - pad[:, None], 0)               # (B, Tq)
    causal = keys[None, :] <= q_abs[:, None]                         # (Tq, Tk)
    real = (keys[None, None, :] >= prefix + pad[:, None, None]) | (keys < prefix)   # (B, 1, Tk)
    itself = keys[None, :] == q_abs[:, None]                         # (Tq, Tk)
    mask = (causal[None] & real) | itself[None]                      # (B, Tq, Tk)
    return pos, mask[:, None]                                        # mask (B, 1, Tq, Tk)


def _linear(params, name, x, lora_scale):
    """x @ W + b for the projection `name`, plus its LoRA adapter s (x A) B if it has one.

    x (B, T, in), W (in, out), b (out,), A (in, r), B (r, out) -> y (B, T, out).
    """
    y, cache = L.linear_forward(x, params[name + ".weight"], params.get(name + ".bias"))   # no bias: --bias false
    A = params.get(name + ".lora_A")
    if A is None:
        return y, (cache, None)
    h, a_cache = L.linear_forward(x, A)
    z, b_cache = L.linear_forward(h, params[name + ".lora_B"])
    return y + lora_scale * z, (cache, (a_cache, b_cache, lora_scale))


def _linear_backward(dy, cache, name, grads, wanted):
    """Backward of `_linear`: dy (B, T, out) -> dx (B, T, in); the gradients of the parameters
    in `wanted` go into `grads`. The adapter is two more linear maps, h = x A and z = h B, so

        dB = h^T (s dy),   dh = (s dy) B^T,   dA = x^T dh,   dx += dh A^T
    """
    base, lora = cache
    w = name + ".weight"
    dx, dW, db = L.linear_backward(dy, base, param_grads=w in wanted)
    if dW is not None:
        grads[w] = dW
    if db is not None:
        grads[name + ".bias"] = db
    elif name + ".bias" in wanted:   # BitFit: the bias trains while the weight stays frozen
        grads[name + ".bias"] = dy.reshape(-1, dy.shape[-1]).sum(axis=0)
    if lora is not None:
        a_cache, b_cache, scale = lora
        dh, dB, _ = L.linear_backward(dy * scale, b_cache, param_grads=name + ".lora_B" in wanted)
        dxa, dA, _ = L.linear_backward(dh, a_cache, param_grads=name + ".lora_A" in wanted)
        if dB is not None:
            grads[name + ".lora_B"] = dB
        if dA is not None:
            grads[name + ".lora_A"] = dA
        dx = dx + dxa
    return dx


def block_forward(params, i, x, config, mask, kv=None, rng=None, lora_scale=1.0, prefix=None):
    """One pre-LN transformer block. x (B, T, C) -> (B, T, C). prefix: this layer's (pk, pv),
    each (H, P, D), put in front of the keys and values (training; generation has them in kv).

        x = x + dropout(attn(ln_1(x)))
        x = x + dropout(mlp(ln_2(x)))
    """
    p, eps, H = f"h.{i}.", config.layer_norm_epsilon, config.heads(i)
    C = H * config.head_dim   # the attention's width: n_embd, unless heads were pruned
    drop = config.dropout if rng is not None else 0.0
    c = BlockCache()
    h, c.ln1 = L.layernorm_forward(x, params[p + "ln_1.weight"], params.get(p + "ln_1.bias"), eps)
    qkv, c.qkv = _linear(params, p + "attn.c_attn", h, lora_scale)
    q, k, v = (L.split_heads(qkv[..., j * C:(j + 1) * C], H) for j in range(3))
    if kv is not None:
        k, v = kv.append(i, k, v)
    if prefix is None and kv is None and not drop and q.shape[2] > L.CAUSAL_ROWS:
        # training and scoring on long rows: the mask is the plain causal one, so the scores
        # above it need not be computed (up to CAUSAL_ROWS queries, one block: attention_forward)
        a, c.att = L.causal_attention_forward(q, k, v)
        c.causal = True
    elif prefix is None:
        a, c.att = L.attention_forward(q, k, v, mask, drop, rng)
    else:
        a, c.att = PX.prefix_attention_forward(q, k, v, *prefix, mask, drop, rng)
        c.prefix = True
    if (gate := params.get(p + G.GATE)) is not None:
        a, c.gate = G.head_gate_forward(a, gate)
    a, c.proj = _linear(params, p + "attn.c_proj", L.merge_heads(a), lora_scale)
    a, c.drop1 = L.dropout_forward(a, drop, rng)
    if (w := AD.adapter_weights(params, p + "adapter_attn")) is not None:
        a, c.adapter_attn = AD.adapter_forward(a, *w)
    x, _ = L.residual_forward(x, a)
    h, c.ln2 = L.layernorm_forward(x, params[p + "ln_2.weight"], params.get(p + "ln_2.bias"), eps)
    h, c.fc = _linear(params, p + "mlp.c_fc", h, lora_scale)
    h, c.gelu = GELU[config.gelu][0](h)
    h, c.mproj = _linear(params, p + "mlp.c_proj", h, lora_scale)
    h, c.drop2 = L.dropout_forward(h, drop, rng)
    if (w := AD.adapter_weights(params, p + "adapter_mlp")) is not None:
        h, c.adapter_mlp = AD.adapter_forward(h, *w)
    x, _ = L.residual_forward(x, h)
    return x, c


def _adapter_backward(dh, cache, name, grads):
    """Backward of a bottleneck adapter, if the block has one there: its gradients go into grads."""
    if cache is None:
        return dh
    dh, *dw = AD.adapter_backward(dh, cache)
    grads.update({f"{name}.{part}": g for part, g in zip(AD.PARTS, dw)})
    return dh


def block_backward(dx, c, i, config, grads, wanted):
    """The block's forward read bottom-up. dx (B, T, C) -> dx (B, T, C); c: its BlockCache."""
    p = f"h.{i}."
    # x = x + dropout(mlp(ln_2(x)))
    dx, dh = L.residual_backward(dx)
    dh = _adapter_backward(dh, c.adapter_mlp, p + "adapter_mlp", grads)
    dh = L.dropout_backward(dh, c.drop2)
    dh = _linear_backward(dh, c.mproj, p + "mlp.c_proj", grads, wanted)
    dh = GELU[config.gelu][1](dh, c.gelu)
    dh = _linear_backward(dh, c.fc, p + "mlp.c_fc", grads, wanted)
    dh, grads[p + "ln_2.weight"], grads[p + "ln_2.bias"] = L.layernorm_backward(dh, c.ln2)
    dx = dx + dh                             # a new array: the caller's dx is left as it was
    # x = x + dropout(attn(ln_1(x)))
    dx, da = L.residual_backward(dx)
    da = _adapter_backward(da, c.adapter_attn, p + "adapter_attn", grads)
    da = L.dropout_backward(da, c.drop1)
    da = L.split_heads(_linear_backward(da, c.proj, p + "attn.c_proj", grads, wanted), config.heads(i))
    if c.gate is not None:
        da, grads[p + G.GATE] = G.head_gate_backward(da, c.gate)
    if c.prefix:   # the prefix's keys and values get their gradient here, collected by backward_hidden
        dq, dk, dv, grads[p + "prefix_k"], grads[p + "prefix_v"] = PX.prefix_attention_backward(da, c.att)
    elif c.causal:
        dq, dk, dv = L.causal_attention_backward(da, c.att)
    else:
        dq, dk, dv = L.attention_backward(da, c.att)
    # plainly concatenate([merge_heads(dq), merge_heads(dk), merge_heads(dv)], axis=-1), with
    # each head's gradient copied once, straight into its place in d[q | k | v]
    B, H, T, D = dq.shape
    dqkv = get_array_module(dx).empty((B, T, 3, H, D), dtype=dq.dtype)
    for j, d in enumerate((dq, dk, dv)):
        dqkv[:, :, j] = d.transpose(0, 2, 1, 3)
    dh = _linear_backward(dqkv.reshape(B, T, 3 * H * D), c.qkv, p + "attn.c_attn", grads, wanted)
    dh, grads[p + "ln_1.weight"], grads[p + "ln_1.bias"] = L.layernorm_backward(dh, c.ln1)
    dx += dh                                 # in place: dx is this function's own array here
    return dx


def forward(params, config, ids, kv=None, rng=None, lora_scale=1.0, last_only=False, head=True, keep_caches=True):
    """GPT-2 forward. ids int (B, T) -> (logits (B, T, V), ForwardCache for `backward`).

    `forward(params, config, ids)` is the whole model, as a student writes it. The keywords
    are the paths the rest of picogpt takes through it, written down here once:

    kv           a KVCache (inference): positions continue from kv.length, each layer
                 appends its keys and values, and the cache advances by T at the end.
    kv=None with a prefix in params: the prefix's keys and values go in front of every
                 layer's, and positions start after them, as if a KV cache held them.
    rng          a random Generator: turns dropout on (training); None: no dropout.
    lora_scale   alpha / rank of the LoRA adapters in `params`, if any.
    last_only    the generation step: only the last position goes through ln_f and the LM
                 head -> logits (B, V).
    head=False   the fused losses (loss_and_grads, loss, heads.py) apply their own head:
                 return the final hidden states (B, T, C), after ln_f, and a cache whose
                 `head` is None; continue the backward with `backward_hidden`.
    keep_caches  False for inference: each block's cache is dropped as soon as the block is
                 done (the memory of one block, not all); `backward` then cannot run.
    """
    xp = get_array_module(params["wte.weight"])
    T = ids.shape[1]
    caches = ForwardCache()
    prefix, caches.prefix = PX.prefix_forward(params, config) if kv is None else (None, None)
    start = kv.length if kv is not None else PX.prefix_length(params)
    pad = kv.pad if kv is not None else None
    pos, mask = positions_and_mask(xp, T, start, pad, kv.prefix if kv is not None else 0)
    drop = config.dropout if rng is not None else 0.0

    tok, caches.wte = L.embedding_forward(ids, params["wte.weight"])
    # without padding every row has the same positions: one (T, C) lookup, added to each row
    posv, caches.wpe = L.embedding_forward(pos, params["wpe.weight"])
    x, caches.drop = L.dropout_forward(tok + posv, drop, rng)
    for i in range(config.n_layer):
        x, c = block_forward(params, i, x, config, mask, kv, rng, lora_scale, prefix and prefix[i])
        if keep_caches:
            caches.blocks.append(c)
    if kv is not None:
        kv.advance(T)
    if last_only:
        x = x[:, -1:]
    x, caches.lnf = L.layernorm_forward(x, params["ln_f.weight"], params.get("ln_f.bias"), config.layer_norm_epsilon)
    if not head:
        return x, caches
    logits, caches.head = L.linear_forward(x, params["wte.weight"].T)   # tied LM head: x @ wte^T
    if last_only:
        logits = logits[:, 0]
    return logits, caches


def backward(dlogits, caches, config, wanted=None):
    """dlogits (B, T, V) and forward's ForwardCache -> grads: dict keyed like params.

    `wanted` (a set of names, default: all base parameters) limits which parameter gradients
    are computed; a frozen projection's dW = x^T dy is then skipped, not computed and thrown
    away. The tied `wte` gets the sum of its two uses: the LM head and the token lookup.
    """
    wanted = set(param_names(config)) if wanted is None else wanted
    dx, dWT, _ = L.linear_backward(dlogits, caches.head, param_grads="wte.weight" in wanted)
    return backward_hidden(dx, caches, config, wanted, None if dWT is None else dWT.T)


def backward_hidden(dx, caches, config, wanted, dwte_head=None):
    """From the gradient of the final hidden states dx (B, T, C) down to the embeddings.

    caches: forward's ForwardCache (its `head` is not used). dwte_head: the LM head's share of
    wte's gradient (V, C), added to the lookup's share.
    """
    grads = {}
    dx, grads["ln_f.weight"], grads["ln_f.bias"] = L.layernorm_backward(dx, caches.lnf)
    for i in reversed(range(config.n_layer)):
        dx = block_backward(dx, caches.blocks[i], i, config, grads, wanted)
    dx = L.dropout_backward(dx, caches.drop)
    # x = wte[ids] + wpe[pos]: the add hands dx to both lookups.
    dtok, dpos = L.residual_backward(dx)
    if "wpe.weight" in wanted:
        # positions shared by every row (pos (T,), no padding) get the sum of the rows' gradients
        shared = caches.wpe[0].ndim == 1
        grads["wpe.weight"] = L.embedding_backward(dpos.sum(axis=0) if shared else dpos, caches.wpe)
    if "wte.weight" in wanted:
        # the lookup's share is scattered straight into the LM head's (V, C) gradient, if any
        grads["wte.weight"] = L.embedding_backward(dtok, caches.wte, into=dwte_head)
    if caches.blocks and caches.blocks[0].prefix:
        dkv = [(grads.pop(f"h.{i}.prefix_k"), grads.pop(f"h.{i}.prefix_v")) for i in range(config.n_layer)]
        grads.update(PX.prefix_backward(dkv, caches.prefix, wanted))
    return {k: g for k, g in grads.items() if k in wanted}


def loss_and_grads(params, config, ids, targets, rng=None, lora_scale=1.0, wanted=None, ignore_index=-100):
    """Mean cross-entropy of `targets` given `ids` (both int (B, T)) and its gradients.

    Returns (loss as a 0-d array, grads keyed like params, restricted to `wanted`). The LM head
    and the loss run fused, in chunks of rows (layers.lm_head_cross_entropy), so the (B, T, V)
    logits never exist at once.
    """
    wanted = set(param_names(config)) if wanted is None else wanted
    hidden, caches = forward(params, config, ids, rng=rng, lora_scale=lora_scale, head=False)
    B, T, C = hidden.shape
    loss, dhidden, dwte = L.lm_head_cross_entropy(hidden.reshape(B * T, C), params["wte.weight"],
                                                   targets.reshape(-1), ignore_index, need_dW="wte.weight" in wanted)
    return loss, backward_hidden(dhidden.reshape(B, T, C), caches, config, wanted, dwte)


def loss(params, config, ids, targets, lora_scale=1.0, ignore_index=-100):
    """Mean cross-entropy of `targets` given `ids` (both int (B, T)), without gradients.

    For evaluation: no caches are kept, and only the rows that have a target (not
    `ignore_index`) go through the LM head, fused with the loss as in training.
    """
    hidden, _ = forward(params, config, ids, lora_scale=lora_scale, head=False, keep_caches=False)
    t = targets.reshape(-1)
    scored = t != ignore_index
    value, _, _ = L.lm_head_cross_entropy(hidden.reshape(-1, config.n_embd)[scored], params["wte.weight"],
                                          t[scored], need_dx=False, need_dW=False)
    return value


def param_names(config):
    """Every base parameter name, in the order Hugging Face lists them (no `.bias` with config.bias False)."""
    parts = (".weight", ".bias") if config.bias else (".weight",)
    names = ["wte.weight", "wpe.weight"]
    for i in range(config.n_layer):
        p = f"h.{i}."
        for sub in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj"):
            names += [p + sub + part for part in parts]
    return names + ["ln_f" + part for part in parts]


def param_shapes(config):
    """name -> shape for every base parameter (config.bias False: no `.bias` entries)."""
    C, V = config.n_embd, config.vocab_size
    shapes = {"wte.weight": (V, C), "wpe.weight": (config.n_ctx, C), "ln_f.weight": (C,), "ln_f.bias": (C,)}
    sub = {
        "ln_1.weight": (C,), "ln_1.bias": (C,), "ln_2.weight": (C,), "ln_2.bias": (C,),
        "attn.c_attn.weight": (C, 3 * C), "attn.c_attn.bias": (3 * C,),
        "attn.c_proj.weight": (C, C), "attn.c_proj.bias": (C,),
        "mlp.c_fc.weight": (C, 4 * C), "mlp.c_fc.bias": (4 * C,),
        "mlp.c_proj.weight": (4 * C, C), "mlp.c_proj.bias": (C,),
    }
    for i in range(config.n_layer):
        A = config.heads(i) * config.head_dim   # attention width: C, less the pruned heads' channels
        shapes.update({f"h.{i}.{k}": s for k, s in sub.items()})
        shapes.update({f"h.{i}.attn.c_attn.weight": (C, 3 * A), f"h.{i}.attn.c_attn.bias": (3 * A,),
                       f"h.{i}.attn.c_proj.weight": (A, C)})
    return {k: s for k, s in shapes.items() if config.bias or not k.endswith(".bias")}


def init_params(config, xp, dtype, seed=0):
    """GPT-2's initialisation: N(0, 0.02) weights, zero biases, unit layer-norm gains, and the
    projections into the residual stream (attn.c_proj, mlp.c_proj) scaled by 1/sqrt(2 n_layer)
    so the stream's variance does not grow with depth."""
    rng = np.random.default_rng(seed)
    resid_std = 0.02 / (2 * config.n_layer) ** 0.5
    params = {}
    for name, shape in param_shapes(config).items():
        if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name == "ln_f.weight":
            a = np.ones(shape)
        elif name.endswith(".bias"):
            a = np.zeros(shape)
        elif name.endswith("c_proj.weight"):
            a = rng.normal(0.0, resid_std, shape)
        else:
            a = rng.normal(0.0, 0.02, shape)
        params[name] = xp.asarray(a.astype(dtype))
    return params


class GPT2:
    """A GPT-2: its config, its parameter dict, and where they live.

    model.forward(ids) -> logits; model.generate(ids, ...) -> ids; model.loss_and_grads(ids,
    targets) -> (loss, grads). Everything else is plain functions of (params, config).
    """

    def __init__(self, config, params, device="cpu", lora_scale=1.0, lora=None, quantized=(), tokenizer=None):
        self.config = config
        self.params = params
        self.device = device
        self.lora_scale = lora_scale  # alpha / rank of the LoRA adapters, if any are attached
        self.lora = lora              # {"rank", "alpha", "targets"} of those adapters
        # The names of the weights picogpt.quantize.quantize_model rounded to int8 and back
        # (a record only: they are ordinary float arrays, and the forward is the same).
        self.quantized = tuple(quantized)
        self.tokenizer = tokenizer    # its tokenizer (picogpt.tokenizers); None: GPT-2's

    @property
    def xp(self):
        return get_array_module(self.params["wte.weight"])

    @property
    def dtype(self):
        return self.params["wte.weight"].dtype

    @property
    def context(self):
        """Positions left for tokens: n_ctx, less a prefix's P (it holds the first positions)."""
        return self.config.n_ctx - PX.prefix_length(self.params)

    def num_params(self):
        return sum(int(a.size) for a in self.params.values())

    def _ids(self, ids, what="token ids", allow=None):
        """Ids as an int64 (B, T) array on the model's device, checked by `check_ids`."""
        return self.xp.asarray(self.check_ids(ids, what, allow))

    def check_ids(self, ids, what="token ids", allow=None):
        """Ids as an int64 (B, T) NumPy array, checked: each in [0, vocab) or equal to `allow`
        (the ignore index of targets); one clear sentence otherwise."""
        a = asnumpy(ids)
        if a.ndim == 1:
            a = a[None]
        if a.ndim != 2 or a.shape[1] == 0:
            raise PicoGPTError(f"{what} must have shape (B, T) with T >= 1, got {a.shape}.")
        if a.dtype.kind not in "iu":
            raise PicoGPTError(f"{what} must be integers, got {a.dtype}.")
        bad = (a < 0) | (a >= self.config.vocab_size)
        if allow is not None:
            bad &= a != allow
        if bad.any():
            raise PicoGPTError(f"{what} must be in [0, {self.config.vocab_size}), found {a[bad].flat[0]}.")
        return a.astype(np.int64)

    def _ids_and_targets(self, ids, targets, ignore_index):
        """Both checked (ranges, context, equal shapes) and on the model's device."""
        ids = self._ids(ids)
        self._check_context(ids.shape[1] + PX.prefix_length(self.params))
        targets = self._ids(targets, "targets", allow=ignore_index)
        if targets.shape != ids.shape:
            raise PicoGPTError(f"targets {targets.shape} and ids {ids.shape} must have the same shape.")
        return ids, targets

    def _check_context(self, used):
        if used > self.config.n_ctx:
            raise PicoGPTError(f"{used} positions exceed the model's context of {self.config.n_ctx} tokens.")

    def forward(self, ids, kv=None, head=True):
        """ids int (B, T) -> logits (B, T, V) on the model's device (T + cached <= n_ctx).

        head=False returns the final hidden states (B, T, C) (after ln_f) instead, for callers
        that need the LM head on a few rows only (picogpt.score)."""
        ids = self._ids(ids)
        self._check_context(ids.shape[1] + (kv.length if kv is not None else PX.prefix_length(self.params)))
        return forward(self.params, self.config, ids, kv=kv, lora_scale=self.lora_scale, head=head, keep_caches=False)[0]

    __call__ = forward

    def new_cache(self, batch, max_len=None, pad=None):
        """A KVCache for `batch` rows and up to `max_len` (default n_ctx) positions, empty; or,
        with a prefix, holding it in P more positions (within n_ctx), where generation starts."""
        max_len, P = max_len or self.config.n_ctx, PX.prefix_length(self.params)
        if P:
            max_len = min(max_len + P, self.config.n_ctx)
        return PX.fill_cache(KVCache(self.config, batch, max_len, self.xp, self.dtype, pad), self.params, self.config)

    def next_logits(self, ids, kv):
        """The generation step: ids int (B, T) already on the device (unchecked) -> logits (B, V)
        of the last position, appending to `kv`. No caches are kept for a backward."""
        return forward(self.params, self.config, ids, kv=kv, lora_scale=self.lora_scale,
                       last_only=True, keep_caches=False)[0]

    def generate(self, ids, max_new_tokens=32, temperature=0.0, top_k=None, top_p=None, seed=None, **kw):
        """Continue each prompt; see picogpt.generation.generate for every option."""
        return generate(self, ids, max_new_tokens, temperature, top_k, top_p, seed, **kw)

    def score(self, contexts, continuations, tok=None, batch_size=16, progress=None):
        """Summed log-probability and token count of each continuation after its context, batched
        with padding -> Scores(logprob, tokens, greedy); see picogpt.score.score."""
        return score(self, contexts, continuations, tok, batch_size, progress)

    def loss_and_grads(self, ids, targets, wanted=None, rng=None, ignore_index=-100):
        """Mean cross-entropy over the target positions (those equal to `ignore_index` excluded)
        and its gradient for every parameter.

        ids, targets int (B, T). Returns (loss as a float, grads keyed like self.params).
        `wanted` limits the gradients computed; `rng` (a Generator) turns dropout on.
        """
        ids, targets = self._ids_and_targets(ids, targets, ignore_index)
        loss, grads = loss_and_grads(self.params, self.config, ids, targets, rng=rng, lora_scale=self.lora_scale,
                                     wanted=wanted, ignore_index=ignore_index)
        return float(loss), grads

    def loss(self, ids, targets, ignore_index=-100):
        """Mean cross-entropy of `targets` given `ids` (int (B, T)), as a float; no gradients."""
        ids, targets = self._ids_and_targets(ids, targets, ignore_index)
        return float(loss(self.params, self.config, ids, targets, self.lora_scale, ignore_index))

    def to(self, device=None, dtype=None):
        """A copy of the model on another device and/or in another dtype."""
        device = resolve_device(device or self.device)
        dtype = resolve_dtype(dtype or self.dtype, device)
        params = {k: to_device(a, device, dtype) for k, a in self.params.items()}
        return GPT2(self.config, params, device=device, lora_scale=self.lora_scale, lora=self.lora,
                    quantized=self.quantized, tokenizer=self.tokenizer)

    def __repr__(self):
        c = self.config
        return (f"GPT2(n_layer={c.n_layer}, n_head={c.n_head}, n_embd={c.n_embd}, n_ctx={c.n_ctx}, "
                f"vocab_size={c.vocab_size}, params={self.num_params() / 1e6:.1f}M, device={self.device!r}, dtype={self.dtype})")
