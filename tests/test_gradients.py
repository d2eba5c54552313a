"""Every backward in picogpt.layers, and the whole model's, against finite differences.

Hypothesis draws the shapes (batch, length, heads, widths), the value scales and the seeds of
the values; picogpt.gradcheck compares each hand-written backward with central differences in
float64 and demands a relative error <= 1e-6 (a correct backward typically lands near 1e-9,
the worst seen is ~2e-7, from rounding noise in saturated softmaxes). The last
tests check that gradcheck itself catches wrong backwards, so that a pass here means something.
"""

import doctest

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import picogpt.gradcheck
from picogpt import layers as L
from picogpt import model as M
from picogpt.backend import asnumpy, make_rng
from picogpt.config import GPT2Config
from picogpt.gradcheck import check_gradients, check_op

TOL = 1e-6
seeds = st.integers(0, 2**32 - 1)
small = st.integers(1, 4)


def normal(xp, seed, shape, scale=1.0, offset=0.0):
    """Standard-normal values (times scale, plus offset) as a float64 array of module xp."""
    return xp.asarray(np.random.default_rng(seed).standard_normal(shape) * scale + offset)


def assert_ok(result):
    assert result.ok and result.max_rel_error <= TOL, "\n" + result.report()


# --- one test per backward in layers.py ---------------------------------------------------

@given(V=st.integers(1, 6), B=small, T=st.integers(1, 6), C=small, data=st.data(), seed=seeds)
def test_embedding(xp, V, B, T, C, data, seed):
    ids = np.array(data.draw(st.lists(st.integers(0, V - 1), min_size=B * T, max_size=B * T))).reshape(B, T)
    if ids.size > 1:
        ids.flat[-1] = ids.flat[0]  # at least one repeated id: the classic `dW[ids] += g` bug
    ids = xp.asarray(ids)
    assert_ok(check_op(lambda W: L.embedding_forward(ids, W), L.embedding_backward, [normal(xp, seed, (V, C))]))


@given(shape=st.sampled_from([(1, 1), (3, 1), (2, 5), (4, 8)]) | st.tuples(small, st.integers(1, 5), st.integers(1, 8)),
       scale=st.sampled_from([0.1, 1.0, 10.0]), offset=st.floats(-5, 5), seed=seeds)
def test_layernorm(xp, shape, scale, offset, seed):
    C = shape[-1]
    x = normal(xp, seed, shape, scale, offset)
    g, b = normal(xp, seed + 1, (C,), 1.0, 1.0), normal(xp, seed + 2, (C,))
    assert_ok(check_op(L.layernorm_forward, L.layernorm_backward, [x, g, b]))


@given(lead=st.lists(small, min_size=1, max_size=3), n_in=st.integers(1, 6), n_out=st.integers(1, 6),
       bias=st.booleans(), seed=seeds)
def test_linear(xp, lead, n_in, n_out, bias, seed):
    x, W = normal(xp, seed, (*lead, n_in)), normal(xp, seed + 1, (n_in, n_out))
    inputs = [x, W, normal(xp, seed + 2, (n_out,))] if bias else [x, W]  # without: db is None
    assert_ok(check_op(L.linear_forward, L.linear_backward, inputs))


@given(lead=st.lists(small, min_size=1, max_size=2), n_in=small, n_out=small, seed=seeds)
def test_linear_frozen_gives_only_dx(xp, lead, n_in, n_out, seed):
    W, b = normal(xp, seed + 1, (n_in, n_out)), normal(xp, seed + 2, (n_out,))
    out = check_op(lambda x: L.linear_forward(x, W, b), lambda d, c: L.linear_backward(d, c, param_grads=False),
                   [normal(xp, seed, (*lead, n_in))])
    assert_ok(out)
    _, cache = L.linear_forward(normal(xp, seed, (*lead, n_in)), W, b)
    assert L.linear_backward(normal(xp, seed, (*lead, n_out)), cache, param_grads=False)[1:] == (None, None)


