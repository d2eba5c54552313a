"""Sampling (greedy, temperature, top-k, top-p, seeds) and the generation loop's rules
(stop at <|endoftext|>, padding of finished rows, the context rule, ragged prompts)."""

import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import picogpt
from picogpt.backend import PicoGPTError
from picogpt.config import GPT2Config
from picogpt.generate import fit_context, generate
from picogpt.sampling import check_sampling_args, sample, softmax, top_k_filter, top_p_filter

EOT = 50256


def distinct_logits(min_size=2, max_size=40):
    """Rows of distinct logits (at least 0.01 apart), so 'the k largest' has one answer."""
    return st.lists(st.integers(-800, 800), min_size=min_size, max_size=max_size, unique=True).map(
        lambda v: np.array(v, dtype=np.float64)[None] / 100)


def probs_of(logits):
    z = logits - logits.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


# --- sampling ------------------------------------------------------------------------------

@given(B=st.integers(1, 4), V=st.integers(1, 50), seed=st.integers(0, 2**32 - 1))
def test_greedy_is_argmax(B, V, seed):
    logits = np.random.default_rng(seed).standard_normal((B, V)) * 3
    np.testing.assert_array_equal(sample(logits, 0.0), logits.argmax(-1))


@given(logits=distinct_logits(), data=st.data())
def test_top_k_keeps_exactly_the_k_largest(logits, data):
    V = logits.shape[1]
    k = data.draw(st.integers(1, V + 2), label="k")
    kept = np.flatnonzero(np.isfinite(top_k_filter(logits, k))[0])
    expected = np.argsort(-logits[0])[:min(k, V)]
    assert sorted(kept) == sorted(expected)
    np.testing.assert_array_equal(top_k_filter(logits, k)[0, kept], logits[0, kept])   # kept values untouched


def test_top_k_keeps_ties_with_the_kth():
    kept = np.isfinite(top_k_filter(np.array([[3.0, 1.0, 2.0, 2.0, 0.0]]), 2))[0]
    assert kept.tolist() == [True, False, True, True, False]


@given(logits=distinct_logits(max_size=60), p=st.floats(0.01, 1.0))
def test_top_p_keeps_the_smallest_nucleus(logits, p):
    probs = probs_of(logits)[0]
    order = np.sort(probs)[::-1]
    assume(np.all(np.abs(np.cumsum(order) - p) > 1e-9))          # no exact boundary cases
    kept = np.isfinite(top_p_filter(logits, p))[0]
    mass = probs[kept].sum()
    assert kept.any()
    assert mass >= p                                              # enough probability ...
    assert mass - probs[kept].min() < p                           # ... and not one token more
    assert probs[kept].min() > probs[~kept].max(initial=-1.0)     # the most likely ones


def test_top_p_always_keeps_the_most_likely_token():
    logits = np.array([[5.0, 0.0, 0.0]])
    assert np.isfinite(top_p_filter(logits, 1e-6))[0].tolist() == [True, False, False]
    assert np.isfinite(top_p_filter(logits, 1.0)).all()


@given(B=st.integers(1, 3), V=st.integers(2, 30), k=st.integers(1, 5), p=st.floats(0.01, 1.0),
       seed=st.integers(0, 2**32 - 1))
def test_temperature_zero_ignores_top_k_and_top_p(B, V, k, p, seed):
    logits = np.random.default_rng(seed).standard_normal((B, V))
    np.testing.assert_array_equal(sample(logits, 0.0, top_k=k, top_p=p), logits.argmax(-1))


def test_a_seed_reproduces_samples():
    logits = np.random.default_rng(0).standard_normal((8, 100))
    a = sample(logits, 1.0, 20, 0.9, np.random.default_rng(42))
    b = sample(logits, 1.0, 20, 0.9, np.random.default_rng(42))
    c = sample(logits, 1.0, 20, 0.9, np.random.default_rng(43))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def chi_square(counts, probs):
    expected = counts.sum() * probs
    nz = expected > 0
    assert counts[~nz].sum() == 0, "a token of probability 0 was drawn"
    return float(((counts[nz] - expected[nz]) ** 2 / expected[nz]).sum()), int(nz.sum()) - 1


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, None, None), (0.5, None, None), (2.0, None, None),
                                                       (1.0, 3, None), (1.0, None, 0.7), (1.5, 4, 0.9)])
