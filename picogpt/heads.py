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
from .backend import asnumpy, get_array_module
# The config.json fields of a classifier live with the config; here under these names too.
from .config import label_fields, labels_from_hf_dict as labels_from_config  # noqa: F401
from .errors import PicoGPTError
from .tokenizer import get_tokenizer

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


# --- a GPT-2 that classifies ------------------------------------------------------------------

class GPT2Classifier(M.GPT2):
    """A GPT2 whose params also hold "score.weight" and whose config names the labels
    (config.labels): what `picogpt.load_model` returns for a GPT2ForSequenceClassification
    folder, and what `make_classifier` makes from a language model.

        logits = model.classify(["Now is the winter...", "O Romeo..."])     # (2, K) NumPy
        names = model.predict(rows)                                          # label names

    Everything a GPT2 does still works on the transformer below the head (model.forward
    gives the tied LM head's logits, which a classifier was never trained for).
    """

    @property
    def labels(self):
        return list(self.config.labels)

    def encode_rows(self, rows, tokenizer=None):
        """Rows (strings, lists of ids, or an int (B, T) array) -> a list of checked id arrays,
        each cut to its LAST n_ctx tokens (as training's batches cut an example)."""
        if isinstance(rows, str):
            raise PicoGPTError("classify takes a list of rows: give [text] for one text.")
        rows = list(rows)
        if not rows:
            raise PicoGPTError("there are no rows to classify.")
        if any(isinstance(r, str) for r in rows):
            tok = tokenizer or get_tokenizer()
            rows = [tok.encode_ordinary(r) if isinstance(r, str) else r for r in rows]
        out = []
        for r in rows:
            if len(r) == 0:
                raise PicoGPTError("a row to classify is empty: give at least one token.")
            out.append(self.check_ids(np.asarray(r)[None], "row ids")[0][-self.config.n_ctx:])
        return out

    def classify(self, rows, tokenizer=None, batch_size=32):
        """Logits (B, K) as a float NumPy array for rows of any lengths (see encode_rows).

        Rows are right-padded into batches of `batch_size` and read at their last real token."""
        rows = self.encode_rows(rows, tokenizer)
        pad = self.config.pad_token_id or 0   # any id: the lengths say where each row ends
        out = []
        for i in range(0, len(rows), batch_size):
            lengths = np.array([len(r) for r in rows[i:i + batch_size]])
            ids = np.full((len(lengths), int(lengths.max())), pad, dtype=np.int64)
            for b, r in enumerate(rows[i:i + batch_size]):
                ids[b, :len(r)] = r
            logits = classify(self.params, self.config, self.xp.asarray(ids), lengths=self.xp.asarray(lengths),
                              lora_scale=self.lora_scale)
            out.append(asnumpy(logits))
        return np.concatenate(out)

    def predict(self, rows, tokenizer=None, batch_size=32):
        """The label name of each row (the largest logit)."""
        return [self.config.labels[k] for k in self.classify(rows, tokenizer, batch_size).argmax(axis=-1)]

    def __repr__(self):
        return f"GPT2Classifier(labels={list(self.config.labels)}, {super().__repr__()[5:]}"

    def to(self, device=None, dtype=None):
        m = super().to(device, dtype)
        return GPT2Classifier(m.config, m.params, device=m.device, lora_scale=m.lora_scale, lora=m.lora,
                              quantized=m.quantized, tokenizer=m.tokenizer)


def check_language_model(model, name):
    """Refuse a classifier where text is to be generated (generate, chat), in one sentence."""
    if model.config.labels:
        raise PicoGPTError(f"{name} is a sequence classifier (labels: {', '.join(model.config.labels)}), not a "
                           f"language model, so it cannot write text: score texts with `python -m picogpt.eval "
                           f"--task classify --model {name} --data FILE.jsonl`.")


def default_pad_token_id(config):
    """GPT-2's <|endoftext|> (50256) as the padding token, as is usual for GPT-2 classifiers; a
    model with a smaller vocabulary pads with its last id."""
    return 50256 if config.vocab_size > 50256 else config.vocab_size - 1


def make_classifier(model, labels, seed=0, pad_token_id=None):
    """A GPT2Classifier from a language model: the same transformer (its arrays copied, so the
    language model is left as it was) and a new head score.weight (len(labels), C) drawn from
    N(0, 0.02) as transformers initialises it (init_classifier). labels: the class names, in id
    order. pad_token_id: default <|endoftext|> (see default_pad_token_id)."""
    labels = [str(x) for x in labels]
    pad = default_pad_token_id(model.config) if pad_token_id is None else int(pad_token_id)
    config = model.config.replace(labels=tuple(labels), pad_token_id=pad)
    params = {k: a.copy() for k, a in model.params.items() if k != SCORE}
    params[SCORE] = init_classifier(config, len(labels), seed=seed, xp=model.xp, dtype=model.dtype)
    return GPT2Classifier(config, params, device=model.device, lora_scale=model.lora_scale, lora=model.lora,
                          quantized=model.quantized)