@given(x=arrays(np.float64, st.tuples(small, st.integers(1, 6)),
                elements=st.floats(-60, 60, allow_nan=False, allow_infinity=False)))
def test_gelu(xp, x):
    assert_ok(check_op(L.gelu_forward, L.gelu_backward, [xp.asarray(x)]))


@given(scale=st.sampled_from([1.0, 10.0, 1e3]), seed=seeds)
def test_gelu_large_inputs(xp, scale, seed):
    """Through the saturated tails: 1 - tanh^2 stays finite where 1/cosh^2 would overflow."""
    x = xp.concatenate([normal(xp, seed, (12,), scale), xp.asarray([-1e3, -50.0, -8.0, 8.0, 50.0, 1e3])])
    assert_ok(check_op(L.gelu_forward, L.gelu_backward, [x]))


@given(shape=st.lists(small, min_size=1, max_size=3), K=st.integers(1, 7),
       scale=st.sampled_from([0.1, 1.0, 10.0, 100.0]), offset=st.sampled_from([0.0, 1e3, -1e3]), seed=seeds)
def test_softmax(xp, shape, K, scale, offset, seed):
    x = normal(xp, seed, (*shape, K), scale, offset)
    assert_ok(check_op(L.softmax_forward, L.softmax_backward, [x]))


@given(shape=st.lists(small, min_size=1, max_size=3), rate=st.floats(0.05, 0.9), seed=seeds)
def test_dropout(xp, shape, rate, seed):
    x = normal(xp, seed, tuple(shape))
    # A generator made afresh from the same seed: every forward evaluation draws the same mask.
    forward = lambda x: L.dropout_forward(x, rate, make_rng(xp, seed))  # noqa: E731
    assert_ok(check_op(forward, L.dropout_backward, [x]))
    # The backward uses the forward's mask: zero exactly where the output was dropped.
    out, cache = forward(x)
    dx = asnumpy(L.dropout_backward(xp.ones_like(x), cache))
    kept = asnumpy(out) != 0
    assert np.all(dx[~kept] == 0) and np.allclose(dx[kept], 1.0 / (1.0 - rate))


def test_dropout_off_is_identity(xp):
    x = normal(xp, 0, (2, 3))
    for rate, rng in [(0.0, make_rng(xp, 0)), (0.5, None)]:
        out, cache = L.dropout_forward(x, rate, rng)
        dout = normal(xp, 1, (2, 3))
        assert cache is None and np.array_equal(asnumpy(out), asnumpy(x))
        assert np.array_equal(asnumpy(L.dropout_backward(dout, cache)), asnumpy(dout))


@given(shape=st.lists(small, min_size=1, max_size=3), seed=seeds)
def test_residual(xp, shape, seed):
    x, fx = normal(xp, seed, tuple(shape)), normal(xp, seed + 1, tuple(shape))
    assert_ok(check_op(L.residual_forward, L.residual_backward, [x, fx]))


def _random_mask(seed, shape):
    """Random True/False with at least one True in every row (each query sees some key)."""
    rng = np.random.default_rng(seed)
    mask = rng.random(shape) < 0.5
    rows = mask.reshape(-1, shape[-1])
    rows[np.arange(rows.shape[0]), rng.integers(0, shape[-1], rows.shape[0])] = True
    return mask


@given(B=st.integers(1, 2), H=st.integers(1, 3), Tq=st.integers(1, 5), Tk=st.integers(1, 5), D=small,
       mask_kind=st.sampled_from(["none", "causal", "random", "random per head"]),
       rate=st.sampled_from([0.0, 0.0, 0.3]), scale=st.sampled_from([0.5, 1.0, 3.0]), seed=seeds)
