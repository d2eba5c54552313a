"""The sequence-classification head (picogpt.heads) against transformers and finite differences.

tests/fixtures/make_classifier.py wrote a small random GPT2ForSequenceClassification
(tests/fixtures/tiny-gpt2-cls) and classifier.npz: logits, loss and the gradient of every
parameter from torch autograd, for rows of equal length and rows of different lengths.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from picogpt import heads as H
from picogpt import layers as L
from picogpt import safetensors
from picogpt.backend import asnumpy, xp_for
from picogpt.config import GPT2Config
from picogpt.errors import PicoGPTError
from picogpt.gradcheck import check_gradients, check_op
from picogpt.model import init_params, param_names

FIXTURES = Path(__file__).parent / "fixtures"
TOL = 1e-6
seeds = st.integers(0, 2**32 - 1)


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(FIXTURES / "classifier.npz"))


@pytest.fixture(scope="module", params=["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def device(request):
    return request.param


def load_fixture(device, dtype):
    """The fixture folder's config and parameters (transformers' names without `transformer.`)."""
    d = json.loads((FIXTURES / "tiny-gpt2-cls" / "config.json").read_text())
    config = GPT2Config.from_hf_dict(d)
    xp = xp_for(device)
    raw = safetensors.load(FIXTURES / "tiny-gpt2-cls" / "model.safetensors")
    params = {k.removeprefix("transformer."): xp.asarray(np.asarray(v, dtype=dtype)) for k, v in raw.items()}
    return config, params, d


def rel_err(a, b):
    return float(np.abs(asnumpy(a) - b).max() / np.abs(b).max())


@pytest.mark.parametrize("batch", ["equal", "ragged"])
def test_logits_match_transformers(device, ref, batch):
    config, params, d = load_fixture(device, np.float32)
    xp = xp_for(device)
    ids, lengths = xp.asarray(ref[f"{batch}_ids"]), ref[f"{batch}_lengths"]
    by_lengths = asnumpy(H.classify(params, config, ids, lengths=lengths))
    by_pad = asnumpy(H.classify(params, config, ids, pad_token_id=d["pad_token_id"]))
    assert by_lengths.shape == (len(lengths), 3)
    assert np.abs(by_lengths - ref[f"{batch}_logits"]).max() <= 1e-4
    assert np.abs(by_pad - ref[f"{batch}_logits"]).max() <= 1e-4


@pytest.mark.parametrize("batch", ["equal", "ragged"])
def test_loss_and_every_gradient_match_torch(device, ref, batch):
    config, params, _ = load_fixture(device, np.float64)
    xp = xp_for(device)
    loss, logits, grads = H.classification_loss_and_grads(
        params, config, xp.asarray(ref[f"{batch}_ids"]), ref[f"{batch}_labels"], lengths=ref[f"{batch}_lengths"])
    assert abs(float(loss) - float(ref[f"{batch}_loss"])) <= 1e-6
    expected = {k.split(":", 1)[1] for k in ref if k.startswith(f"{batch}_grad:")}
    assert set(grads) == expected == set(param_names(config)) | {"score.weight"}
    for name, g in grads.items():
        assert rel_err(g, ref[f"{batch}_grad:{name}"]) <= 1e-4, name


def test_wanted_limits_the_gradients(ref):
    config, params, _ = load_fixture("cpu", np.float64)
    _, _, grads = H.classification_loss_and_grads(params, config, ref["ragged_ids"], ref["ragged_labels"],
                                                  lengths=ref["ragged_lengths"], wanted={"score.weight", "ln_f.bias"})
    assert set(grads) == {"score.weight", "ln_f.bias"}


def test_padding_changes_nothing(ref):
    """A row's logits do not depend on how much padding follows it (right padding, causal attention)."""
    config, params, _ = load_fixture("cpu", np.float64)
    ids, lengths = ref["ragged_ids"], ref["ragged_lengths"]
    batch = H.classify(params, config, ids, lengths=lengths)
    for b, n in enumerate(lengths):
        alone = H.classify(params, config, ids[b:b + 1, :n])
        np.testing.assert_allclose(batch[b], alone[0], rtol=0, atol=1e-12)


