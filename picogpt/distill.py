"""Knowledge distillation (Hinton, Vinyals & Dean, 2015): a student learns from a teacher's
softened distribution as well as from the text.

With temperature T, p_t = softmax(teacher logits / T) and p_s = softmax(student logits / T),
the loss per token is

    loss = A * T^2 * KL(p_t || p_s) + (1 - A) * CE(student logits, target)

averaged over the target tokens. A higher T spreads the teacher's probability over more tokens
(the "dark knowledge": which wrong answers are nearly right); the T^2 keeps the KL's gradient,
which shrinks like 1/T^2, on the same scale as the cross-entropy's whatever T is.

The student's head is fused with both losses in chunks of rows, as in training without a
teacher (layers.lm_head_cross_entropy): a chunk's student and teacher logits exist at once,
never the whole (B*T, V). The teacher runs forward only, without caches.

    python -m picogpt.train --data data/shakespeare --teacher shakespeare --distill-temperature 2 \
        --distill-alpha 0.5 --init scratch --n-layer 2 --n-embd 128 --n-head 4
"""

import numpy as np

from . import layers as L
from . import model as M
from .backend import get_array_module
from .dtypes import float32_if_half
from .errors import PicoGPTError
from .tokenizers import describe, get_tokenizer
from .tokenizers import same as same_tokenizer
from .weights import load_model


def _log_softmax(z):
    """log softmax over the last axis, with the row max subtracted so exp cannot overflow."""
    xp = get_array_module(z)
    z = z - z.max(axis=-1, keepdims=True)
    return z - xp.log(xp.exp(z).sum(axis=-1, keepdims=True))


def kl_forward(student, teacher, T, weights):
    """The distillation KL of a set of rows.

    student, teacher (N, V) logits, T > 0, weights (N,) each row's weight (1/count for a mean)
    -> loss (0-d) = sum_n weights[n] * KL(p_t[n] || p_s[n]),
       KL(p_t || p_s) = sum_v p_t[v] (log p_t[v] - log p_s[v]),  p = softmax(logits / T).
    """
    xp = get_array_module(student)
    log_ps = _log_softmax(float32_if_half(student) / T)
    log_pt = _log_softmax(float32_if_half(teacher) / T)
    pt = xp.exp(log_pt)
    rows = (pt * (log_pt - log_ps)).sum(axis=-1)                    # (N,) each row's KL
    return (weights * rows).sum(), (xp.exp(log_ps), pt, weights, T, student.dtype)


def kl_backward(dloss, cache):
    """dloss (scalar) -> dstudent (N, V).

    Only log p_s depends on the student: log p_s[v] = s[v]/T - logsumexp(s/T), so
        d/ds[j] of -sum_v p_t[v] log p_s[v] = -p_t[j]/T + (sum_v p_t[v]) p_s[j]/T = (p_s[j] - p_t[j]) / T
    and each row is scaled by its weight. (The teacher gets no gradient: it is not trained.)
    """
    ps, pt, weights, T, dtype = cache
    return ((ps - pt) * (weights[:, None] * (dloss / T))).astype(dtype, copy=False)


def head_loss(hs, W, ht, Wt, targets, T, alpha, ignore_index=-100, chunk_rows=None, need_dW=True):
    """The student's tied head fused with the distillation loss, in chunks of rows.

    hs (N, C) the student's final hidden states, W (V, C) its wte; ht (N, Ct) and Wt (V, Ct)
    the teacher's; targets int (N,). Returns (loss, kl, ce, dhs (N, C), dW (V, C) or None):
        loss = alpha T^2 kl + (1 - alpha) ce,  both means over the rows with a target.
    For each chunk: zs = hs W^T, zt = ht Wt^T, the KL and dzs = kl_backward, then through the
    head: dhs[rows] = dzs W, dW += dzs^T hs[rows]; the cross-entropy part is lm_head_cross_entropy.
    """
    xp = get_array_module(hs)
    ce, dx_ce, dW_ce = L.lm_head_cross_entropy(hs, W, targets, ignore_index, need_dW=need_dW)
    N, V = hs.shape[0], W.shape[0]
    chunk_rows = max(1, min(chunk_rows or (1 << 24) // V, N))
    valid = targets != ignore_index
    w = (valid / xp.maximum(valid.sum(), 1)).astype(np.float32)
    kl = xp.zeros((), dtype=np.float32)
    dhs = xp.empty_like(hs)
    dW = xp.zeros_like(W) if need_dW else None
    scale = alpha * T * T
    for start in range(0, N, chunk_rows):
        rows = slice(start, min(start + chunk_rows, N))
        part, cache = kl_forward(hs[rows] @ W.T, ht[rows] @ Wt.T, T, w[rows])
        kl += part
        dz = kl_backward(scale, cache)
        dhs[rows] = dz @ W
        if need_dW:
            dW += dz.T @ hs[rows]
    dhs += (1 - alpha) * dx_ce
    if need_dW:
        dW += (1 - alpha) * dW_ce
    return scale * kl + (1 - alpha) * ce, kl, ce, dhs, dW


def loss_and_grads(student, teacher, ids, targets, T, alpha, rng=None, wanted=None, ignore_index=-100):
    """The distillation loss of a batch and the student's gradients.

    student, teacher: GPT2 models (same vocabulary); ids, targets int (B, T) on the device.
    Returns (loss as a float, grads keyed like student.params, restricted to `wanted`).
    """
    config = student.config
    wanted = set(M.param_names(config)) if wanted is None else wanted
    hidden, caches = M.forward(student.params, config, ids, rng=rng, lora_scale=student.lora_scale, head=False)
    ht, _ = M.forward(teacher.params, teacher.config, ids, lora_scale=teacher.lora_scale, head=False, keep_caches=False)
    B, Tn, C = hidden.shape
    loss, _, _, dh, dwte = head_loss(hidden.reshape(B * Tn, C), student.params["wte.weight"],
                                     ht.reshape(B * Tn, -1), teacher.params["wte.weight"], targets.reshape(-1),
                                     T, alpha, ignore_index, need_dW="wte.weight" in wanted)
    return float(loss), M.backward_hidden(dh.reshape(B, Tn, C), caches, config, wanted, dwte)


def check_settings(T, alpha):
    if not T > 0:   # also refuses NaN
        raise PicoGPTError(f"--distill-temperature must be > 0 (the logits are divided by it), got {T}.")
    if not 0.0 <= alpha <= 1.0:
        raise PicoGPTError(f"--distill-alpha must be between 0 (only the text) and 1 (only the teacher), got {alpha}.")


def load_teacher(name, student, device, dtype="float32"):
    """The teacher model `name`, checked to speak the student's vocabulary."""
    teacher = load_model(name, device=device, dtype=dtype)
    if teacher.config.labels:
        raise PicoGPTError(f"--teacher {name} is a sequence classifier; distillation needs a language model.")
    if teacher.config.vocab_size != student.config.vocab_size or not same_tokenizer(get_tokenizer(teacher),
                                                                                   get_tokenizer(student)):
        raise PicoGPTError(f"--teacher {name} uses another vocabulary ({describe(get_tokenizer(teacher))}, "
                           f"{teacher.config.vocab_size:,} tokens) than the student ({describe(get_tokenizer(student))}, "
                           f"{student.config.vocab_size:,}): its distribution over tokens cannot be compared.")
    return teacher