def test_attention(xp, B, H, Tq, Tk, D, mask_kind, rate, scale, seed):
    if mask_kind == "causal":
        Tk = max(Tk, Tq)  # the queries are the last Tq of the Tk positions
        mask = L.causal_mask(xp, Tq, Tk)
    elif mask_kind == "random":
        mask = xp.asarray(_random_mask(seed, (B, 1, Tq, Tk)))
    elif mask_kind == "random per head":
        mask = xp.asarray(_random_mask(seed, (B, H, Tq, Tk)))
    else:
        mask = None
    q, k, v = (normal(xp, seed + i, s, scale) for i, s in enumerate([(B, H, Tq, D), (B, H, Tk, D), (B, H, Tk, D)]))

    def forward(q, k, v):  # dropout on the probabilities: a fresh generator from one seed per call
        return L.attention_forward(q, k, v, mask, rate, make_rng(xp, seed) if rate else None)

    assert_ok(check_op(forward, L.attention_backward, [q, k, v]))


@given(B=st.integers(1, 2), H=st.integers(1, 3), T=st.integers(1, 9), D=small, rows=st.integers(1, 4),
       scale=st.sampled_from([0.5, 1.0, 3.0]), seed=seeds)
def test_causal_attention_by_blocks(xp, B, H, T, D, rows, scale, seed):
    q, k, v = (normal(xp, seed + i, (B, H, T, D), scale) for i in range(3))
    assert_ok(check_op(lambda q, k, v: L.causal_attention_forward(q, k, v, rows), L.causal_attention_backward, [q, k, v]))


@given(B=small, T=small, H=small, D=small, seed=seeds)
def test_split_and_merge_heads(xp, B, T, H, D, seed):
    x = normal(xp, seed, (B, T, H * D))
    assert_ok(check_op(lambda x: L.split_heads(x, H), lambda d, _: L.merge_heads(d), [x]))
    assert_ok(check_op(L.merge_heads, lambda d, _: L.split_heads(d, H), [normal(xp, seed, (B, H, T, D))]))
    assert np.array_equal(asnumpy(L.merge_heads(L.split_heads(x, H))), asnumpy(x))


@given(N=st.integers(1, 6), V=st.integers(1, 7), scale=st.sampled_from([1.0, 10.0, 1e3]),
       offset=st.sampled_from([0.0, 1e3, -1e3]), ignore_index=st.sampled_from([-100, -1]), data=st.data(), seed=seeds)
def test_cross_entropy(xp, N, V, scale, offset, ignore_index, data, seed):
    targets = np.array(data.draw(st.lists(st.integers(0, V - 1), min_size=N, max_size=N)))
    ignored = np.array(data.draw(st.lists(st.booleans(), min_size=N, max_size=N)))
    targets = xp.asarray(np.where(ignored, ignore_index, targets))
    logits = normal(xp, seed, (N, V), scale, offset)
    forward = lambda z: L.cross_entropy_forward(z, targets, ignore_index)  # noqa: E731
    assert np.isfinite(float(forward(logits)[0]))  # 1e3-scale logits must not overflow
    assert_ok(check_op(forward, L.cross_entropy_backward, [logits]))


@given(N=st.integers(1, 7), C=small, V=st.integers(1, 6), chunk_rows=st.none() | st.integers(1, 8),
       scale=st.sampled_from([1.0, 30.0]), data=st.data(), seed=seeds)
def test_lm_head_cross_entropy(xp, N, C, V, chunk_rows, scale, data, seed):
    """The fused LM head + loss: its dx and dW against finite differences of its loss, and the
    same numbers as the unfused linear -> cross_entropy chain, whatever the chunking."""
    targets = np.array(data.draw(st.lists(st.integers(0, V - 1), min_size=N, max_size=N)))
    ignored = np.array(data.draw(st.lists(st.booleans(), min_size=N, max_size=N)))
    targets = xp.asarray(np.where(ignored, -100, targets))
    x, W = normal(xp, seed, (N, C), scale), normal(xp, seed + 1, (V, C))

    def fused(d):
        return L.lm_head_cross_entropy(d["x"], d["W"], targets, -100, chunk_rows)

    def grads(d):
        return dict(zip(("x", "W"), fused(d)[1:]))

    assert_ok(check_gradients(lambda d: fused(d)[0], {"x": x, "W": W}, grads))

    loss, dx, dW = fused({"x": x, "W": W})
    logits, c_lin = L.linear_forward(x, W.T)
    loss2, c_ce = L.cross_entropy_forward(logits, targets, -100)
    dx2, dWT, _ = L.linear_backward(L.cross_entropy_backward(1.0, c_ce), c_lin)
    for a, b in [(loss, loss2), (dx, dx2), (dW, dWT.T)]:
        np.testing.assert_allclose(asnumpy(a), asnumpy(b), rtol=1e-10, atol=1e-14)


