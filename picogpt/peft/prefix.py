"""Prefix-tuning (Li & Liang, 2021): P trainable keys and values in front of every layer's own.

Every attention layer i sees, before the sequence's own keys and values, P more that belong to
no token: pk_i, pv_i (H, P, D). Every query may attend to them; nothing else changes, and only
they train: 2 P C numbers per layer instead of the model's millions.

    a = softmax(q [pk; k]^T / sqrt(D) + mask) [pv; v]

The model behaves as if a KV cache already held P positions: the sequence's positions start
at P (peft passes position ids offset by num_virtual_tokens, and transformers counts cache
positions from the cache's length), and generation starts from a KV cache that holds the prefix.

Parameters, in peft's PrefixTuning layout (prefix_projection=False):

    prefix.kv (P, 2 L C)     row p = [k_0 | v_0 | k_1 | v_1 | ...] of virtual token p, each C = H D
                             numbers, heads contiguous: peft's prompt_embeddings, unchanged

or the paper's reparameterisation (training is steadier through an MLP; afterwards only its
output is kept, which is what peft saves too, so `merge_prefix` turns it into prefix.kv):

    prefix.mlp.embedding (P, C)                      E
    prefix.mlp.fc.weight (C, Hm), .fc.bias (Hm,)     table = tanh(E W1 + b1) W2 + b2
    prefix.mlp.proj.weight (Hm, 2 L C), .proj.bias (2 L C,)
"""

import numpy as np

from .. import layers as L
from ..backend import get_array_module
from ..errors import PicoGPTError
from . import remove_params

TABLE = "prefix.kv"
MLP = ("prefix.mlp.embedding", "prefix.mlp.fc.weight", "prefix.mlp.fc.bias", "prefix.mlp.proj.weight",
       "prefix.mlp.proj.bias")


def prefix_names(params):
    """The prefix-tuning parameter names present in `params`."""
    return [k for k in params if k.startswith("prefix.")]


def prefix_length(params):
    """P, the number of virtual tokens in `params` (0 without a prefix)."""
    if TABLE in params:
        return int(params[TABLE].shape[0])
    return int(params[MLP[0]].shape[0]) if MLP[0] in params else 0


# --- the ops ---------------------------------------------------------------------------------

def tanh_forward(x):
    """y = tanh(x), elementwise; the cache is y itself."""
    xp = get_array_module(x)
    y = xp.tanh(x)
    return y, y


def tanh_backward(dout, y):
    """dy/dx = 1 - tanh(x)^2 = 1 - y^2."""
    return dout * (1 - y * y)


def table_forward(params):
    """The prefix table (P, 2 L C): prefix.kv itself, or the MLP's output. -> (table, cache)."""
    if TABLE in params:
        return params[TABLE], None
    E, W1, b1, W2, b2 = (params[k] for k in MLP)
    z, fc = L.linear_forward(E, W1, b1)
    t, act = tanh_forward(z)
    table, proj = L.linear_forward(t, W2, b2)
    return table, (fc, act, proj)


def table_backward(dtable, cache):
    """dtable (P, 2 L C) -> {name: grad} of the prefix parameters (the MLP read backwards)."""
    if cache is None:
        return {TABLE: dtable}
    fc, act, proj = cache
    dt, dW2, db2 = L.linear_backward(dtable, proj)
    dz = tanh_backward(dt, act)
    dE, dW1, db1 = L.linear_backward(dz, fc)
    return dict(zip(MLP, (dE, dW1, db1, dW2, db2)))


def split_layers(table, n_layer, n_head):
    """table (P, 2 L C) -> [(pk, pv)] per layer, each (H, P, D) (peft's view and permute)."""
    P = table.shape[0]
    t = table.reshape(P, 2 * n_layer, n_head, -1).transpose(1, 2, 0, 3)   # (2L, H, P, D)
    return [(t[2 * i], t[2 * i + 1]) for i in range(n_layer)]


def merge_layers(dkv):
    """The inverse of split_layers for gradients: [(dpk, dpv)] per layer -> dtable (P, 2 L C)."""
    xp = get_array_module(dkv[0][0])
    t = xp.stack([d for pair in dkv for d in pair])                       # (2L, H, P, D)
    P = t.shape[2]
    return t.transpose(2, 0, 1, 3).reshape(P, -1)


def prefix_attention_forward(q, k, v, pk, pv, mask=None, dropout=0.0, rng=None):
    """Attention over the prefix and the sequence.

    q (B, H, T, D), k, v (B, H, Tk, D), pk, pv (H, P, D) shared by every row; mask bool
    broadcastable to (B, H, T, P + Tk), True = may attend (the prefix columns are always True
    in the model) -> out (B, H, T, D), cache.
        out = softmax(q [pk; k]^T / sqrt(D) + mask) [pv; v]
    """
    xp = get_array_module(q)
    B = q.shape[0]
    kk = xp.concatenate([xp.broadcast_to(pk, (B,) + pk.shape), k], axis=2)
    vv = xp.concatenate([xp.broadcast_to(pv, (B,) + pv.shape), v], axis=2)
    out, cache = L.attention_forward(q, kk, vv, mask, dropout, rng)
    return out, (cache, pk.shape[1])


