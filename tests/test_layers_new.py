"""The newer ops of picogpt.layers and the in-place rewrites of the older ones.

- gelu_exact (erf form, nanoGPT's and torch's nn.GELU()), layer norm without shift (b=None),
  linear without bias: gradcheck in float64 over hypothesis shapes, as tests/test_gradients.py.
- erf and gelu_exact against references: Python's math.erf (float64) and torch's GELU and its
  gradient (tests/fixtures/gelu_exact.npz, written by tests/fixtures/make_gelu_exact.py).
- The in-place versions of GELU, layer norm, softmax and attention equal the plain formulas
  their docstrings give, bit for bit in float32: a speed trick may not change a result.
"""

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from picogpt import layers as L
from picogpt.backend import asnumpy
from picogpt.gradcheck import check_op

TOL = 1e-6
FIXTURE = Path(__file__).parent / "fixtures" / "gelu_exact.npz"
seeds = st.integers(0, 2**32 - 1)
small = st.integers(1, 4)
shapes = st.tuples(small, st.integers(1, 5), st.integers(1, 8))


def normal(xp, seed, shape, scale=1.0, offset=0.0, dtype=np.float64):
    return xp.asarray((np.random.default_rng(seed).standard_normal(shape) * scale + offset).astype(dtype))


def assert_ok(result):
    assert result.ok and result.max_rel_error <= TOL, "\n" + result.report()


# --- gradients, float64 -------------------------------------------------------------------

@given(shape=shapes, scale=st.sampled_from([0.01, 1.0, 3.0, 10.0]), seed=seeds)
def test_gelu_exact_gradcheck(xp, shape, scale, seed):
    assert_ok(check_op(L.gelu_exact_forward, L.gelu_exact_backward, [normal(xp, seed, shape, scale)]))


@given(shape=shapes, scale=st.sampled_from([0.1, 1.0, 10.0]), offset=st.floats(-5, 5), seed=seeds)
def test_layernorm_without_shift_gradcheck(xp, shape, scale, offset, seed):
    x, g = normal(xp, seed, shape, scale, offset), normal(xp, seed + 1, shape[-1:], 1.0, 1.0)
    assert_ok(check_op(lambda x, g: L.layernorm_forward(x, g, None), L.layernorm_backward, [x, g]))
    out, cache = L.layernorm_forward(x, g, None)
    np.testing.assert_array_equal(asnumpy(out), asnumpy(L.layernorm_forward(x, g, xp.zeros_like(g))[0]))
    assert L.layernorm_backward(xp.ones_like(x), cache)[2] is None


@given(lead=st.lists(small, min_size=1, max_size=3), n_in=st.integers(1, 6), n_out=st.integers(1, 6), seed=seeds)
def test_linear_without_bias_gradcheck(xp, lead, n_in, n_out, seed):
    x, W = normal(xp, seed, (*lead, n_in)), normal(xp, seed + 1, (n_in, n_out))
    assert_ok(check_op(lambda x, W: L.linear_forward(x, W, None), L.linear_backward, [x, W]))
    out, cache = L.linear_forward(x, W, None)
    assert L.linear_backward(xp.ones_like(out), cache)[2] is None


# --- erf and the exact GELU against their references -------------------------------------

@given(z=st.floats(-30, 30, allow_nan=False))
def test_erf_matches_math_erf(z):
    assert abs(float(L.erf(np.array(z))) - math.erf(z)) <= 1.5e-7


def test_erf_is_odd_and_its_derivative_is_close_to_the_true_one():
    z = np.linspace(-6, 6, 20001)
    e, de = L._erf_parts(z)
    np.testing.assert_array_equal(L.erf(-z), -L.erf(z))
    np.testing.assert_allclose(de, 2 / math.sqrt(math.pi) * np.exp(-z * z), atol=1e-5)