# --- the whole model ----------------------------------------------------------------------

TINY = GPT2Config(n_layer=2, n_head=2, n_embd=8, n_ctx=8, vocab_size=11)


def tiny_params(config=TINY, seed=0, xp=np):
    """init_params in float64, with the biases and layer-norm gains moved off their initial 0 and 1
    so that the check is made at a generic point (a gain of exactly 1 can hide a missing factor)."""
    params = M.init_params(config, xp, np.float64, seed)
    rng = np.random.default_rng(seed + 1)
    for name, a in params.items():
        if a.ndim == 1:
            params[name] = a + xp.asarray(rng.normal(0.0, 0.1, a.shape))
    return params


def tiny_batch(config=TINY, seed=0, xp=np, B=2, T=6):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, config.vocab_size, (B, T))
    targets = rng.integers(0, config.vocab_size, (B, T))
    targets[0, 1] = -100  # one ignored position
    return xp.asarray(ids), xp.asarray(targets)


def model_check(params, config, ids, targets, dropout_seed=None, lora_scale=1.0, max_elements=96):
    """Gradcheck of M.loss_and_grads over every parameter (a sample of the big ones)."""

    def rng():  # dropout: the same generator state for the analytic pass and every evaluation
        return None if dropout_seed is None else make_rng(np, dropout_seed)

    def loss(p):
        return M.loss_and_grads(p, config, ids, targets, rng=rng(), lora_scale=lora_scale)[0]

    def grads(p):
        return M.loss_and_grads(p, config, ids, targets, rng=rng(), lora_scale=lora_scale,
                                wanted=set(p))[1]

    return check_gradients(loss, params, grads, max_elements=max_elements)


def test_model_gradients():
    """Every parameter, including the tied wte (LM head + token lookup) and wpe."""
    params = tiny_params()
    ids, targets = tiny_batch()
    result = model_check(params, TINY, ids, targets)
    assert_ok(result)
    assert set(result.inputs) == set(M.param_names(TINY))
    assert result.inputs["wte.weight"].checked == TINY.vocab_size * TINY.n_embd  # small enough to check whole


def test_model_backward_through_the_logits():
    """forward + backward(dlogits), the unfused path (the LM head as a linear of wte^T): checked
    through loss = sum(logits * dlogits) for a random dlogits."""
    params = tiny_params(seed=5)
    ids, _ = tiny_batch(seed=5)
    dlogits = normal(np, 6, (*ids.shape, TINY.vocab_size))

    def grads(p):
        return M.backward(dlogits, M.forward(p, TINY, ids)[1], TINY, wanted=set(p))

    assert_ok(check_gradients(lambda p: M.forward(p, TINY, ids)[0] * dlogits, params, grads, max_elements=96))


@pytest.mark.slow
def test_model_gradients_with_dropout():
    config = TINY.replace(dropout=0.1)
    ids, targets = tiny_batch(seed=1)
    params = tiny_params(config, seed=1)
    assert_ok(model_check(params, config, ids, targets, dropout_seed=7))
    # Dropout is really on: another mask changes the loss.
    a = M.loss_and_grads(params, config, ids, targets, rng=make_rng(np, 7))[0]
    b = M.loss_and_grads(params, config, ids, targets, rng=make_rng(np, 8))[0]
    assert a != b