def prefix_attention_backward(dout, cache):
    """dout (B, H, T, D) -> dq, dk, dv (shapes of q, k, v), dpk, dpv (H, P, D).

    The attention backward gives the gradient of every key and value, the prefix's first. The
    prefix was the same for every row (a broadcast), so its gradient is the sum over rows:
        dpk = sum_b dK[b, :, :P],   dk = dK[:, :, P:]   (and the same for values)
    """
    att, P = cache
    dq, dK, dV = L.attention_backward(dout, att)
    return dq, dK[:, :, P:], dV[:, :, P:], dK[:, :, :P].sum(axis=0), dV[:, :, :P].sum(axis=0)


# --- attaching, generating, merging ----------------------------------------------------------

def prefix_forward(params, config):
    """[(pk, pv)] per layer (each (H, P, D)) and the table's cache; (None, None) without a prefix."""
    if not prefix_length(params):
        return None, None
    table, cache = table_forward(params)
    return split_layers(table, config.n_layer, config.n_head), cache


def prefix_backward(dkv, cache, wanted):
    """[(dpk, dpv)] per layer and prefix_forward's cache -> {name: grad} for the names in `wanted`."""
    return {k: g for k, g in table_backward(merge_layers(dkv), cache).items() if k in wanted}


def fill_cache(kv, params, config):
    """Write the prefix into the empty KV cache `kv` of any batch: generation starts from it."""
    layers, _ = prefix_forward(params, config)
    if layers is None:
        return kv
    xp = get_array_module(layers[0][0])
    B = kv.k[0].shape[0]
    for i, (pk, pv) in enumerate(layers):
        kv.append(i, xp.broadcast_to(pk, (B,) + pk.shape), xp.broadcast_to(pv, (B,) + pv.shape))
    kv.advance(layers[0][0].shape[1])
    kv.prefix = layers[0][0].shape[1]
    return kv


def add_prefix(model, n_tokens, hidden=0, seed=0, init_ids=None):
    """Attach `n_tokens` trainable virtual tokens to every layer of `model`, in place.

    hidden > 0: train them through the paper's MLP of that width (prefix.mlp.*), else directly
    (prefix.kv). The table starts as the model's own keys and values of real tokens (Li & Liang
    found real words a better start than random numbers): `init_ids`, or n_tokens ids drawn
    with `seed`. Returns the new parameter names.
    """
    c = model.config
    if int(n_tokens) != n_tokens or n_tokens < 1:
        raise PicoGPTError(f"the number of prefix tokens must be a whole number >= 1, got {n_tokens}.")
    if n_tokens >= c.n_ctx:
        raise PicoGPTError(f"{n_tokens} prefix tokens leave no room in the model's context of {c.n_ctx} positions.")
    if int(hidden) != hidden or hidden < 0:
        raise PicoGPTError(f"the prefix MLP's width must be a whole number >= 0 (0 = no MLP), got {hidden}.")
    if prefix_names(model.params):
        raise PicoGPTError("this model already has a prefix.")
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, c.vocab_size, (1, n_tokens)) if init_ids is None else np.asarray(init_ids).reshape(1, -1)
    if ids.shape[1] != n_tokens:
        raise PicoGPTError(f"init_ids holds {ids.shape[1]} tokens for a prefix of {n_tokens}.")
    kv = model.new_cache(1, n_tokens)
    model.next_logits(model.xp.asarray(ids), kv)
    real = merge_layers([(kv.k[i][0], kv.v[i][0]) for i in range(c.n_layer)])   # (P, 2 L C)
    xp, dtype = model.xp, model.dtype
    if not hidden:
        model.params[TABLE] = real.astype(dtype)
        return [TABLE]
    C, out = c.n_embd, real.shape[1]
    model.params.update({
        "prefix.mlp.embedding": xp.asarray(rng.normal(0.0, 1.0, (n_tokens, C)).astype(dtype)),
        "prefix.mlp.fc.weight": xp.asarray(rng.normal(0.0, C ** -0.5, (C, hidden)).astype(dtype)),
        "prefix.mlp.fc.bias": xp.zeros(hidden, dtype),
        # small output weights and the real tokens' keys and values as the bias: the table
        # starts near the same real activations as without the MLP
        "prefix.mlp.proj.weight": xp.asarray(rng.normal(0.0, 0.02 * hidden ** -0.5, (hidden, out)).astype(dtype)),
        "prefix.mlp.proj.bias": real.mean(axis=0).astype(dtype),
    })
    return list(MLP)


def merge_prefix(model):
    """Replace the MLP (prefix.mlp.*) by the table it computes (prefix.kv), in place; as peft
    does when it saves, and as the paper does after training."""
    if MLP[0] in model.params:
        table, _ = table_forward(model.params)
        for k in MLP:
            del model.params[k]
        model.params[TABLE] = table
    return model


def remove_prefix(model):
    """Drop the prefix from `model`, in place; returns the names removed."""
    return remove_params(model, prefix_names(model.params), "prefix")
