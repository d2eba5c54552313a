"""Mixed-precision training (Micikevicius et al., 2018): float16 arithmetic, float32 memory.

    master weights (float32) --cast--> float16 copy --forward, backward--> float16 gradients
        (the loss multiplied by the scale S) --/ S, float32--> AdamW on the master weights

Why each piece:
- float16 halves the bytes moved and runs on tensor cores, but has 10 bits of mantissa: an
  update lr * g is often below half a unit in the last place of the weight and would vanish.
  So the weights that AdamW updates, and its moments, stay float32 ("master weights").
- float16's smallest normal number is 6e-5: many gradients are smaller and would flush to
  zero. Multiplying the loss by S (so every gradient by S) moves them into range; dividing by S
  in float32 afterwards undoes it.
- Too large an S overflows (65504 is float16's largest number) into inf or NaN. Dynamic loss
  scaling: on an inf/NaN gradient the step is skipped (the weights and AdamW untouched) and S is
  halved; after `window` clean steps in a row S is doubled, to stay just below overflow.

The LM head and the loss are computed in float32 from the float16 hidden states (as
layers.lm_head_cross_entropy does for float16 models); the scale is applied to the gradient
that enters the float16 backward. On the CPU NumPy's float16 matmuls are slow: this runs
there for learning and testing; the GPU is where it pays.
"""

import numpy as np

from . import layers as L
from . import model as M

HALF = np.float16


class LossScaler:
    """The dynamic loss scale: `scale`, halved on overflow, doubled after `window` clean steps."""

    def __init__(self, scale=2.0 ** 16, window=1000, factor=2.0):
        self.scale, self.window, self.factor = float(scale), int(window), float(factor)
        self.clean = 0   # clean steps since the last change

    def update(self, finite):
        """Record one step: finite gradients (True) or an overflow (False).
        Returns 'overflow', 'grow' or None, what happened to the scale."""
        if not finite:
            self.scale /= self.factor
            self.clean = 0
            return "overflow"
        self.clean += 1
        if self.clean >= self.window:
            self.scale *= self.factor
            self.clean = 0
            return "grow"
        return None

    def state(self):
        return {"scale": self.scale, "clean": self.clean, "window": self.window}

    def load_state(self, state):
        self.scale, self.clean = float(state["scale"]), int(state["clean"])


def half_params(params):
    """The float16 working copy of the float32 master weights (a new dict)."""
    return {k: p.astype(HALF) for k, p in params.items()}


def all_finite(grads):
    """True when no gradient holds an inf or NaN: one sum per tensor, one number to the host
    (an inf or NaN anywhere makes its tensor's sum, then the total, non-finite)."""
    total = sum(g.sum(dtype=np.float32) for g in grads.values())
    return bool(np.isfinite(float(total)))


def loss_and_grads(params, config, ids, targets, scale, rng=None, lora_scale=1.0, wanted=None, ignore_index=-100):
    """Mean cross-entropy and float32 gradients computed in float16 with loss scale `scale`.

    params: the float32 master weights. Returns (loss as a float, grads float32 keyed like params
    and unscaled, or None when a gradient overflowed: then the step must be skipped).
    """
    wanted = set(M.param_names(config)) if wanted is None else wanted
    half = half_params(params)
    hidden, caches = M.forward(half, config, ids, rng=rng, lora_scale=lora_scale, head=False)
    B, T, C = hidden.shape
    # the head and the loss in float32 (the master wte), from the float16 hidden states
    loss, dh, dwte = L.lm_head_cross_entropy(hidden.reshape(B * T, C).astype(np.float32), params["wte.weight"],
                                             targets.reshape(-1), ignore_index, need_dW="wte.weight" in wanted)
    with np.errstate(over="ignore", invalid="ignore"):
        dh16 = (dh * scale).astype(HALF).reshape(B, T, C)       # d(S * loss)/dh: may overflow, as it should be seen to
        grads = M.backward_hidden(dh16, caches, config, wanted)
        if not all_finite(grads):
            return float(loss), None
        out = {k: g.astype(np.float32) / np.float32(scale) for k, g in grads.items()}
    if dwte is not None:
        out["wte.weight"] += dwte          # the head's share was computed unscaled, in float32
    return float(loss), out