LORA = {"h.0.attn.c_attn": (8, 24), "h.1.mlp.c_proj": (32, 8)}


def lora_params(seed=2, r=2):
    params = tiny_params(seed=seed)
    rng = np.random.default_rng(seed + 5)
    for name, (n_in, n_out) in LORA.items():
        params[name + ".lora_A"] = rng.normal(0.0, 0.3, (n_in, r))
        params[name + ".lora_B"] = rng.normal(0.0, 0.3, (r, n_out))  # nonzero, so dA is nonzero too
    return params


@pytest.mark.slow
def test_model_gradients_with_lora():
    params = lora_params()
    ids, targets = tiny_batch(seed=2)
    result = model_check(params, TINY, ids, targets, lora_scale=2.0)
    assert_ok(result)
    assert {n for n in result.inputs if "lora" in n} == {n + s for n in LORA for s in M.LORA_SUFFIXES}


def test_lora_wanted_restricts_grads():
    params = lora_params()
    ids, targets = tiny_batch(seed=2)
    lora_names = {n + s for n in LORA for s in M.LORA_SUFFIXES}
    loss_all, all_grads = M.loss_and_grads(params, TINY, ids, targets, lora_scale=2.0, wanted=set(params))
    loss, grads = M.loss_and_grads(params, TINY, ids, targets, lora_scale=2.0, wanted=lora_names)
    assert set(grads) == lora_names  # no base gradient, not even layer norms or the tied wte
    assert float(loss) == float(loss_all)
    for name in lora_names:
        np.testing.assert_allclose(grads[name], all_grads[name], rtol=1e-12, atol=0)
    # And the adapters' gradients checked alone against finite differences of the frozen model.
    lora_only = {n: params[n] for n in lora_names}

    def loss_of(p):
        return M.loss_and_grads({**params, **p}, TINY, ids, targets, lora_scale=2.0, wanted=set())[0]

    def grads_of(p):
        return M.loss_and_grads({**params, **p}, TINY, ids, targets, lora_scale=2.0, wanted=set(p))[1]

    assert_ok(check_gradients(loss_of, lora_only, grads_of))


def test_default_wanted_is_every_base_parameter():
    params = lora_params()
    ids, targets = tiny_batch(seed=2)
    _, grads = M.loss_and_grads(params, TINY, ids, targets)
    assert set(grads) == set(M.param_names(TINY))


def test_float32_gradients_agree_with_float64():
    params64 = tiny_params(seed=3)
    params32 = {k: v.astype(np.float32) for k, v in params64.items()}
    ids, targets = tiny_batch(seed=3)
    loss64, g64 = M.loss_and_grads(params64, TINY, ids, targets)
    loss32, g32 = M.loss_and_grads(params32, TINY, ids, targets)
    assert loss32.dtype == np.float32 and all(g.dtype == np.float32 for g in g32.values())
    assert abs(float(loss32) - float(loss64)) <= 1e-5 * abs(float(loss64))
    scale = max(np.abs(g).max() for g in g64.values())
    for name, g in g64.items():
        # relative to the parameter's own gradient size, but at least 1% of the largest one (an
        # exactly-zero gradient, such as the keys' bias, is float32 rounding either way)
        err = np.abs(g32[name] - g).max() / max(np.abs(g).max(), 1e-2 * scale)
        assert err <= 1e-4, f"{name}: float32 and float64 gradients differ by {err:.1e} (relative)"


def test_gpt2_class_gives_the_same_gradients():
    params = tiny_params(seed=4)
    ids, targets = tiny_batch(seed=4)
    loss, grads = M.loss_and_grads(params, TINY, ids, targets)
    loss2, grads2 = M.GPT2(TINY, params).loss_and_grads(ids, targets)
    assert loss2 == float(loss) and set(grads2) == set(grads)
    for name in grads:
        np.testing.assert_array_equal(grads2[name], grads[name])


# --- gradcheck itself: it must catch what it is for ---------------------------------------

