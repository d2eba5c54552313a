"""Output heads beside the tied LM head: sequence classification in transformers' layout.

transformers' GPT2ForSequenceClassification puts one linear map without bias on GPT-2's final
hidden states (after ln_f) and reads the logits at each row's last real token:

    score.weight (K, C)           K = num_labels; torch's nn.Linear layout (out, in), so
    logits[b] = h[b, last[b]] @ score.weight^T                       (B, K)

In picogpt the head is one more entry, "score.weight", in the flat parameter dict; the
transformer's parameters keep their names (transformers prefixes them "transformer.").

Which token is "last": transformers finds it from config.pad_token_id as the rightmost token
that is not padding. picogpt pads rows on the RIGHT, so the last real token of row b is at
lengths[b] - 1 and no attention mask is needed (causal attention never lets a real token see
the padding after it). `last_positions` applies transformers' own rule to padded ids.

Forward/backward pairs, as in layers.py:
    pool_last_forward / pool_last_backward        (B, T, C) -> (B, C)
    classifier_forward / classifier_backward      (B, C) -> (B, K)
and the loss is layers.cross_entropy over the K labels (mean over the batch's rows).
"""

import numpy as np

from . import layers as L
from . import model as M
from .backend import get_array_module
from .errors import PicoGPTError

SCORE = "score.weight"


# --- pooling: the hidden state of each row's last real token -------------------------------

def pool_last_forward(hidden, last):
    """hidden (B, T, C), last int (B,) -> pooled (B, C) with pooled[b] = hidden[b, last[b]]."""
    xp = get_array_module(hidden)
    return hidden[xp.arange(hidden.shape[0]), last], (last, hidden.shape)


def pool_last_backward(dpooled, cache):
    """dpooled (B, C) -> dhidden (B, T, C).

    pooled[b] = hidden[b, last[b]] picks one entry per row, so its gradient goes back to that
    entry and every other position gets 0:  dhidden[b, t] = dpooled[b] if t == last[b] else 0.
    Each row picks exactly one position, so a plain assignment is a correct scatter (no
    repeated index can be lost, unlike the embedding's backward).
    """
    last, shape = cache
    xp = get_array_module(dpooled)
    dhidden = xp.zeros(shape, dtype=dpooled.dtype)
    dhidden[xp.arange(shape[0]), last] = dpooled
    return dhidden


# --- the linear head (no bias) ------------------------------------------------------------

def classifier_forward(pooled, W):
    """pooled (B, C), W (K, C) -> logits (B, K) = pooled @ W^T.

    W is stored (out, in) as torch's nn.Linear stores it (transformers' score.weight), unlike
    GPT-2's Conv1D (in, out): that is the layout a saved folder must have.
    """
    return pooled @ W.T, (pooled, W)


def classifier_backward(dlogits, cache):
    """dlogits (B, K) -> dpooled (B, C), dW (K, C).

    logits = x W^T, i.e. logits[b, k] = sum_c x[b, c] W[k, c], so
        dx = dlogits W           dW = dlogits^T x
    """
    pooled, W = cache
    return dlogits @ W, dlogits.T @ pooled


# --- positions, initialisation, labels -----------------------------------------------------

def last_positions(ids, pad_token_id=None, lengths=None):
    """Each row's last real position, int (B,).

    lengths (B,): right-padded rows, last = lengths - 1. Else pad_token_id: transformers' rule,
    the rightmost token that is not pad_token_id (position 0 if a row is all padding). Else
    T - 1 for every row (no padding).
    """
    xp = get_array_module(ids)
    B, T = ids.shape
    if lengths is not None:
        lengths = xp.asarray(lengths)
        if int(lengths.min()) < 1 or int(lengths.max()) > T:
            raise PicoGPTError(f"row lengths must be in [1, {T}].")
        return lengths.astype(xp.int64) - 1
    if pad_token_id is None:
        return xp.full((B,), T - 1, dtype=xp.int64)
    real = (ids != pad_token_id).astype(xp.int64)
    return (xp.arange(T)[None, :] * real).argmax(axis=-1)


def init_classifier(config, num_labels, seed=0, xp=np, dtype=np.float32):
    """A new head: score.weight (num_labels, C) drawn from N(0, 0.02), as transformers
    initialises an nn.Linear (initializer_range = 0.02); there is no bias to initialise."""
    if int(num_labels) < 2:
        raise PicoGPTError(f"a classifier needs at least 2 labels, got {num_labels}.")
    rng = np.random.default_rng(seed)
    return xp.asarray(rng.normal(0.0, 0.02, (int(num_labels), config.n_embd)).astype(dtype))


