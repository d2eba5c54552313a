"""picogpt.quantize: symmetric per-output-channel int8 weights.

Round-trip error within half a step per entry, one scale per output column (per row for wte),
zero columns handled, and a quantized model that keeps every shape and dtype and loses little.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from helpers import TINY, host, rel_err
from hypothesis.extra import numpy as hnp

import picogpt
from picogpt.backend import PicoGPTError
from picogpt.layers import cross_entropy_forward
from picogpt.quantize import dequantize, quantize_int8, quantize_model, quantized_names, quantized_size_bytes

matrices = hnp.arrays(
    dtype=st.sampled_from([np.float32, np.float64]),
    shape=hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=24),
    # zeros and magnitudes of weights (1e-6 .. 1e3); subnormal floats would make subnormal scales
    elements=st.one_of(st.just(0.0), st.floats(1e-6, 1e3), st.floats(-1e3, -1e-6)),
)


@given(W=matrices, axis=st.sampled_from([0, 1]))
def test_round_trip_error_is_at_most_half_a_step(W, axis):
    q, scale = quantize_int8(W, axis=axis)
    assert q.dtype == np.int8 and q.shape == W.shape
    assert np.abs(q.astype(np.int16)).max() <= 127            # -128 is never used: symmetric
    W_hat = dequantize(q, scale, axis=axis)
    s = scale[None, :] if axis == 0 else scale[:, None]
    err = np.abs(W.astype(np.float64) - W_hat.astype(np.float64))
    # half a step, plus the float rounding of W / s and of q * s (a few ulps of |W|)
    ulp = np.finfo(W.dtype).eps * np.abs(W.astype(np.float64))
    assert np.all(err <= s / 2 + 4 * ulp + 1e-300), f"worst excess {np.max(err - s / 2):.3g}"


@given(W=matrices)
def test_one_scale_per_output_column_is_its_max_over_127(W):
    q, scale = quantize_int8(W)
    assert scale.shape == (W.shape[1],)
    np.testing.assert_allclose(scale, np.abs(W).max(axis=0) / 127, rtol=1e-6)
    # the largest entry of every non-zero column lands on +-127: the full range is used
    nonzero = np.abs(W).max(axis=0) > 0
    assert np.all(np.abs(q.astype(np.int16)).max(axis=0)[nonzero] == 127)


def test_scales_are_per_channel_not_per_matrix():
    # A narrow column next to a wide one: a per-matrix scale would round the narrow one to zero.
    rng = np.random.default_rng(0)
    W = np.stack([rng.normal(0, 1e-3, 256), rng.normal(0, 10.0, 256)], axis=1).astype(np.float32)  # (256, 2)
    q, scale = quantize_int8(W)
    assert scale[0] < 1e-3 * scale[1]
    rel = np.abs(dequantize(q, scale)[:, 0] - W[:, 0]).max() / np.abs(W[:, 0]).max()
    assert rel <= 0.5 / 127 + 1e-6
    # and per row for axis=1 (wte as the LM head: one scale per vocabulary entry)
    qT, scaleT = quantize_int8(W.T.copy(), axis=1)
    np.testing.assert_array_equal(qT, q.T)
    np.testing.assert_array_equal(scaleT, scale)


def test_zero_column_has_zero_scale_and_dequantizes_to_zero():
    W = np.array([[0.0, 1.0, -2.0], [0.0, -0.5, 0.25]], dtype=np.float32)
    q, scale = quantize_int8(W)
    assert scale[0] == 0 and np.all(q[:, 0] == 0)
    W_hat = dequantize(q, scale)
    assert np.all(np.isfinite(W_hat))
    assert np.all(W_hat[:, 0] == 0)
    q0, s0 = quantize_int8(np.zeros((4, 3), np.float32))  # an all-zero matrix
    assert np.all(q0 == 0) and np.all(s0 == 0) and np.all(dequantize(q0, s0) == 0)


def test_scale_factors_out_of_the_matmul():
    rng = np.random.default_rng(1)
    W = rng.normal(0, 0.02, (32, 48)).astype(np.float32)
    x = rng.normal(0, 1, (5, 32)).astype(np.float32)
    q, scale = quantize_int8(W)
    np.testing.assert_allclose((x @ q.astype(np.float32)) * scale, x @ dequantize(q, scale), rtol=1e-5, atol=1e-7)


def test_bad_input_gets_a_clear_error():
    with pytest.raises(PicoGPTError, match="matrix"):
        quantize_int8(np.ones(5, np.float32))
    with pytest.raises(PicoGPTError, match="NaN"):
        quantize_int8(np.array([[1.0, np.nan]], np.float32))


@pytest.fixture(scope="module")
def model():
    return picogpt.load_model(TINY, device="cpu")


def mean_loss(model, ids):
    logits = model.forward(ids[:, :-1])
    B, T, V = logits.shape
    return float(cross_entropy_forward(logits.reshape(B * T, V), ids[:, 1:].reshape(-1))[0])


@pytest.mark.parametrize("include_wte", [False, True])
def test_quantize_model_keeps_shapes_and_dtypes_and_loses_little(model, include_wte):
    qm = quantize_model(model, include_wte=include_wte)
    assert set(qm.params) == set(model.params)
    for k, a in model.params.items():
        assert qm.params[k].shape == a.shape and qm.params[k].dtype == a.dtype, k
    names = quantized_names(model.params, include_wte)
    assert len(names) == 4 * model.config.n_layer + include_wte
    for k in model.params:
        same = np.array_equal(host(qm.params[k]), host(model.params[k]))
        assert same == (k not in names), k          # exactly the projection weights changed
    # each changed weight is its own int8 round trip
    W = host(model.params["h.0.mlp.c_fc.weight"])
    np.testing.assert_array_equal(host(qm.params["h.0.mlp.c_fc.weight"]), dequantize(*quantize_int8(W)))
    # the original is untouched, and the copy shares no arrays with it
    assert all(qm.params[k] is not model.params[k] for k in model.params)

    ids = np.random.default_rng(0).integers(0, model.config.vocab_size, (4, model.config.n_ctx + 1))
    base, quant = mean_loss(model, ids), mean_loss(qm, ids)
    assert abs(quant - base) <= 0.01 * base, (base, quant)
    dlogit = np.abs(host(qm.forward(ids[:, :32])) - host(model.forward(ids[:, :32]))).max()
    assert 0 < dlogit < 0.25   # logits of this model span about +-3.5


def test_quantized_size(model):
    full = sum(a.nbytes for a in model.params.values())
    C, L = model.config.n_embd, model.config.n_layer
    proj = L * (C * 3 * C + C * C + C * 4 * C + 4 * C * C)        # numbers in the projection matrices
    channels = L * (3 * C + C + 4 * C + C)                          # one float32 scale per output column
    assert quantized_size_bytes(model) == full - 4 * proj + proj + 4 * channels
    V = model.config.vocab_size
    assert quantized_size_bytes(model, include_wte=True) == quantized_size_bytes(model) - 4 * V * C + V * C + 4 * V
    # the quantized copy stores the same way
    assert quantized_size_bytes(quantize_model(model)) == quantized_size_bytes(model)


@pytest.mark.gpu
def test_int8_on_the_gpu_rounds_as_on_the_cpu(model):
    """The same int8 weights and scales on both devices, and so the same logits."""
    gm = model.to("gpu")
    qg = quantize_model(gm, include_wte=True)
    qc = quantize_model(model, include_wte=True)
    assert qg.device == "gpu"
    for k in qc.params:
        np.testing.assert_allclose(host(qg.params[k]), host(qc.params[k]), rtol=1e-6, atol=1e-8)
    ids = np.arange(20)[None] * 7 % model.config.vocab_size
    assert rel_err(qg.forward(ids), qc.forward(ids)) <= 1e-5


def test_quantized_model_records_which_weights_were_rounded(model):
    assert model.quantized == ()
    qm = quantize_model(model)
    assert list(qm.quantized) == sorted(quantized_names(model.params)) and "wte.weight" not in qm.quantized
    assert qm.to("cpu").quantized == qm.quantized
    assert "wte.weight" in quantize_model(model, include_wte=True).quantized
