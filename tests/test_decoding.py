"""Decoding options (repetition penalty, n-gram blocking, min_new_tokens, beam search, stop
strings, the sliding window) equal transformers' `generate` token for token (committed fixture
from tests/fixtures/make_decoding.py), on both devices; bad options are one sentence."""

import hashlib
import json
import subprocess

import numpy as np
import pytest

import picogpt
import picogpt.generate as generate_command
from helpers import FIXTURES, TINY, assert_clean_error, run_module
from picogpt.errors import PicoGPTError
from picogpt.generation import cut_at_stop, generate
from picogpt.sampling import Rules, apply_rules, banned_ngram_tokens, penalise_repeats, softmax, warp

REF = json.loads((FIXTURES / "decoding.json").read_text())
CASES = {c["name"]: c for c in REF["cases"]}
SAMPLED = {c["name"]: c for c in REF["sampled"]}


@pytest.fixture(scope="module")
def models():
    sha = hashlib.sha256((TINY / "model.safetensors").read_bytes()).hexdigest()
    assert sha == REF["model_sha256"], "tiny-gpt2 changed: rerun tests/fixtures/make_decoding.py"
    cache = {}

    def on(device):
        if device not in cache:
            cache[device] = picogpt.load_model(TINY, device=device)
        return cache[device]
    return on


def options(opts):
    """The fixture's options -> generate keywords (its `eos` is the end-of-text token)."""
    kw = {k: v for k, v in opts.items() if k != "eos"}
    kw["eot_token"] = opts.get("eos")
    return kw


def new_tokens(out, prompts, per_prompt):
    rows = [p for p in prompts for _ in range(per_prompt)]
    return [row[len(p):] for row, p in zip(out, rows)]


@pytest.mark.parametrize("name", list(CASES))
def test_equals_transformers(models, device, name):
    """Every option alone and combined, three prompts of different lengths in one batch."""
    case = CASES[name]
    opts = options(case["options"])
    out = generate(models(device), case["prompts"], case["max_new_tokens"], **opts)
    assert new_tokens(out, case["prompts"], opts.get("num_return_sequences", 1)) == case["new"]


def test_fixture_exercises_the_options():
    """The fixture is not vacuous: each rule changes greedy's tokens, and ends happen."""
    greedy = CASES["greedy"]["new"]
    for name in ("repetition_penalty", "repetition_penalty_below_1", "no_repeat_ngram_2", "no_repeat_ngram_3", "beam4"):
        assert CASES[name]["new"] != greedy, name
    assert any(len(r) < 30 for r in CASES["greedy_eos"]["new"])
    assert CASES["min_new_tokens"]["new"] != CASES["greedy_eos"]["new"]
    eos_beams = [len(r) for r in CASES["beam4_eos_return4"]["new"]]
    assert min(eos_beams) < 30 and len(set(eos_beams)) > 1
    default = CASES["beam4_eos_return4"]["new"]        # 4 beams per prompt, early_stopping False, length_penalty 1
    best_two = [row for i, row in enumerate(default) if i % 4 < 2]
    for name in ("beam4_eos_early_true", "beam4_eos_lp0", "beam4_eos_lp_neg"):
        assert CASES[name]["new"] != best_two, name
    assert CASES["beam4_eos_early_never"]["new"] != CASES["beam4_eos_early_true"]["new"]
    assert CASES["beam4_eos_lp2_never"]["new"] != default[::4]


@pytest.mark.parametrize("name", list(SAMPLED))
def test_sampling_distribution_equals_transformers(models, device, name):
    """Sampled with a seed, transformers' tokens cannot be ours (torch's random numbers are not
    NumPy's); the distribution each token is drawn from, given the same prefix, is the same."""
    case = SAMPLED[name]
    opts, model = case["options"], models(device)
    with np.load(FIXTURES / "decoding_sampled.npz") as npz:
        want = npz[name]
    rules = Rules(opts.get("repetition_penalty", 1.0), opts.get("no_repeat_ngram_size", 0))
    for t in range(len(case["new"])):
        prefix = case["prompt"] + case["new"][:t]
        logits = model.forward([prefix])[:, -1]
        seen = model.xp.zeros(logits.shape, dtype=bool)
        seen[0, model.xp.asarray(prefix)] = True
        z = apply_rules(logits, t, rules, seen, [prefix])
        probs = picogpt.asnumpy(softmax(warp(z, opts["temperature"], opts.get("top_k"), opts.get("top_p"))))[0]
        np.testing.assert_array_equal(probs > 0, want[t] > 0, err_msg=f"step {t}: a different set of tokens kept")
        np.testing.assert_allclose(probs, want[t], atol=2e-6, err_msg=f"step {t}")
        assert probs[case["new"][t]] > 0


