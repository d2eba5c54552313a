"""picogpt.score: log-likelihoods equal transformers' (committed fixture), choice accuracy and
LAMBADA equal a brute-force loop over model.forward, and on a model whose answers are forced,
equal the numbers worked out by hand."""

import functools
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

import picogpt
import picogpt.score as S
from picogpt.config import GPT2Config
from picogpt.errors import PicoGPTError
from picogpt.model import GPT2, init_params
from picogpt.score import choice_accuracy, choice_item, encode_pair, lambada, lambada_split, score

FIXTURES = Path(__file__).parent / "fixtures"
REF = json.loads((FIXTURES / "score.json").read_text())
THE = 262   # GPT-2's token " the"


@pytest.fixture(scope="module")
def tok():
    return picogpt.get_tokenizer()


@pytest.fixture(scope="module")
def tiny():
    sha = hashlib.sha256((FIXTURES / "tiny-gpt2" / "model.safetensors").read_bytes()).hexdigest()
    assert sha == REF["model_sha256"], "tiny-gpt2 changed: rerun tests/fixtures/make_score.py"
    return picogpt.load_model(FIXTURES / "tiny-gpt2")


@pytest.fixture(scope="module")
def bpe_model():
    """A random 1-layer GPT-2 with GPT-2's vocabulary (so real text can be scored), with a wide
    token embedding so that its log-probabilities are far from uniform (no near-ties)."""
    config = GPT2Config(n_layer=1, n_head=2, n_embd=16, n_ctx=48, vocab_size=50257)
    params = init_params(config, np, np.float32, seed=1)
    params["wte.weight"] *= 40
    return GPT2(config, params)


def log_softmax64(logits):
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def brute_force(model, ctx, cont):
    """(sum log p, greedy) of one pair, by one model.forward of the whole window, in float64."""
    inp = (ctx + cont)[-(model.config.n_ctx + 1):][:-1]
    logits = picogpt.asnumpy(model.forward(np.array([inp])))[0, len(inp) - len(cont):]
    logp = log_softmax64(logits)[np.arange(len(cont)), cont]
    return float(logp.sum()), bool((logits.argmax(-1) == np.array(cont)).all())


# --- equal to transformers ---------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 4, 16])
def test_score_equals_transformers_log_probabilities(tiny, batch_size):
    pairs = REF["pairs"]
    s = score(tiny, [p["context"] for p in pairs], [p["continuation"] for p in pairs], batch_size=batch_size)
    assert np.abs(s.logprob - [p["logprob"] for p in pairs]).max() <= 1e-4
    assert s.greedy.tolist() == [p["greedy"] for p in pairs]
    assert s.tokens.tolist() == [len(p["continuation"]) for p in pairs]


def test_fixture_covers_truncation_full_window_and_greedy():
    n_ctx = REF["n_ctx"]
    assert any(len(p["context"]) + len(p["continuation"]) > n_ctx + 1 for p in REF["pairs"])
    assert any(len(p["continuation"]) == n_ctx for p in REF["pairs"])
    assert any(p["greedy"] for p in REF["pairs"]) and not all(p["greedy"] for p in REF["pairs"])


@pytest.mark.gpu
def test_score_on_the_gpu_equals_transformers():
    model = picogpt.load_model(FIXTURES / "tiny-gpt2", device="gpu")
    pairs = REF["pairs"]
    s = score(model, [p["context"] for p in pairs], [p["continuation"] for p in pairs], batch_size=5)
    assert isinstance(s.logprob, np.ndarray)
    assert np.abs(s.logprob - [p["logprob"] for p in pairs]).max() <= 1e-4
    assert s.greedy.tolist() == [p["greedy"] for p in pairs]


def test_progress_is_reported_per_batch(tiny):
    calls = []
    pairs = REF["pairs"][:7]
    score(tiny, [p["context"] for p in pairs], [p["continuation"] for p in pairs], batch_size=3,
          progress=lambda done, total: calls.append((done, total)))
    assert calls == [(3, 7), (6, 7), (7, 7)]


# --- the context/continuation boundary ----------------------------------------------------------