def test_sample_frequencies_match_the_filtered_softmax(temperature, top_k, top_p):
    """20,000 draws (one call, 20,000 identical rows, a fixed seed) against the probabilities
    the filters promise; the chi-square bound is the 99.99th percentile, so only a wrong
    sampler fails."""
    logits = np.array([[2.0, 1.0, 0.5, 0.0, -0.5, -1.0]])
    z = logits / temperature
    if top_k:
        z = np.where(z < np.sort(z)[0, -top_k], -np.inf, z)
    if top_p:
        p = probs_of(z)[0]
        order = np.argsort(-p)
        n_keep = int(((np.cumsum(p[order]) - p[order]) < top_p).sum())
        drop = order[n_keep:]
        z[0, drop] = -np.inf
    probs = probs_of(z)[0]
    N = 20000
    ids = sample(np.repeat(logits, N, axis=0), temperature, top_k, top_p, np.random.default_rng(0))
    counts = np.bincount(ids, minlength=6)
    stat, dof = chi_square(counts, probs)
    limit = {5: 25.7, 4: 23.5, 3: 21.1, 2: 18.4, 1: 15.1}[dof]
    assert stat < limit, (counts, counts.sum() * probs)


class _TopOfTheRange:
    """A stand-in rng whose draws are as close to 1 as float64 gets (they round to 1 in float32)."""

    def random(self, n):
        return np.full(n, 1.0 - 2.0 ** -53)


def test_a_draw_at_the_top_of_the_range_never_picks_a_filtered_token():
    logits = np.array([[3.0, 2.0, 1.0, -1.0, -2.0]], dtype=np.float32)
    for kw in ({"top_k": 2}, {"top_p": 0.5}, {"top_k": 3, "top_p": 0.99}):
        kept = np.isfinite(top_p_filter(top_k_filter(logits, kw.get("top_k", 5)), kw.get("top_p", 1.0)))[0]
        token = int(sample(logits, temperature=1.0, rng=_TopOfTheRange(), **kw)[0])
        assert kept[token], (kw, token)


def test_softmax_rows_sum_to_one_and_survive_large_logits():
    p = softmax(np.array([[1000.0, 999.0, -1000.0], [0.0, 0.0, 0.0]]))
    np.testing.assert_allclose(p.sum(-1), 1.0)
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p[1], 1 / 3)


@pytest.mark.parametrize("kw, needle", [
    (dict(temperature=-0.1), "temperature"), (dict(temperature=float("nan")), "temperature"),
    (dict(temperature=None), "temperature"), (dict(top_k=0), "top-k"), (dict(top_k=-1), "top-k"),
    (dict(top_k=2.5), "top-k"), (dict(top_p=0.0), "top-p"), (dict(top_p=1.5), "top-p"), (dict(top_p=-0.2), "top-p"),
])
def test_check_sampling_args_errors(kw, needle):
    with pytest.raises(PicoGPTError, match=needle):
        check_sampling_args(**kw)


def test_check_sampling_args_accepts_the_edges():
    check_sampling_args(0.0, None, None)
    check_sampling_args(1.0, 1, 1.0)
    check_sampling_args(0.7, 50257, 1e-6)


# --- generation ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model():
    """A tiny random model with GPT-2's vocabulary; its logits are nearly flat."""
    return picogpt.init_model(GPT2Config(n_layer=1, n_head=2, n_embd=16, n_ctx=32, vocab_size=50257), seed=0)


def eot_model(model, eot_logit):
    """A copy whose logits are eot_logit for <|endoftext|> and 0 for every other token, whatever
    the input: ln_f's gain is 0, so its output is its bias e_0, and logits = wte[:, 0]."""
    params = {k: a.copy() for k, a in model.params.items()}
    params["ln_f.weight"][:] = 0.0
    params["ln_f.bias"][:] = 0.0
    params["ln_f.bias"][0] = 1.0
    params["wte.weight"][:, 0] = 0.0
    params["wte.weight"][EOT, 0] = eot_logit
    return picogpt.GPT2(model.config, params)


def test_greedy_generation_takes_the_argmax_each_step(model):
    prompt = np.array([[464, 3290, 318], [40, 1101, 257]])
    out = model.generate(prompt, max_new_tokens=6, temperature=0.0)
    assert out.shape == (2, 9)
    np.testing.assert_array_equal(out[:, :3], prompt)
    for t in range(3, 9):
        np.testing.assert_array_equal(out[:, t], picogpt.asnumpy(model.forward(out[:, :t]))[:, -1].argmax(-1))


def test_greedy_stops_at_end_of_text(model):
    m = eot_model(model, 100.0)
    out = m.generate([1, 2, 3], max_new_tokens=10, temperature=0.0)
    assert out.tolist() == [1, 2, 3, EOT]                                 # stopped after the first token
    out = m.generate([1, 2, 3], max_new_tokens=4, temperature=0.0, stop_at_eot=False)
    assert out.tolist() == [1, 2, 3] + [EOT] * 4