def test_sampling_with_rules_is_reproducible(models):
    model, case = models("cpu"), SAMPLED["penalty_top_k_top_p_ngram"]
    kw = dict(temperature=1.3, top_k=40, top_p=0.9, repetition_penalty=1.5, no_repeat_ngram_size=2, seed=3)
    a = generate(model, case["prompt"], 30, **kw)
    np.testing.assert_array_equal(a, generate(model, case["prompt"], 30, **kw))
    new = a[len(case["prompt"]):].tolist()
    assert all(len(banned_ngram_tokens(new[:i], 2) & {new[i]}) == 0 for i in range(len(new))), "a bigram repeats"


def test_num_return_sequences_with_sampling(models):
    out = generate(models("cpu"), [[1, 2, 3], [4, 5]], 6, temperature=1.0, seed=0, num_return_sequences=3)
    assert len(out) == 6 and [len(r) for r in out] == [9, 9, 9, 8, 8, 8]
    assert out[0][:3] == [1, 2, 3] and out[3][:2] == [4, 5]


# --- the rules, one by one ----------------------------------------------------------------------

def test_repetition_penalty_formula(xp):
    logits = xp.asarray(np.array([[2.0, -2.0, 0.5, -0.5, 0.0]], dtype=np.float32))
    seen = xp.asarray(np.array([[True, True, False, False, True]]))
    out = picogpt.asnumpy(penalise_repeats(logits, seen, 2.0))
    np.testing.assert_array_equal(out, [[1.0, -4.0, 0.5, -0.5, 0.0]])


def test_banned_ngrams_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(200):
        row = rng.integers(0, 4, rng.integers(0, 12)).tolist()
        n = int(rng.integers(1, 4))
        brute = {t for t in range(4) if len(row) + 1 >= n and
                 any((row + [t])[-n:] == row[i:i + n] for i in range(len(row) - n + 1))}
        assert banned_ngram_tokens(row, n) == brute, (row, n)


# --- stop strings -------------------------------------------------------------------------------

def test_stop_string_ends_the_row(models, device):
    """The row stops at the token completing the stop string; its text ends before it."""
    tok, model = picogpt.get_tokenizer(), models(device)
    prompts = CASES["greedy"]["prompts"]
    free = generate(model, prompts, 30, eot_token=None)
    texts = [tok.decode(row[len(p):]) for row, p in zip(free, prompts)]
    stop = texts[1][8:11]      # text from the middle of the second row's continuation
    out = generate(model, prompts, 30, eot_token=None, stop=[stop, "\x00never"])
    for row, p, text in zip(out, prompts, texts):
        new = row[len(p):]
        if stop in text:
            assert stop in tok.decode(new) and stop not in tok.decode(new[:-1])
            assert cut_at_stop(tok.decode(new), stop) == text[:text.index(stop)]
        else:
            assert len(new) == 30
    assert len(out[1]) < len(free[1])


def test_cut_at_stop():
    assert cut_at_stop("a. b\n\nc", ["\n\n", "b"]) == "a. "
    assert cut_at_stop("abc", "x") == "abc"


# --- past the context: overflow="slide" ---------------------------------------------------------

def naive_slide(model, prompt, n):
    """nanoGPT's sampler, greedy: crop to the last n_ctx tokens, run the whole window, argmax."""
    seq = list(prompt)
    for _ in range(n):
        logits = picogpt.asnumpy(model.forward([seq[-model.config.n_ctx:]]))[0, -1]
        seq.append(int(np.argmax(logits)))
    return seq


@pytest.mark.slow
@pytest.mark.parametrize("prompt_lengths", [(10,), (70,), (3, 12, 30)])
def test_slide_equals_naive_crop_and_recompute(models, device, prompt_lengths):
    """Sliding with n-gram blocking, a prompt longer than the context, a ragged batch."""
    model = models(device)
    rng = np.random.default_rng(sum(prompt_lengths))
    prompts = [rng.integers(0, 1000, n).tolist() for n in prompt_lengths]
    out = generate(model, prompts, 60, eot_token=None, no_repeat_ngram_size=4, overflow="slide")
    for row, p in zip(out, prompts):
        want = naive_ngram_slide(model, p, 60, 4)
        assert list(row) == want


def naive_ngram_slide(model, prompt, n, ngram):
    seq = list(prompt)
    for _ in range(n):
        logits = picogpt.asnumpy(model.forward([seq[-model.config.n_ctx:]]))[0, -1].astype(np.float64)
        for t in banned_ngram_tokens(seq, ngram):
            logits[t] = -np.inf
        seq.append(int(np.argmax(logits)))
    return seq


