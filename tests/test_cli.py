"""`python -m picogpt.generate` as a user meets it: a happy path, and every kind of bad input
answered by one 'error:' sentence on stderr and exit code 2, never a traceback.

These tests never use the bundled model (it may still be training): they always pass --model.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import picogpt
from picogpt import safetensors
from picogpt.backend import gpu_available
from picogpt.config import GPT2Config

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "fixtures" / "tiny-gpt2"   # n_ctx 64, but a vocabulary of 1000 (not GPT-2's)


def env(**extra):
    e = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    e.pop("PICOGPT_DEVICE", None)
    return {**e, **extra}


def generate(*args, **extra_env):
    return subprocess.run([sys.executable, "-m", "picogpt.generate", *map(str, args)], capture_output=True,
                          text=True, env=env(**extra_env), timeout=120)


def assert_clean_error(r, *needles):
    """Exit 2; stderr is one line, 'error: ...'; nothing half-done on stdout; no traceback."""
    assert r.returncode == 2, (r.returncode, r.stdout[-1000:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert r.stdout == "", f"stdout got {r.stdout!r} before the error"
    for needle in needles:
        assert needle.lower() in lines[0].lower(), (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random GPT-2 with GPT-2's vocabulary and a context of 64, saved by picogpt."""
    d = tmp_path_factory.mktemp("models")
    m = picogpt.init_model(GPT2Config(n_layer=2, n_head=2, n_embd=32, n_ctx=64), seed=0)
    picogpt.save_model(m, d / "good")
    return d / "good"


def broken_copy(model_dir, dest, how):
    dest.mkdir()
    (dest / "config.json").write_text((model_dir / "config.json").read_text())
    blob = (model_dir / "model.safetensors").read_bytes()
    if how == "truncated":
        blob = blob[:len(blob) // 2]
    elif how == "garbage":
        blob = np.random.default_rng(0).integers(0, 256, len(blob), dtype=np.uint8).tobytes()
    elif how == "empty":
        blob = b""
    (dest / "model.safetensors").write_bytes(blob)
    return dest


# --- the happy path -------------------------------------------------------------------------

def test_generates_and_a_seed_reproduces_the_text(model_dir):
    args = ("Hello", "--model", model_dir, "--max-new-tokens", 5, "--seed", 0)
    a, b = generate(*args), generate(*args)
    assert a.returncode == 0, a.stderr
    assert a.stdout.startswith("Hello") and len(a.stdout) > len("Hello\n")
    assert a.stdout == b.stdout
    assert "tokens" in a.stderr and "Traceback" not in a.stderr
    c = generate("Hello", "--model", model_dir, "--max-new-tokens", 5, "--seed", 1)
    assert c.returncode == 0 and c.stdout != a.stdout


def test_the_streamed_text_is_the_api_s_text(model_dir):
    r = generate("Hello there", "--model", model_dir, "--max-new-tokens", 8, "--temperature", 0)
    assert r.returncode == 0, r.stderr
    tok = picogpt.get_tokenizer()
    ids = tok.encode("Hello there")
    out = picogpt.load_model(model_dir).generate(ids, max_new_tokens=8, temperature=0.0)
    assert r.stdout == tok.decode([t for t in out.tolist() if t != tok.eot_token]) + "\n"


def test_several_samples_and_the_special_prompt(model_dir):
    r = generate("<|endoftext|>", "--model", model_dir, "--max-new-tokens", 4, "--num-samples", 2, "--seed", 3,
                 "--top-k", 0, "--top-p", 0.9)
    assert r.returncode == 0, r.stderr
    assert "sample 1" in r.stdout and "sample 2" in r.stdout


def test_overflow_truncate_flag(model_dir):
    r = generate("hello " * 70, "--model", model_dir, "--max-new-tokens", 4, "--overflow", "truncate")
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


def test_empty_prompt(model_dir):
    assert_clean_error(generate("", "--model", model_dir), "prompt", "empty")


def test_prompt_longer_than_the_context():
    # tiny-gpt2's context is 64; 100 words is 100 tokens.
    assert_clean_error(generate("hello " * 100, "--model", TINY, "--max-new-tokens", 5), "context", "64")


def test_prompt_longer_than_the_context_full_vocabulary(model_dir):
    assert_clean_error(generate("hello " * 100, "--model", model_dir, "--max-new-tokens", 5), "context", "64")


@pytest.mark.parametrize("p", ["0", "1.5", "-0.5"])
def test_top_p_outside_0_1(model_dir, p):
    assert_clean_error(generate("Hello", "--model", model_dir, "--top-p", p), "top-p")


def test_top_k_below_zero(model_dir):
    # --top-k 0 is documented as "off"; a negative k is an error.
    assert_clean_error(generate("Hello", "--model", model_dir, "--top-k", "-1"), "top-k")


def test_negative_temperature(model_dir):
    assert_clean_error(generate("Hello", "--model", model_dir, "--temperature", "-0.5"), "temperature")


def test_negative_token_budget(model_dir):
    assert_clean_error(generate("Hello", "--model", model_dir, "--max-new-tokens", "-1"), "max-new-tokens")


def test_zero_samples(model_dir):
    assert_clean_error(generate("Hello", "--model", model_dir, "--num-samples", "0"), "num-samples")


@pytest.mark.parametrize("how", ["truncated", "garbage", "empty"])
def test_broken_safetensors_file(model_dir, tmp_path, how):
    bad = broken_copy(model_dir, tmp_path / how, how)
    assert_clean_error(generate("Hello", "--model", bad, "--max-new-tokens", 3), "model.safetensors")


def test_weights_with_nan_are_refused(model_dir, tmp_path):
    bad = tmp_path / "nan"
    bad.mkdir()
    (bad / "config.json").write_text((model_dir / "config.json").read_text())
    tensors = {k: np.array(v) for k, v in safetensors.load(model_dir / "model.safetensors").items()}
    tensors["transformer.h.0.mlp.c_fc.weight"][3, 4] = np.nan
    safetensors.save(tensors, bad / "model.safetensors")
    assert_clean_error(generate("Hello", "--model", bad), "nan")


def test_a_model_with_another_vocabulary(tmp_path):
    # tiny-gpt2 has 1000 tokens; "Hello" is GPT-2 token 15496.
    assert_clean_error(generate("Hello", "--model", TINY, "--max-new-tokens", 3))


@pytest.mark.skipif(gpu_available(), reason="there is a GPU here, so --device gpu is not an error")
def test_gpu_without_a_gpu(model_dir):
    assert_clean_error(generate("Hello", "--model", model_dir, "--device", "gpu"), "gpu", "--device cpu")
    assert_clean_error(generate("Hello", "--model", model_dir, PICOGPT_DEVICE="gpu"), "gpu")
