"""picogpt.eval: sliding windows score every token once; the loss is the plain mean cross-entropy;
the command prints loss and perplexity and refuses a bad stride."""

import math
import random
import re

import numpy as np
import pytest
from helpers import TINY, run_module
from hypothesis import given
from hypothesis import strategies as st

import picogpt
from picogpt.backend import PicoGPTError
from picogpt.config import GPT2Config
from picogpt.eval import evaluate_ids, windows


def direct_mean_ce(model, ids):
    """Mean next-token cross-entropy of ids (1-D, len <= n_ctx + 1) from one model.forward, in float64."""
    logits = picogpt.asnumpy(model.forward(np.asarray(ids[:-1])[None]))[0].astype(np.float64)
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return float(-logp[np.arange(len(ids) - 1), ids[1:]].mean())


@given(n=st.integers(0, 300), context=st.integers(1, 64), data=st.data())
def test_windows_score_every_token_once(n, context, data):
    stride = data.draw(st.integers(1, context), label="stride")
    wins = windows(n, context, stride)
    scored = []
    for i, (begin, end, first) in enumerate(wins):
        assert 0 <= begin < first < end <= n
        assert end - begin - 1 <= context                  # inputs fit the context
        scored += range(first, end)
        if i:                                               # history of at least context - stride tokens
            assert first - begin >= context - stride + 1
            assert begin == wins[i - 1][0] + stride
    assert scored == list(range(1, n))                     # tokens 1..n-1, each once, in order


@pytest.mark.parametrize("stride", [0, -1, 65])
def test_windows_refuse_a_stride_outside_1_to_context(stride):
    with pytest.raises(PicoGPTError, match="stride"):
        windows(100, 64, stride)


@pytest.fixture(scope="module")
def model():
    return picogpt.load_model(TINY, device="cpu")


def test_short_text_loss_is_the_mean_cross_entropy_of_one_forward(model):
    ids = np.random.default_rng(0).integers(0, 1000, 40)       # shorter than the context of 64
    loss, n, *_ = evaluate_ids(model, ids, context=64, stride=64)
    assert n == len(ids) - 1
    assert loss == pytest.approx(direct_mean_ce(model, ids), rel=1e-5)


def test_stride_equal_to_context_scores_disjoint_chunks(model):
    ids = np.random.default_rng(1).integers(0, 1000, 100)
    context = 16
    loss, n, *_ = evaluate_ids(model, ids, context=context, stride=context, batch_size=3)
    assert n == len(ids) - 1
    # chunk k: inputs ids[16k : 16k+16], targets ids[16k+1 : 16k+17]; each window scores all its targets
    total = 0.0
    for begin in range(0, len(ids) - 1, context):
        chunk = ids[begin:begin + context + 1]
        total += direct_mean_ce(model, chunk) * (len(chunk) - 1)
    assert loss == pytest.approx(total / n, rel=1e-5)


def test_overlapping_windows_score_each_token_once_with_more_history(model):
    ids = np.random.default_rng(2).integers(0, 1000, 90)
    loss, n, *_ = evaluate_ids(model, ids, context=20, stride=5, batch_size=4)
    assert n == len(ids) - 1
    # ... and the same number by brute force: every token t scored in the window the rule gives it
    total = 0.0
    for begin, end, first in windows(len(ids), 20, 5):
        logits = picogpt.asnumpy(model.forward(ids[begin:end - 1][None]))[0].astype(np.float64)
        z = logits - logits.max(-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
        for t in range(first, end):
            total -= logp[t - begin - 1, ids[t]]
    assert loss == pytest.approx(total / n, rel=1e-5)


def test_batch_size_does_not_change_the_loss(model):
    ids = np.random.default_rng(3).integers(0, 1000, 150)
    a, *_ = evaluate_ids(model, ids, context=32, stride=8, batch_size=1)
    b, *_ = evaluate_ids(model, ids, context=32, stride=8, batch_size=16)
    assert a == pytest.approx(b, rel=1e-6)


@pytest.mark.parametrize("stride", [0, -1, 17])
def test_evaluate_ids_refuses_a_bad_stride(model, stride):
    with pytest.raises(PicoGPTError, match="stride"):
        evaluate_ids(model, np.arange(50), context=16, stride=stride)


def test_fewer_than_two_tokens_is_an_error(model):
    with pytest.raises(PicoGPTError):
        evaluate_ids(model, [5])


# --- the command line -----------------------------------------------------------------------

def cli(*args):
    return run_module("picogpt.eval", *args)


@pytest.fixture(scope="module")
def full_vocab(tmp_path_factory):
    """A tiny model with GPT-2's vocabulary (the text goes through the tokenizer), and a text."""
    d = tmp_path_factory.mktemp("eval")
    picogpt.save_model(picogpt.init_model(GPT2Config(n_layer=2, n_head=2, n_embd=32, n_ctx=32), seed=0), d / "m")
    r = random.Random(0)
    words = "now is the winter of our discontent made glorious summer by this sun of york".split()
    (d / "t.txt").write_text("\n".join(" ".join(r.choice(words) for _ in range(10)) for _ in range(12)))
    return d / "m", d / "t.txt"


def test_cli_prints_loss_and_perplexity(full_vocab):
    mdir, text = full_vocab
    r = cli("--model", mdir, "--text", text, "--stride", 8, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    m = re.search(r"loss ([0-9.]+) nats/token, perplexity ([0-9.]+)", r.stdout)
    assert m, r.stdout
    loss, ppl = float(m.group(1)), float(m.group(2))
    assert ppl == pytest.approx(math.exp(loss), rel=1e-3)
    ids = picogpt.get_tokenizer().encode(text.read_text())
    expected, n, *_ = evaluate_ids(picogpt.load_model(mdir), ids, context=32, stride=8)
    assert loss == pytest.approx(expected, abs=1e-4)
    assert f"{n:,} tokens scored" in r.stdout
    assert "Traceback" not in r.stderr


def test_cli_tail_scores_the_validation_split(full_vocab):
    mdir, text = full_vocab
    r = cli("--model", mdir, "--text", text, "--tail", 0.5)
    assert r.returncode == 0, r.stderr
    assert "the last 0.5" in r.stdout and "perplexity" in r.stdout


@pytest.mark.parametrize("args", [["--stride", 0], ["--stride", -3], ["--stride", 33], ["--context", 1],
                                  ["--batch-size", 0]])
def test_cli_bad_window_settings_exit_2(full_vocab, args):
    mdir, text = full_vocab
    r = cli("--model", mdir, "--text", text, *args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.strip().splitlines()[-1].startswith("error:")
    assert "Traceback" not in r.stderr


def test_cli_missing_text_and_unknown_model(full_vocab, tmp_path):
    mdir, text = full_vocab
    for args in (["--model", mdir, "--text", tmp_path / "nothing.txt"], ["--model", "gpt7", "--text", text]):
        r = cli(*args)
        assert r.returncode == 2, (r.stdout, r.stderr)
        assert r.stderr.strip().startswith("error:") and "Traceback" not in r.stderr