# --- the transformers rule for the last real token ------------------------------------------

@given(lengths=st.lists(st.integers(1, 8), min_size=1, max_size=5), T=st.integers(8, 10), seed=seeds)
def test_last_positions_follow_transformers_rule(lengths, T, seed):
    pad = 7
    rng = np.random.default_rng(seed)
    right = np.full((len(lengths), T), pad)
    left = np.full((len(lengths), T), pad)
    for b, n in enumerate(lengths):
        row = rng.integers(0, pad, n)
        right[b, :n], left[b, T - n:] = row, row
    assert np.array_equal(H.last_positions(right, pad), np.array(lengths) - 1)
    assert np.array_equal(H.last_positions(right, lengths=lengths), np.array(lengths) - 1)
    assert np.array_equal(H.last_positions(left, pad), np.full(len(lengths), T - 1))
    assert np.array_equal(H.last_positions(right), np.full(len(lengths), T - 1))


def test_lengths_out_of_range_are_refused():
    with pytest.raises(PicoGPTError, match="lengths"):
        H.last_positions(np.zeros((2, 4), np.int64), lengths=[0, 4])
    with pytest.raises(PicoGPTError, match="lengths"):
        H.last_positions(np.zeros((2, 4), np.int64), lengths=[5, 4])


# --- the backward of each op against finite differences ---------------------------------------

def normal(xp, seed, shape, scale=1.0):
    return xp.asarray(np.random.default_rng(seed).standard_normal(shape) * scale)


def assert_ok(result):
    assert result.ok and result.max_rel_error <= TOL, "\n" + result.report()


@given(B=st.integers(1, 4), T=st.integers(1, 6), C=st.integers(1, 5), seed=seeds)
def test_pool_last_backward(xp, B, T, C, seed):
    last = xp.asarray(np.random.default_rng(seed).integers(0, T, B))
    assert_ok(check_op(lambda h: H.pool_last_forward(h, last), H.pool_last_backward, [normal(xp, seed, (B, T, C))]))


@given(B=st.integers(1, 4), T=st.integers(1, 6), C=st.integers(1, 5), seed=seeds)
def test_pool_last_backward_is_zero_off_the_last_token(xp, B, T, C, seed):
    last = np.random.default_rng(seed).integers(0, T, B)
    _, cache = H.pool_last_forward(normal(xp, seed, (B, T, C)), xp.asarray(last))
    d = asnumpy(H.pool_last_backward(normal(xp, seed + 1, (B, C)) + 5.0, cache))
    picked = np.zeros((B, T), bool)
    picked[np.arange(B), last] = True
    assert np.all(d[~picked] == 0) and np.all(d[picked] != 0)


@given(B=st.integers(1, 4), C=st.integers(1, 5), K=st.integers(2, 5), seed=seeds)
def test_classifier_backward(xp, B, C, K, seed):
    assert_ok(check_op(H.classifier_forward, H.classifier_backward, [normal(xp, seed, (B, C)), normal(xp, seed + 1, (K, C))]))


@given(B=st.integers(1, 4), T=st.integers(1, 5), C=st.integers(1, 5), K=st.integers(2, 4),
       scale=st.sampled_from([0.1, 1.0, 5.0]), seed=seeds)
