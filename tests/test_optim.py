"""The optimizer: AdamW, the learning-rate schedule and gradient clipping, against torch.

The torch numbers come from tests/fixtures/make_fixtures.py (committed): ten torch.optim.AdamW
steps on the tiny model, at the learning rates of torch's own LinearLR + CosineAnnealingLR
schedulers. These tests need neither torch nor a network.
"""

import json
import math

import numpy as np
import pytest
from helpers import TINY

import picogpt
from picogpt import layers
from picogpt.optim import AdamW, clip_grad_norm, decays, global_norm, lr_at


def adam_config(reference):
    return json.loads(str(reference["adam_config"]))


# --- against torch (fixtures) ------------------------------------------------------------

def test_lr_schedule_equals_torchs_schedulers(reference):
    """lr_at at each step is the rate torch's LinearLR then CosineAnnealingLR gave AdamW."""
    cfg = adam_config(reference)
    ours = [lr_at(s, cfg["lr"], cfg["min_lr"], cfg["warmup_steps"], cfg["total_steps"]) for s in range(cfg["total_steps"])]
    np.testing.assert_allclose(ours, reference["adam_lrs"], rtol=1e-12, atol=0)


@pytest.mark.parametrize("device, dtype", [("cpu", "float32"), ("cpu", "float64"),
                                           pytest.param("gpu", "float32", marks=pytest.mark.gpu)])
def test_ten_adamw_steps_follow_torch(reference, device, dtype):
    """Warmup + cosine, decoupled weight decay on matrices only, global-norm clipping: the loss
    sequence of torch.optim.AdamW (float64) within 1e-4."""
    cfg = adam_config(reference)
    model = picogpt.load_model(TINY, device=device, dtype=dtype)
    opt = AdamW(model.params, weight_decay=cfg["weight_decay"], betas=(cfg["beta1"], cfg["beta2"]), eps=cfg["eps"])
    losses, norms = [], []
    for step in range(cfg["total_steps"]):
        loss, grads = model.loss_and_grads(reference["adam_x"][step], reference["adam_y"][step])
        norms.append(clip_grad_norm(grads, cfg["grad_clip"]))
        opt.step(model.params, grads, lr_at(step, cfg["lr"], cfg["min_lr"], cfg["warmup_steps"], cfg["total_steps"]))
        losses.append(loss)
    assert max(norms) > cfg["grad_clip"]          # clipping really happened
    np.testing.assert_allclose(losses, reference["adam_losses"], rtol=0, atol=1e-4)


# --- optimizer pieces --------------------------------------------------------------------

def test_decays_matrices_not_biases_or_layernorm_gains():
    model = picogpt.load_model(TINY)
    decayed = {k for k, a in model.params.items() if decays(a)}
    for k in model.params:
        matrix = k in ("wte.weight", "wpe.weight") or k.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight"))
        assert (k in decayed) == matrix, k
    assert not any(k.endswith(".bias") for k in decayed)
    assert not any(".ln_" in k or k.startswith("ln_f") for k in decayed)
    assert AdamW(model.params).decay == decayed


def test_weight_decay_is_decoupled_and_skips_biases_and_gains():
    """With a zero gradient Adam's update is 0, so only the decay acts: p * (1 - lr * wd)."""
    model = picogpt.load_model(TINY)
    before = {k: a.copy() for k, a in model.params.items()}
    opt = AdamW(model.params, weight_decay=0.1)
    opt.step(model.params, {k: np.zeros_like(a) for k, a in model.params.items()}, lr=0.5)
    for k, a in model.params.items():
        if a.ndim >= 2:
            np.testing.assert_allclose(a, before[k] * (1 - 0.5 * 0.1), rtol=1e-6)
        else:
            np.testing.assert_array_equal(a, before[k])


def test_adamw_first_step_is_lr_times_sign():
    """Bias correction: after one step m_hat = g, v_hat = g^2, so the update is lr * g / (|g| + eps)."""
    p = {"w": np.array([1.0, -2.0, 3.0]), "b": np.array([0.5])}
    g = {"w": np.array([0.3, -0.001, 5.0]), "b": np.array([-2.0])}
    AdamW(p, weight_decay=0.0, eps=0.0).step(p, g, lr=0.1)
    np.testing.assert_allclose(p["w"], [0.9, -1.9, 2.9])
    np.testing.assert_allclose(p["b"], [0.6])


def test_lr_schedule_warms_up_linearly_then_cosine_to_min_lr():
    """The schedule's shape over a longer run than the fixture's, and its edges."""
    lr, min_lr, warm, total = 1e-3, 1e-4, 10, 110
    got = [lr_at(s, lr, min_lr, warm, total) for s in range(total + 5)]
    np.testing.assert_allclose(got[:warm], lr * np.arange(1, warm + 1) / warm)       # linear, reaching lr
    assert got[warm] == pytest.approx(lr)                                            # cosine starts at the peak
    assert got[warm + (total - warm) // 2] == pytest.approx((lr + min_lr) / 2)      # halfway down
    assert got[total] == pytest.approx(min_lr)                                       # ends at min_lr
    assert all(x == pytest.approx(min_lr) for x in got[total:])                      # and stays there
    assert all(a >= b for a, b in zip(got[warm:], got[warm + 1:]))                  # never rises after warmup
    assert lr_at(0, lr, min_lr, 0, total) == pytest.approx(lr)                       # no warmup: starts at lr


def test_clip_grad_norm_returns_the_norm_before_and_scales_to_max_norm():
    g = {"a": np.array([3.0, 0.0]), "b": np.array([[0.0, 4.0]])}      # global norm 5
    assert clip_grad_norm(g, 1.0) == pytest.approx(5.0)
    assert global_norm(g) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(g["a"] / g["b"][0, 1], [0.75, 0.0])   # direction kept
    g = {"a": np.array([3.0, 0.0]), "b": np.array([[0.0, 4.0]])}
    assert clip_grad_norm(g, 10.0) == pytest.approx(5.0)
    np.testing.assert_array_equal(g["a"], [3.0, 0.0])               # under the limit: untouched


def test_adamw_by_slices_equals_adamw_on_whole_arrays(monkeypatch):
    rng = np.random.default_rng(0)
    p = {"w": rng.standard_normal((9, 7)).astype(np.float32), "b": rng.standard_normal(5).astype(np.float32)}
    g = {k: rng.standard_normal(a.shape).astype(np.float32) for k, a in p.items()}
    whole, sliced = {k: a.copy() for k, a in p.items()}, {k: a.copy() for k, a in p.items()}
    opt = AdamW(whole, weight_decay=0.1)
    for _ in range(3):
        opt.step(whole, g, 1e-2)
    monkeypatch.setattr(layers, "CACHE_SLICE", 4)   # 63 numbers: 16 slices
    opt = AdamW(sliced, weight_decay=0.1)
    for _ in range(3):
        opt.step(sliced, g, 1e-2)
    for k in p:
        np.testing.assert_array_equal(sliced[k], whole[k])


def test_global_norm_by_slices_is_the_float64_norm(monkeypatch):
    rng = np.random.default_rng(1)
    grads = {"a": rng.standard_normal((300, 70)).astype(np.float32), "b": rng.standard_normal(33).astype(np.float32)}
    exact = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads.values()))
    monkeypatch.setattr(layers, "CACHE_SLICE", 1000)   # 22 slices of the first gradient
    assert global_norm(grads) == pytest.approx(exact, rel=1e-6)
