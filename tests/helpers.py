"""What several test files need: where the fixtures are, running a command, comparing arrays.

Import from a test file as `from helpers import TINY, rel_err` (pytest puts tests/ on sys.path, as
it does for conftest.py). Fixtures built from these (the reference numbers, the device, a text to
train on) are in conftest.py.
"""

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np

import picogpt

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
# A small random GPT-2 written by transformers' save_pretrained (tests/fixtures/make_fixtures.py):
# vocabulary 1000 (not GPT-2's), context 64, 2 layers, 64 wide, 4 heads.
TINY = FIXTURES / "tiny-gpt2"
TINY_HUB = FIXTURES / "tiny-gpt2-hub"      # the same weights in the Hub's own file layout
REFERENCE = FIXTURES / "reference.npz"     # transformers' and torch's numbers for TINY


# --- arrays --------------------------------------------------------------------------------

def host(a):
    """A NumPy copy of a host or device array (tests compare on the host)."""
    return np.asarray(picogpt.asnumpy(a))


def rel_err(a, b):
    """max |a - b| / max |b|, in float64, for arrays on either device."""
    a, b = host(a).astype(np.float64), host(b).astype(np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


# --- the tiny model and random inputs ---------------------------------------------------------

def tiny(device="cpu", dtype="float32"):
    """The tiny GPT-2 of tests/fixtures/tiny-gpt2 (made by transformers), loaded by picogpt."""
    return picogpt.load_model(TINY, device=device, dtype=dtype)


def normal(seed, shape, scale=1.0):
    """A float64 NumPy array of standard normal numbers times `scale`, from `seed`."""
    return np.random.default_rng(seed).standard_normal(shape) * scale


# --- text to train on ------------------------------------------------------------------------

WORDS = ("the king queen lord love death night day sword crown heart blood fair sweet speak "
         "come go thou thee my").split()


def write_text(path, n_lines=100, seed=0, words=WORDS, per_line=12):
    """A few KB of word salad from a small vocabulary: ~1,300 GPT-2 tokens per 100 lines."""
    r = random.Random(seed)
    path.write_text("\n".join(" ".join(r.choice(words) for _ in range(per_line)) for _ in range(n_lines)) + "\n")
    return path


def quiet(*_args, **_kw):
    """A `log=` callback that says nothing."""


# --- the commands, as a user runs them ----------------------------------------------------------

def subprocess_env(**extra):
    """This environment for a child Python: the checkout's picogpt first, no device forced."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("PICOGPT_DEVICE", None)
    return {**env, **extra}


def run_module(module, *args, cwd=None, timeout=120, **extra_env):
    """`python -m module args...` in a child process; the CompletedProcess, text mode."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          env=subprocess_env(**extra_env), cwd=cwd, timeout=timeout)


def assert_clean_error(r, *needles, alone=False):
    """Exit 2, no traceback, one 'error: ...' line on stderr, the last thing said, naming each needle.

    alone=True: that line is all of stderr and nothing was printed on stdout before it (the
    command refused before it started); otherwise progress lines may come first.
    """
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, r.stderr
    assert r.stderr.rstrip("\n").endswith(errors[0]), f"the error is not the last thing said:\n{r.stderr}"
    if alone:
        assert r.stderr.strip() == errors[0], r.stderr
        assert r.stdout == "", f"stdout got {r.stdout!r} before the error"
    for needle in needles:
        assert needle.lower() in errors[0].lower(), (needle, errors[0])
    return errors[0]
