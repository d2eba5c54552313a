"""`python -m picogpt.generate` as a user meets it: a happy path, and every kind of bad input
answered by one 'error:' sentence on stderr and exit code 2, never a traceback.

These tests never use the bundled model (it may still be training): they always pass --model.
"""

import helpers
import numpy as np
import pytest
from helpers import TINY, run_module

import picogpt
from picogpt import safetensors
from picogpt.backend import gpu_available


def generate(*args, **extra_env):
    return run_module("picogpt.generate", *args, **extra_env)


def assert_clean_error(r, *needles):
    """Exit 2; stderr is one line, 'error: ...'; nothing half-done on stdout; no traceback."""
    return helpers.assert_clean_error(r, *needles, alone=True)


def broken_copy(gpt2_vocab_model, dest, how):
    dest.mkdir()
    (dest / "config.json").write_text((gpt2_vocab_model / "config.json").read_text())
    blob = (gpt2_vocab_model / "model.safetensors").read_bytes()
    if how == "truncated":
        blob = blob[:len(blob) // 2]
    elif how == "garbage":
        blob = np.random.default_rng(0).integers(0, 256, len(blob), dtype=np.uint8).tobytes()
    elif how == "empty":
        blob = b""
    (dest / "model.safetensors").write_bytes(blob)
    return dest


# --- the happy path -------------------------------------------------------------------------

def test_generates_and_a_seed_reproduces_the_text(gpt2_vocab_model):
    args = ("Hello", "--model", gpt2_vocab_model, "--max-new-tokens", 5, "--seed", 0)
    a, b = generate(*args), generate(*args)
    assert a.returncode == 0, a.stderr
    assert a.stdout.startswith("Hello") and len(a.stdout) > len("Hello\n")
    assert a.stdout == b.stdout
    assert "tokens" in a.stderr and "Traceback" not in a.stderr
    c = generate("Hello", "--model", gpt2_vocab_model, "--max-new-tokens", 5, "--seed", 1)
    assert c.returncode == 0 and c.stdout != a.stdout


def test_the_streamed_text_is_the_api_s_text(gpt2_vocab_model):
    r = generate("Hello there", "--model", gpt2_vocab_model, "--max-new-tokens", 8, "--temperature", 0)
    assert r.returncode == 0, r.stderr
    tok = picogpt.get_tokenizer()
    ids = tok.encode("Hello there")
    out = picogpt.load_model(gpt2_vocab_model).generate(ids, max_new_tokens=8, temperature=0.0)
    assert r.stdout == tok.decode([t for t in out.tolist() if t != tok.eot_token]) + "\n"


def test_several_samples_and_the_special_prompt(gpt2_vocab_model):
    r = generate("<|endoftext|>", "--model", gpt2_vocab_model, "--max-new-tokens", 4, "--num-samples", 2, "--seed", 3,
                 "--top-k", 0, "--top-p", 0.9)
    assert r.returncode == 0, r.stderr
    assert "sample 1" in r.stdout and "sample 2" in r.stdout


def test_overflow_truncate_flag(gpt2_vocab_model):
    r = generate("hello " * 70, "--model", gpt2_vocab_model, "--max-new-tokens", 4, "--overflow", "truncate")
    assert r.returncode == 0, r.stderr


def test_help_reads_well():
    r = generate("--help")
    assert r.returncode == 0
    for flag in ("--model", "--max-new-tokens", "--temperature", "--top-k", "--top-p", "--seed", "--num-samples",
                 "--device"):
        assert flag in r.stdout, flag


# --- bad input: one sentence, exit 2 -------------------------------------------------------

def test_unknown_model_name():
    assert_clean_error(generate("Hello", "--model", "gpt3-mega"), "unknown model", "gpt3-mega")


def test_model_folder_without_a_checkpoint(tmp_path):
    assert_clean_error(generate("Hello", "--model", tmp_path), "config.json")


def test_empty_prompt(gpt2_vocab_model):
    assert_clean_error(generate("", "--model", gpt2_vocab_model), "prompt", "empty")


def test_prompt_longer_than_the_context():
    # tiny-gpt2's context is 64; 100 words is 100 tokens.
    assert_clean_error(generate("hello " * 100, "--model", TINY, "--max-new-tokens", 5), "context", "64")


def test_prompt_longer_than_the_context_full_vocabulary(gpt2_vocab_model):
    assert_clean_error(generate("hello " * 100, "--model", gpt2_vocab_model, "--max-new-tokens", 5), "context", "64")


@pytest.mark.parametrize("p", ["0", "1.5", "-0.5"])
def test_top_p_outside_0_1(gpt2_vocab_model, p):
    assert_clean_error(generate("Hello", "--model", gpt2_vocab_model, "--top-p", p), "top-p")


def test_top_k_below_zero(gpt2_vocab_model):
    # --top-k 0 is documented as "off"; a negative k is an error.
    assert_clean_error(generate("Hello", "--model", gpt2_vocab_model, "--top-k", "-1"), "top-k")


def test_negative_temperature(gpt2_vocab_model):
    assert_clean_error(generate("Hello", "--model", gpt2_vocab_model, "--temperature", "-0.5"), "temperature")


def test_negative_token_budget(gpt2_vocab_model):
    assert_clean_error(generate("Hello", "--model", gpt2_vocab_model, "--max-new-tokens", "-1"), "max-new-tokens")


def test_zero_samples(gpt2_vocab_model):
    assert_clean_error(generate("Hello", "--model", gpt2_vocab_model, "--num-samples", "0"), "num-samples")


@pytest.mark.parametrize("how", ["truncated", "garbage", "empty"])
def test_broken_safetensors_file(gpt2_vocab_model, tmp_path, how):
    bad = broken_copy(gpt2_vocab_model, tmp_path / how, how)
    assert_clean_error(generate("Hello", "--model", bad, "--max-new-tokens", 3), "model.safetensors")


def test_weights_with_nan_are_refused(gpt2_vocab_model, tmp_path):
    bad = tmp_path / "nan"
    bad.mkdir()
    (bad / "config.json").write_text((gpt2_vocab_model / "config.json").read_text())
    tensors = {k: np.array(v) for k, v in safetensors.load(gpt2_vocab_model / "model.safetensors").items()}
    tensors["transformer.h.0.mlp.c_fc.weight"][3, 4] = np.nan
    safetensors.save(tensors, bad / "model.safetensors")
    assert_clean_error(generate("Hello", "--model", bad), "nan")


def test_a_model_with_another_vocabulary(tmp_path):
    # tiny-gpt2 has 1000 tokens; "Hello" is GPT-2 token 15496.
    assert_clean_error(generate("Hello", "--model", TINY, "--max-new-tokens", 3))


@pytest.mark.skipif(gpu_available(), reason="there is a GPU here, so --device gpu is not an error")
def test_gpu_without_a_gpu(gpt2_vocab_model):
    assert_clean_error(generate("Hello", "--model", gpt2_vocab_model, "--device", "gpu"), "gpu", "--device cpu")
    assert_clean_error(generate("Hello", "--model", gpt2_vocab_model, PICOGPT_DEVICE="gpu"), "gpu")