def test_gelu_exact_matches_x_times_the_normal_distribution_function():
    x = np.linspace(-12, 12, 4801)
    phi = np.array([0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x])
    np.testing.assert_allclose(L.gelu_exact_forward(x)[0], x * phi, rtol=0, atol=0.5 * 12 * 1.5e-7)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gelu_exact_matches_torch(dtype):
    ref = np.load(FIXTURE)
    x = ref["x"].astype(dtype)
    out, cache = L.gelu_exact_forward(x)
    dx = L.gelu_exact_backward(np.ones_like(x), cache)
    assert out.dtype == dx.dtype == np.dtype(dtype)
    # the erf approximation is within 1.5e-7, so gelu within 0.5 |x| 1.5e-7 (|x| <= 10)
    np.testing.assert_allclose(out, ref[f"gelu_{dtype}"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(dx, ref[f"grad_{dtype}"], rtol=0, atol=1e-6)


def test_exact_and_tanh_gelu_differ_by_what_gpt2_papers_say():
    x = np.linspace(-6, 6, 1201)
    gap = np.abs(L.gelu_exact_forward(x)[0] - L.gelu_forward(x)[0]).max()
    assert 1e-4 < gap < 1e-3


# --- the fast ops equal their plain formulas: bit for bit where the order of operations is
# --- the same, to float32 rounding where it is rearranged ----------------------------------

def plain_gelu(x):
    t = np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x * x * x))
    return 0.5 * x * (1.0 + t), t


def plain_gelu_backward(dout, x, t):
    du = math.sqrt(2 / math.pi) * (1.0 + 3 * 0.044715 * x * x)
    return dout * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du)


def plain_layernorm(x, g, b, eps=1e-5):
    xc = x - x.mean(axis=-1, keepdims=True)
    rstd = 1.0 / ((xc * xc).mean(axis=-1, keepdims=True) + eps) ** 0.5
    n = xc * rstd
    return n * g + b, n, rstd


def plain_layernorm_backward(dout, n, rstd, g):
    dn = dout * g
    dx = rstd * (dn - dn.mean(axis=-1, keepdims=True) - n * (dn * n).mean(axis=-1, keepdims=True))
    return dx, (dout * n).sum(axis=(0, 1)), dout.sum(axis=(0, 1))


@given(shape=shapes, scale=st.sampled_from([0.1, 1.0, 30.0]), seed=seeds)
def test_inplace_gelu_and_layernorm_equal_the_plain_formulas(shape, scale, seed):
    x, dout = normal(np, seed, shape, scale, dtype=np.float32), normal(np, seed + 1, shape, dtype=np.float32)
    g, b = normal(np, seed + 2, shape[-1:], dtype=np.float32), normal(np, seed + 3, shape[-1:], dtype=np.float32)
    out, cache = L.gelu_forward(x)
    want, t = plain_gelu(x)
    np.testing.assert_array_equal(out, want)
    # the backward is rearranged (1 - t^2 = (1 - t)(1 + t)), the layer norm's means are products
    assert_float32_close(L.gelu_backward(dout, cache), plain_gelu_backward(dout, x, t))
    out, cache = L.layernorm_forward(x, g, b)
    want, n, rstd = plain_layernorm(x, g, b)
    assert_float32_close(out, want)
    # sums that cancel are compared at the size of what they sum (their terms' magnitudes)
    scales = (np.abs(rstd * dout * g).max() * 3, np.abs(dout * n).sum(axis=(0, 1)).max(), np.abs(dout).sum(axis=(0, 1)).max())
    for got, w, size in zip(L.layernorm_backward(dout, cache), plain_layernorm_backward(dout, n, rstd, g), scales):
        assert_float32_close(got, w, size)


def assert_float32_close(got, want, size=None):
    """Equal up to a few float32 roundings of `size` (default: the largest entry of `want`);
    a wrong formula is off by O(1)."""
    assert got.dtype == want.dtype == np.float32
    size = float(np.abs(want).max(initial=1e-30)) if size is None else float(size)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * size)