def test_gradcheck_catches_gelu_backward_off_by_one_percent():
    x = normal(np, 0, (3, 4), 2.0)
    result = check_op(L.gelu_forward, lambda d, c: 1.01 * L.gelu_backward(d, c), [x])
    assert not result and not result.ok
    assert 9e-3 < result.max_rel_error < 1.1e-2
    assert "FAILED" in result.report() and "constant factor" in result.report()
    assert check_op(L.gelu_forward, L.gelu_backward, [x])  # and the right one passes


def test_gradcheck_catches_embedding_backward_that_drops_repeated_ids():
    ids = np.array([[1, 2, 1, 1]])

    def naive_backward(dout, _):
        dW = np.zeros((4, 3))
        dW[ids.reshape(-1)] += dout.reshape(-1, 3)  # keeps one of each repeated id
        return dW

    result = check_op(lambda W: (W[ids], None), naive_backward, [normal(np, 0, (4, 3))])
    assert not result.ok
    assert result.worst.name == "W" and result.worst.index[0] == 1  # the repeated row


def test_gradcheck_catches_a_missing_term():
    """Centring, x - mean(x), with a backward that forgets that the mean depends on x."""
    center = lambda x: (x - x.mean(axis=-1, keepdims=True), None)  # noqa: E731
    right = lambda d, _: d - d.mean(axis=-1, keepdims=True)  # noqa: E731
    x = normal(np, 0, (3, 5))
    result = check_op(center, lambda d, _: d, [x])
    assert not result.ok and result.failures == ["x"]
    assert check_op(center, right, [x])


def test_gradcheck_refuses_float32_unless_allowed():
    x = np.linspace(-1, 1, 5, dtype=np.float32)
    with pytest.raises(TypeError, match="float64"):
        check_gradients(lambda x: (x ** 2).sum(), x, 2 * x)
    assert check_gradients(lambda x: (x ** 2).sum(), x, 2 * x.astype(np.float64), allow_float32=True)


def test_gradcheck_refuses_a_random_function():
    rng = np.random.default_rng(0)  # shared, so every call draws a new mask
    with pytest.raises(ValueError, match="fixed seed"):
        check_op(lambda x: L.dropout_forward(x, 0.5, rng), L.dropout_backward, [np.ones((4, 4))])


def test_gradcheck_reports_shape_and_missing_gradients():
    x = {"a": np.ones(3), "b": np.ones(2)}
    with pytest.raises(ValueError, match="no analytic gradient for input 'b'"):
        check_gradients(lambda d: d["a"].sum() + d["b"].sum(), x, {"a": np.ones(3)})
    with pytest.raises(ValueError, match="shape"):
        check_gradients(lambda d: d["a"].sum() + d["b"].sum(), x, {"a": np.ones(3), "b": np.ones(3)})


def test_gradcheck_samples_big_inputs_and_leaves_inputs_alone():
    x = normal(np, 0, (50, 40))
    before = x.copy()
    result = check_gradients(lambda x: (x ** 3).sum(), x, 3 * x ** 2, max_elements=30, seed=1)
    assert result.ok and result.inputs["x"].checked == 30 and result.inputs["x"].size == 2000
    np.testing.assert_array_equal(x, before)


def test_gradcheck_floor_keeps_tiny_gradients_from_blowing_up():
    """A saturated softmax: entries of 1e-14, far below what a finite difference of f ~ 1 can
    resolve. Their plain relative error is ~1 (the numeric value is rounding noise); the floor
    judges them on the scale of the rest, so the correct backward passes."""
    result = check_op(L.softmax_forward, L.softmax_backward, [np.array([[0.0, -30.0, -31.0]])])
    a, n = result.worst.analytic, result.worst.numeric
    assert max(abs(a), abs(n)) < 1e-12 and abs(a - n) / max(abs(a), abs(n)) > 0.1
    assert result.ok, result.report()


def test_gradcheck_doctests():
    failed, attempted = doctest.testmod(picogpt.gradcheck)
    assert attempted > 0 and failed == 0