def test_finished_rows_are_padded_with_end_of_text(model):
    """P(<|endoftext|>) = 0.3 per step: rows end at different steps; those done early are padded."""
    m = eot_model(model, math.log(0.3 / 0.7 * 50256))
    prompt = np.tile(np.arange(1, 4), (6, 1))
    for seed in range(20):
        out = m.generate(prompt, max_new_tokens=12, temperature=1.0, seed=seed)
        new = out[:, 3:]
        ended = [list(r).index(EOT) if EOT in r else None for r in new.tolist()]
        if None not in ended and len(set(ended)) > 2 and max(ended) > 0:
            break
    else:
        pytest.fail("no seed made the rows end at different steps")
    assert new.shape[1] == max(ended) + 1                                  # the loop ends when every row has
    for row, e in zip(new, ended):
        assert (row[e:] == EOT).all() and (row[:e] != EOT).all()
    # the same prompts as a ragged list: each row up to and including its <|endoftext|>
    ragged = m.generate([list(p) for p in prompt] + [[5]], max_new_tokens=12, temperature=1.0, seed=seed)
    assert isinstance(ragged, list)
    for r in ragged:
        assert r.count(EOT) <= 1 and (EOT not in r or r[-1] == EOT)


def test_on_token_streams_each_step(model):
    seen = []
    out = generate(model, [[1, 2], [3, 4]], max_new_tokens=4, on_token=lambda s, t: seen.append((s, t.copy())))
    assert [s for s, _ in seen] == [0, 1, 2, 3]
    np.testing.assert_array_equal(np.stack([t for _, t in seen], 1), out[:, 2:])


def test_overflow_is_an_error_by_default_with_a_clear_message(model):
    prompt = list(range(100, 130))                                         # 30 tokens, context 32
    with pytest.raises(PicoGPTError, match="context of 32") as e:
        model.generate(prompt, max_new_tokens=5)
    assert "30 tokens" in str(e.value) and "truncate" in str(e.value)
    model.generate(prompt, max_new_tokens=2)                                # exactly fits
    with pytest.raises(PicoGPTError, match="no room"):
        model.generate([1], max_new_tokens=32)


def test_overflow_truncate_keeps_the_last_tokens(model):
    prompt = list(range(100, 130))
    out = model.generate(prompt, max_new_tokens=5, overflow="truncate")
    assert len(out) == 32
    assert out[:27].tolist() == prompt[-27:]
    assert fit_context([prompt, [1, 2]], 5, 32, "truncate") == [prompt[-27:], [1, 2]]
    with pytest.raises(PicoGPTError, match="overflow"):
        model.generate(prompt, max_new_tokens=5, overflow="wrap")


def test_zero_new_tokens_returns_the_prompt(model):
    assert model.generate([5, 6, 7], max_new_tokens=0).tolist() == [5, 6, 7]
    np.testing.assert_array_equal(model.generate(np.array([[5, 6], [7, 8]]), max_new_tokens=0), [[5, 6], [7, 8]])
    assert model.generate([[5, 6, 7], [8]], max_new_tokens=0) == [[5, 6, 7], [8]]


def test_output_shapes_follow_the_input(model):
    assert model.generate(np.array([1, 2, 3]), max_new_tokens=2).shape == (5,)
    assert model.generate(np.array([[1, 2, 3]]), max_new_tokens=2).shape == (1, 5)
    assert model.generate([[1, 2], [3, 4]], max_new_tokens=2).shape == (2, 4)          # equal lengths: an array
    ragged = model.generate([[1, 2, 3], [4]], max_new_tokens=2)
    assert isinstance(ragged, list) and [len(r) for r in ragged] == [5, 3]
    assert ragged[0][:3] == [1, 2, 3] and ragged[1][:1] == [4]


def test_a_seed_reproduces_generation(model):
    kw = dict(max_new_tokens=8, temperature=1.0, top_k=1000)
    a = model.generate([[1, 2, 3], [4, 5]], seed=7, **kw)
    b = model.generate([[1, 2, 3], [4, 5]], seed=7, **kw)
    c = model.generate([[1, 2, 3], [4, 5]], seed=8, **kw)
    assert a == b and a != c


def test_top_k_one_samples_the_greedy_continuation(model):
    greedy = model.generate([9, 8, 7], max_new_tokens=6, temperature=0.0)
    np.testing.assert_array_equal(model.generate([9, 8, 7], max_new_tokens=6, temperature=1.3, top_k=1, seed=0), greedy)
    np.testing.assert_array_equal(model.generate([9, 8, 7], max_new_tokens=6, temperature=0.0, top_k=3, top_p=0.5), greedy)


@pytest.mark.parametrize("kw, needle", [
    (dict(ids=[]), "empty"), (dict(ids=[[1, 2], []]), "empty"), (dict(ids=[1, 50257]), "50257"),
    (dict(ids=[1, -1]), "-1"), (dict(ids=[1], max_new_tokens=-1), "new tokens"),
    (dict(ids=[1], max_new_tokens=1.5), "new tokens"), (dict(ids=[1], temperature=-1), "temperature"),
    (dict(ids=[1], top_p=0), "top-p"), (dict(ids=[1], top_k=0), "top-k"),
])
def test_generate_rejects_bad_input(model, kw, needle):
    with pytest.raises(PicoGPTError, match=needle):
        generate(model, **{"max_new_tokens": 2, **kw})