def test_head_and_loss_backward_together(xp, B, T, C, K, scale, seed):
    """Cross-entropy of the labels through the head and the pooling: the chain as training runs it."""
    rng = np.random.default_rng(seed)
    last, labels = xp.asarray(rng.integers(0, T, B)), xp.asarray(rng.integers(0, K, B))

    def loss(d):
        pooled, _ = H.pool_last_forward(d["hidden"], last)
        return L.cross_entropy_forward(H.classifier_forward(pooled, d["W"])[0], labels)[0]

    def analytic(d):
        pooled, c_pool = H.pool_last_forward(d["hidden"], last)
        logits, c_head = H.classifier_forward(pooled, d["W"])
        _, c_ce = L.cross_entropy_forward(logits, labels)
        dpooled, dW = H.classifier_backward(L.cross_entropy_backward(1.0, c_ce), c_head)
        return {"hidden": H.pool_last_backward(dpooled, c_pool), "W": dW}

    inputs = {"hidden": normal(xp, seed, (B, T, C), scale), "W": normal(xp, seed + 1, (K, C), scale)}
    assert_ok(check_gradients(loss, inputs, analytic))


def test_whole_classifier_gradcheck():
    """The full chain on a tiny random model in float64: a sample of every parameter's entries."""
    config = GPT2Config(n_layer=1, n_head=2, n_embd=8, n_ctx=8, vocab_size=11)
    params = init_params(config, np, np.float64, seed=1)
    params["score.weight"] = H.init_classifier(config, 3, seed=2, dtype=np.float64) * 10
    ids, lengths, labels = np.array([[1, 2, 3, 4, 0], [5, 6, 0, 0, 0]]), np.array([5, 2]), np.array([2, 0])
    loss = lambda p: H.classification_loss_and_grads(p, config, ids, labels, lengths=lengths)[0]  # noqa: E731
    grads = H.classification_loss_and_grads(params, config, ids, labels, lengths=lengths)[2]
    assert_ok(check_gradients(loss, params, grads, max_elements=6))


# --- initialisation and labels ----------------------------------------------------------------

def test_init_classifier_is_transformers_normal():
    config = GPT2Config(n_layer=1, n_head=4, n_embd=256, n_ctx=8, vocab_size=11)
    W = H.init_classifier(config, 40, seed=0)
    assert W.shape == (40, 256) and W.dtype == np.float32
    assert abs(W.std() - 0.02) < 0.001 and abs(W.mean()) < 0.001   # transformers: N(0, initializer_range)
    assert np.array_equal(W, H.init_classifier(config, 40, seed=0))
    assert not np.array_equal(W, H.init_classifier(config, 40, seed=1))
    with pytest.raises(PicoGPTError, match="at least 2 labels"):
        H.init_classifier(config, 1)


def test_label_fields_round_trip_and_read_transformers_config():
    fields = H.label_fields(["comedy", "history", "tragedy"], pad_token_id=127)
    assert H.labels_from_config(json.loads(json.dumps(fields))) == ["comedy", "history", "tragedy"]
    written_by_transformers = json.loads((FIXTURES / "tiny-gpt2-cls" / "config.json").read_text())
    assert {k: written_by_transformers[k] for k in fields} == fields
    assert H.labels_from_config({"id2label": {0: "a", 1: "b"}}) == ["a", "b"]
    assert H.labels_from_config({"n_embd": 8}) is None


@pytest.mark.parametrize("bad, message", [
    ({"id2label": {"0": "a", "2": "b"}}, "0, 1"),
    ({"id2label": {"x": "a"}}, "map label ids"),
    ({"id2label": {"0": "a", "1": "b"}, "label2id": {"a": 1, "b": 0}}, "does not agree"),
])
def test_bad_label_config_is_one_sentence(bad, message):
    with pytest.raises(PicoGPTError, match=message):
        H.labels_from_config(bad)


def test_duplicate_label_names_and_bad_labels_are_refused(ref):
    with pytest.raises(PicoGPTError, match="distinct"):
        H.label_fields(["a", "a"])
    config, params, _ = load_fixture("cpu", np.float32)
    with pytest.raises(PicoGPTError, match=r"in \[0, 3\)"):
        H.classification_loss_and_grads(params, config, ref["equal_ids"], [0, 1, 3])