def label_fields(labels, pad_token_id=50256):
    """The config.json fields of a classifier with these label names (in id order):
    id2label {"0": name, ...} (JSON keys are strings), label2id {name: 0, ...}, pad_token_id
    and the architecture name, as transformers writes them."""
    labels = [str(x) for x in labels]
    if len(set(labels)) != len(labels):
        raise PicoGPTError(f"label names must be distinct, got {labels}.")
    return {"architectures": ["GPT2ForSequenceClassification"],
            "id2label": {str(i): name for i, name in enumerate(labels)},
            "label2id": {name: i for i, name in enumerate(labels)},
            "pad_token_id": pad_token_id}


def labels_from_config(d):
    """The label names (a list, in id order) of a config.json dict, or None if it has none.

    transformers always writes id2label (LABEL_0, LABEL_1 by default); keys may be "0" or 0.
    """
    id2label = d.get("id2label")
    if not id2label:
        return None
    try:
        pairs = sorted((int(k), str(v)) for k, v in id2label.items())
    except (TypeError, ValueError, AttributeError):
        raise PicoGPTError("config.json: id2label must map label ids (0, 1, ...) to names.") from None
    if [k for k, _ in pairs] != list(range(len(pairs))):
        raise PicoGPTError("config.json: id2label's ids must be 0, 1, ..., num_labels - 1.")
    names = [v for _, v in pairs]
    label2id = d.get("label2id")
    if label2id and {str(k): int(v) for k, v in label2id.items()} != {n: i for i, n in enumerate(names)}:
        raise PicoGPTError("config.json: label2id does not agree with id2label.")
    return names


# --- the model with the head ----------------------------------------------------------------

def _hidden(params, config, ids, rng=None, lora_scale=1.0, keep_caches=True):
    """GPT-2's final hidden states (B, T, C), after ln_f, and the caches for backward_hidden.
    The one place this module calls the model's forward."""
    return M.forward(params, config, ids, rng=rng, lora_scale=lora_scale, head=False, keep_caches=keep_caches)


def classify(params, config, ids, lengths=None, pad_token_id=None, lora_scale=1.0):
    """Logits (B, K) of the classifier in `params` (with "score.weight") for ids int (B, T).

    Rows are right-padded with their lengths given, or padded with pad_token_id (see
    last_positions); with neither, every row is T tokens long.
    """
    hidden, _ = _hidden(params, config, ids, lora_scale=lora_scale, keep_caches=False)
    pooled, _ = pool_last_forward(hidden, last_positions(ids, pad_token_id, lengths))
    return classifier_forward(pooled, params[SCORE])[0]


def classification_loss_and_grads(params, config, ids, labels, lengths=None, pad_token_id=None, rng=None,
                                  lora_scale=1.0, wanted=None):
    """Mean cross-entropy of the labels int (B,) and its gradients.

    Returns (loss as a 0-d array, logits (B, K), grads keyed like params, restricted to
    `wanted`; default: every base parameter and score.weight). The backward is the forward
    read bottom-up: cross-entropy -> head -> pooling -> model.backward_hidden.
    """
    wanted = set(M.param_names(config)) | {SCORE} if wanted is None else set(wanted)
    xp = get_array_module(params[SCORE])
    labels = xp.asarray(labels)
    K = params[SCORE].shape[0]
    if labels.shape != (ids.shape[0],) or int(labels.min()) < 0 or int(labels.max()) >= K:
        raise PicoGPTError(f"labels must be {ids.shape[0]} label ids in [0, {K}).")
    hidden, caches = _hidden(params, config, ids, rng=rng, lora_scale=lora_scale)
    pooled, c_pool = pool_last_forward(hidden, last_positions(ids, pad_token_id, lengths))
    logits, c_head = classifier_forward(pooled, params[SCORE])
    loss, c_ce = L.cross_entropy_forward(logits, labels)

    dlogits = L.cross_entropy_backward(1.0, c_ce)
    dpooled, dW = classifier_backward(dlogits, c_head)
    grads = M.backward_hidden(pool_last_backward(dpooled, c_pool), caches, config, wanted)
    if SCORE in wanted:
        grads[SCORE] = dW
    return loss, logits, grads