def test_slide_plain_greedy(models):
    """The context (64) fills after 44 new tokens; the last 10 are made by sliding."""
    model = models("cpu")
    out = generate(model, list(range(20)), 54, eot_token=None, overflow="slide")
    assert out.tolist() == naive_slide(model, list(range(20)), 54)


def test_slide_with_beams_runs_past_the_context(models):
    out = generate(models("cpu"), [[1, 2, 3]], 64, eot_token=None, num_beams=2, overflow="slide")
    assert out.shape == (1, 67)


# --- the cache follows the beams in place -------------------------------------------------------

def test_kv_cache_reorder_in_place(models, device):
    model = models(device)
    kv = model.new_cache(3, 8)
    model.next_logits(model.xp.asarray(np.array([[1, 2], [3, 4], [5, 6]])), kv)
    before = [picogpt.asnumpy(k).copy() for k in kv.k]
    arrays = [id(k) for k in kv.k]
    kv.reorder([2, 2, 0])
    assert [id(k) for k in kv.k] == arrays
    for b, k in zip(before, kv.k):
        np.testing.assert_array_equal(picogpt.asnumpy(k)[:, :, :2], b[[2, 2, 0], :, :2])


# --- bad options: one sentence --------------------------------------------------------------------

@pytest.mark.parametrize("kw, needle", [
    ({"num_beams": 0}, "num_beams"),
    ({"num_beams": 2, "num_return_sequences": 3}, "num_return_sequences"),
    ({"num_return_sequences": 2}, "num_return_sequences"),
    ({"num_beams": 2, "temperature": 0.8}, "not supported"),
    ({"repetition_penalty": 0.0}, "repetition_penalty"),
    ({"repetition_penalty": -1.0}, "repetition_penalty"),
    ({"no_repeat_ngram_size": -1}, "no_repeat_ngram_size"),
    ({"min_new_tokens": 1.5}, "min_new_tokens"),
    ({"num_beams": 2, "early_stopping": "sometimes"}, "early_stopping"),
    ({"stop": [""]}, "stop"),
    ({"overflow": "wrap"}, "overflow"),
])
def test_bad_options(models, kw, needle):
    with pytest.raises(PicoGPTError, match=needle):
        generate(models("cpu"), [1, 2, 3], 5, **kw)


@pytest.mark.parametrize("args, needle", [
    (["--num-beams", "0"], "num_beams"),
    (["--num-beams", "2", "--num-return-sequences", "3"], "num_return_sequences"),
    (["--num-beams", "2", "--temperature", "0.8"], "not supported"),
    (["--repetition-penalty", "0"], "repetition_penalty"),
])
def test_bad_options_command(args, needle, capsys):
    code = generate_command.main(["hello", "--model", str(TINY), "--max-new-tokens", "4", *args])
    out, err = capsys.readouterr()
    assert_clean_error(subprocess.CompletedProcess(args, code, out, err), needle, alone=True)


@pytest.mark.slow
def test_command_beams_stop_and_penalty():
    """The command prints each returned beam, and a row's text ends before its stop string."""
    tok = picogpt.get_tokenizer()
    prompt = "The"    # token 464: inside the tiny model's vocabulary of 1000
    r = run_module("picogpt.generate", prompt, "--model", TINY, "--max-new-tokens", "30", "--num-beams", "3",
                   "--num-return-sequences", "2", "--repetition-penalty", "1.3", "--no-repeat-ngram-size", "2")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("---------- sequence") == 2
    model = picogpt.load_model(TINY)
    ids = tok.encode(prompt)
    out = generate(model, [ids], 30, num_beams=3, num_return_sequences=2, repetition_penalty=1.3, no_repeat_ngram_size=2)
    for row in out:
        assert prompt + tok.decode([t for t in row[len(ids):] if t != tok.eot_token]) in r.stdout
    free = generate(model, ids, 30, temperature=0.0)
    text = tok.decode(free[len(ids):].tolist())
    stop = text[10:12]
    r = run_module("picogpt.generate", prompt, "--model", TINY, "--max-new-tokens", "30", "--temperature", "0",
                   "--stop", stop, "--stop", "\x01")
    assert r.returncode == 0, r.stderr
    assert r.stdout == prompt + text[:text.index(stop)] + "\n"


def test_stop_flag_understands_newline_escapes():
    assert generate_command.unescape(r"a\nb\tc\\n é") == "a\nb\tc\\n é"
    args = generate_command.build_parser().parse_args(["x", "--stop", r"\n\n", "--stop", "END"])
    assert generate_command.decoding_options(args)["stop"] == ("\n\n", "END")