def test_encode_pair_moves_trailing_spaces_into_the_continuation(tok):
    ctx, cont = encode_pair(tok, "The capital of France is ", "Paris")
    assert ctx == tok.encode("The capital of France is")
    assert cont == tok.encode(" Paris")
    assert ctx + cont == tok.encode("The capital of France is Paris")


def test_encode_pair_takes_the_continuation_from_the_whole_encoding(tok):
    for context, continuation in [("Hello", " world"), ("an apple", "s and pears"), ("x =", " 3.14"), ("naï", "ve")]:
        ctx, cont = encode_pair(tok, context, continuation)
        whole = tok.encode(context + continuation)
        assert ctx == tok.encode(context) and cont == whole[len(ctx):]
    # Where BPE merges across the boundary the harness's split is not exact: " apples" is one
    # token, so the context's " apple" is followed by the tokens of "s" shifted by one. picogpt
    # reproduces the harness here rather than correcting it.
    assert tok.encode("an apple") + encode_pair(tok, "an apple", "s and pears")[1] != tok.encode("an apples and pears")


def test_an_empty_context_becomes_end_of_text(tok):
    assert encode_pair(tok, "", " hello") == ([tok.eot_token], tok.encode(" hello"))


def test_text_pairs_score_as_their_tokens(bpe_model, tok):
    contexts, conts = ["The cat sat on the", "", "Once upon a time "], [" mat", "Hello", "there"]
    by_text = score(bpe_model, contexts, conts, tok=tok)
    ids = [encode_pair(tok, c, x) for c, x in zip(contexts, conts)]
    by_ids = score(bpe_model, [c for c, _ in ids], [x for _, x in ids])
    assert np.array_equal(by_text.logprob, by_ids.logprob)


# --- choice accuracy and LAMBADA against a brute-force loop ----------------------------------------