@given(B=small, H=small, T=st.integers(1, 20), D=st.integers(1, 5), rows=st.integers(1, 8), seed=seeds)
def test_causal_attention_by_blocks_equals_attention_with_the_causal_mask(xp, B, H, T, D, rows, seed):
    q, k, v, dout = (xp.asarray(normal(np, seed + i, (B, H, T, D), dtype=np.float32)) for i in range(4))
    want, cache = L.attention_forward(q, k, v, L.causal_mask(xp, T, T))
    got, blocks = L.causal_attention_forward(q, k, v, rows=rows)
    assert_float32_close(asnumpy(got), asnumpy(want))
    assert len(blocks[4]) == -(-T // rows)               # one block of probabilities per `rows` queries
    # the gradients are sums of products dout v (exactly 0 for dq at T = 1, up to rounding here)
    size = max(float(abs(w).max()) for w in map(asnumpy, (dout, v))) ** 2
    for g, w in zip(L.causal_attention_backward(dout, blocks), L.attention_backward(dout.copy(), cache)):
        assert_float32_close(asnumpy(g), asnumpy(w), max(size, float(abs(asnumpy(w)).max())))


def test_causal_attention_default_blocks_per_device(xp):
    """Without `rows`: blocks of CAUSAL_ROWS queries on the CPU, of GPU_CAUSAL_ROWS on a GPU."""
    T = 2 * L.GPU_CAUSAL_ROWS + 3
    q, k, v = (xp.asarray(normal(np, i, (1, 2, T, 4), dtype=np.float32)) for i in range(3))
    got, blocks = L.causal_attention_forward(q, k, v)
    rows = L.CAUSAL_ROWS if xp is np else L.GPU_CAUSAL_ROWS
    assert [p.shape[-2:] for p in blocks[4]][:2] == [(rows, rows), (rows, 2 * rows)]
    assert_float32_close(asnumpy(got), asnumpy(L.attention_forward(q, k, v, L.causal_mask(xp, T, T))[0]))


def test_gelu_exact_in_place_equals_its_plain_form(monkeypatch):
    x = np.concatenate([[0.0, -0.0, 1e-8, -40.0, 40.0], normal(np, 5, (200,), 3.0)])   # 0, tails, typical
    e, de = L._erf_parts(x * math.sqrt(0.5))                  # the plain form of the docstring
    phi = 0.5 * (1.0 + e)
    out, d = L.gelu_exact_forward(x)
    np.testing.assert_allclose(out, x * phi, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(d, phi + 0.5 * x * de * math.sqrt(0.5), rtol=1e-13, atol=1e-15)
    monkeypatch.setattr(L, "CACHE_SLICE", 16)                 # 205 numbers: 13 slices, the last one short
    sliced, d_sliced = L.gelu_exact_forward(x)
    np.testing.assert_array_equal(sliced, out)
    np.testing.assert_array_equal(d_sliced, d)


def test_gelu_exact_below_float64_keeps_the_true_derivative(monkeypatch):
    """float32: the value as in float64 (to float32 rounding), the derivative the true one,
    Phi(x) + x phi(x) (torch's), not that of the erf approximation (float64's, for gradcheck)."""
    x64 = np.concatenate([[0.0, -0.0, 1e-8, -40.0, 40.0], normal(np, 6, (400,), 3.0)])
    x = x64.astype(np.float32)
    out, d = L.gelu_exact_forward(x)
    assert out.dtype == d.dtype == np.float32
    xs = x.astype(np.float64)
    phi = np.array([0.5 * (1 + math.erf(v / math.sqrt(2))) for v in xs])
    true_d = phi + xs * np.exp(-xs * xs / 2) / math.sqrt(2 * math.pi)
    np.testing.assert_allclose(out, L.gelu_exact_forward(xs)[0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(d, true_d, rtol=0, atol=3e-7)      # erf within 1.5e-7, float32 rounding
    own = L.gelu_exact_forward(xs)[1]                             # float64: the approximation's own
    assert 1e-8 < np.abs(own - true_d).max() < 1e-5               # not the same function, close to it
    monkeypatch.setattr(L, "CACHE_SLICE", 16)
    np.testing.assert_array_equal(L.gelu_exact_forward(x)[1], d)


def test_sliced_gelu_equals_gelu_in_one_piece(monkeypatch):
    x, dout = normal(np, 0, (3, 5, 7), 3.0, dtype=np.float32), normal(np, 1, (3, 5, 7), dtype=np.float32)
    whole, cache = L.gelu_forward(x)
    dwhole = L.gelu_backward(dout, cache)
    monkeypatch.setattr(L, "CACHE_SLICE", 8)                 # 105 numbers: 14 slices, the last one short
    assert len(L.cache_slices(np, x.size)) == 14
    sliced, cache = L.gelu_forward(x)
    np.testing.assert_array_equal(sliced, whole)
    np.testing.assert_array_equal(L.gelu_backward(dout, cache), dwhole)


@given(B=small, H=small, T=st.integers(1, 6), D=st.integers(1, 5), seed=seeds)
def test_inplace_attention_equals_the_plain_formulas(B, H, T, D, seed):
    q, k, v, dout = (normal(np, seed + i, (B, H, T, D), dtype=np.float32) for i in range(4))
    mask = L.causal_mask(np, T, T)
    out, cache = L.attention_forward(q, k, v, mask)
    scale = 1.0 / math.sqrt(D)
    s = np.where(mask, (q * scale) @ k.swapaxes(-1, -2), -np.inf)
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    p = e / e.sum(axis=-1, keepdims=True)
    np.testing.assert_array_equal(out, p @ v)
    dp = dout @ v.swapaxes(-1, -2)
    ds = p * (dp - (dp * p).sum(axis=-1, keepdims=True)) * scale
    for got, w in zip(L.attention_backward(dout, cache), (ds @ k, ds.swapaxes(-1, -2) @ q, p.swapaxes(-1, -2) @ dout)):
        np.testing.assert_array_equal(got, w)


def test_softmax_leaves_its_inputs_alone_unless_told():
    x = normal(np, 0, (3, 7), dtype=np.float32)
    dout = normal(np, 1, (3, 7), dtype=np.float32)
    x0, d0 = x.copy(), dout.copy()
    p, cache = L.softmax_forward(x)
    dx = L.softmax_backward(dout, cache)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(dout, d0)
    p2, _ = L.softmax_forward(x, overwrite=True)
    assert np.shares_memory(p2, x)
    np.testing.assert_array_equal(p2, p)
    np.testing.assert_array_equal(L.softmax_backward(dout, cache, overwrite=True), dx)


def test_keep_freed_memory_is_harmless_to_call_twice():
    first = L.keep_freed_memory()
    assert L.keep_freed_memory() == first
    assert isinstance(first, bool)


@pytest.mark.parametrize("rows", [1, 2, 5, L.FEW_ROWS, L.FEW_ROWS + 1])
def test_linear_with_few_rows_is_the_plain_product(rows):
    x, W, b = (normal(np, i, shape, dtype=np.float32) for i, shape in enumerate([(rows, 48), (48, 80), (80,)]))
    out, _ = L.linear_forward(x, W, b)
    assert out.flags.c_contiguous
    np.testing.assert_allclose(out, x @ W + b, rtol=1e-5, atol=2e-5)
    # the same numbers for an F-ordered W (the tied LM head passes wte.T), within float32 rounding
    np.testing.assert_allclose(L.linear_forward(x[None], W.T.copy().T, b)[0][0], out, rtol=1e-5, atol=2e-5)


def test_embedding_backward_into_adds_in_place():
    ids = np.array([[0, 2, 2], [1, 0, 3]])
    dout, head = normal(np, 0, (2, 3, 5)), normal(np, 1, (4, 5))
    _, cache = L.embedding_forward(ids, head)
    want = head + L.embedding_backward(dout, cache)
    got = L.embedding_backward(dout, cache, into=head)
    assert got is head
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-15)