RECORDS = [
    {"ctx": "A man is sitting on a roof. He", "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                                                          "is holding a rubik's cube.", "starts pulling up roofing on a roof."], "label": 3},
    {"ctx_a": "A woman is outside with a bucket and a dog.", "ctx_b": "the dog", "activity_label": "Bathing dog",
     "endings": ["is running around trying to avoid a bath.", "gets into a bath tub [title] rinse.", "jumps.", "eats."], "label": "0"},
    {"ctx": "Then", "endings": ["the end.", "a very long ending " * 9 + "here."], "label": 1},
]


def test_choice_accuracy_equals_a_brute_force_loop(bpe_model, tok):
    got = choice_accuracy(bpe_model, tok, RECORDS, batch_size=3)
    pred, pred_norm, labels = [], [], []
    for i, r in enumerate(RECORDS):
        ctx, endings, label = choice_item(r, i)
        lls = np.array([brute_force(bpe_model, *encode_pair(tok, ctx, " " + e))[0] for e in endings])
        pred.append(int(lls.argmax()))
        pred_norm.append(int((lls / [len(e) for e in endings]).argmax()))
        labels.append(label)
    assert got["pred"] == pred and got["pred_norm"] == pred_norm and got["n"] == 3
    assert got["acc"] == np.mean(np.array(pred) == labels)
    assert got["acc_norm"] == np.mean(np.array(pred_norm) == labels)


def test_hellaswag_records_are_built_as_the_harness_builds_them():
    ctx, endings, label = choice_item(RECORDS[1], 1)
    assert ctx == "Bathing dog: A woman is outside with a bucket and a dog. The dog"
    assert endings[1] == "gets into a bath tub. rinse." and label == 0


LINES = ["The children ran to the door to greet their father", "She opened the box and found the",
         "word", "", "A long passage " + "with many words " * 30 + "ending"]


def test_lambada_equals_a_brute_force_loop(bpe_model, tok):
    got = lambada(bpe_model, tok, LINES, batch_size=2)
    lps, hits = [], []
    for line in filter(None, LINES):
        lp, hit = brute_force(bpe_model, *encode_pair(tok, *lambada_split(line)))
        lps.append(lp)
        hits.append(hit)
    assert got["n"] == 4
    assert got["acc"] == np.mean(hits)
    assert got["ppl"] == pytest.approx(math.exp(-np.mean(lps)), rel=1e-5)


def test_lambada_split_keeps_the_space_with_the_last_word():
    assert lambada_split("he said hello") == ("he said", " hello")
    assert lambada_split("alone") == ("", " alone")


# --- a model whose answers are forced -------------------------------------------------------------


@pytest.fixture(scope="module")
def the_model():
    """Predicts the same distribution at every position, peaked on " the": with ln_f's gain 0
    its output is its bias b, so logits = b @ wte^T whatever the input."""
    config = GPT2Config(n_layer=1, n_head=2, n_embd=16, n_ctx=32, vocab_size=50257)
    params = init_params(config, np, np.float32, seed=2)
    e0 = np.eye(16, dtype=np.float32)[0]
    params["wte.weight"][THE] = 3 * e0
    params["ln_f.weight"][:] = 0
    params["ln_f.bias"][:] = 4 * e0
    logp = log_softmax64(params["ln_f.bias"].astype(np.float64) @ params["wte.weight"].T.astype(np.float64))
    assert logp.argmax() == THE
    return GPT2(config, params), logp


def test_lambada_on_a_model_that_always_says_the(the_model, tok):
    model, logp = the_model
    lines = ["I saw the", "He went to the park", "Give it to the", "Where is the cat"]
    got = lambada(model, tok, lines)
    words = [tok.encode(lambada_split(line)[1]) for line in lines]
    assert got["acc"] == 0.5                          # " the" twice, " park" and " cat" never
    assert got["ppl"] == pytest.approx(math.exp(-np.mean([logp[w].sum() for w in words])), rel=1e-5)
    assert got["tokens"] == sum(len(w) for w in words)


def test_choice_on_a_model_that_always_says_the(the_model, tok):
    model, logp = the_model
    record = {"ctx": "Pick one:", "endings": ["dog", "the the", "the"], "label": 2}
    got = choice_accuracy(model, tok, [record, dict(record, label=1)])
    lls = np.array([logp[tok.encode(" " + e)].sum() for e in record["endings"]])
    # By hand: " the" alone is likeliest, but per character " the the" (2 x log p(the) over 7
    # characters) beats it (log p(the) over 3): acc and acc_norm pick different endings.
    assert lls.argmax() == 2 and (lls / [3, 7, 3]).argmax() == 1
    assert got["pred"] == [2, 2] and got["pred_norm"] == [1, 1]
    assert got["acc"] == 0.5 and got["acc_norm"] == 0.5


# --- bad inputs: one sentence ---------------------------------------------------------------------


@pytest.mark.parametrize("call", [
    lambda m, t: score(m, [[1, 2]], [[3], [4]]),
    lambda m, t: score(m, [[1, 2]], [[]]),
    lambda m, t: score(m, [[]], [[3]]),
    lambda m, t: score(m, [[1, 2]], [[5000]]),
    lambda m, t: score(m, [[1]], [list(range(65))]),
    lambda m, t: score(m, ["text"], ["more"]),
    lambda m, t: score(m, [[1]], [[2]], batch_size=0),
    lambda m, t: choice_accuracy(m, t, [{"ctx": "a", "endings": ["b", "c"]}]),
    lambda m, t: choice_accuracy(m, t, [{"ctx": "a", "endings": ["b", "c"], "label": 2}]),
    lambda m, t: choice_accuracy(m, t, [{"ctx": "a", "endings": "bc", "label": 0}]),
    lambda m, t: choice_accuracy(m, t, []),
    lambda m, t: lambada(m, t, ["", "  "]),
])
def test_bad_inputs_get_one_sentence(tiny, tok, call):
    with pytest.raises(PicoGPTError) as e:
        call(tiny, tok)
    message = str(e.value)
    assert message.endswith(".") and "\n" not in message, message


def test_the_lm_head_in_chunks_gives_the_same_scores(tiny, monkeypatch):
    pairs = REF["pairs"]
    args = [p["context"] for p in pairs], [p["continuation"] for p in pairs]
    whole = score(tiny, *args)
    monkeypatch.setattr(S, "_score_positions", functools.partial(S._score_positions, chunk=3))
    chunked = S.score(tiny, *args)
    assert np.allclose(chunked.logprob, whole.logprob, rtol=0, atol=1e-5)
    assert np.array_equal(chunked.greedy, whole.greedy)
