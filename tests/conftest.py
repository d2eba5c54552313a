"""Shared test setup: hypothesis profiles, the `xp` fixture, and skipping GPU tests without a GPU.

Hypothesis profiles, chosen with the environment variable HYPOTHESIS_PROFILE; without it "ci"
where the environment variable CI is true (CI services set CI=true), "default" elsewhere:
    default   25 examples per property, no deadline (shared machines have noisy timings); fresh
              random examples each run, and failures are replayed from .hypothesis/ until fixed
    ci        the same 25 examples, but derandomized (the same examples on every run) and with no
              example database, so a CI run never depends on what an earlier run found
    dev       10 examples, for a quick run while editing
    thorough  300 examples, for a run before a release or after touching a backward

Fixtures shared by several files: `reference` (transformers' and torch's numbers for the tiny
model, tests/fixtures/reference.npz), `device` ("cpu", and "gpu" marked `gpu`), `xp` (the same
for array modules), `text` (a few KB of word salad to train on), `gpt2_vocab_model` (a tiny
random model with GPT-2's vocabulary, saved). Plain helpers are in helpers.py.

Tests marked `gpu` (the marker is declared in pyproject.toml) are skipped, with the reason,
wherever picogpt.backend.gpu_available() is False: no CuPy, or CuPy without a CUDA device.

With PICOGPT_SIMULATED_GPU=1 they run on a simulated device instead (tests/simulated_gpu.py):
NumPy underneath, with CuPy's rule that host and device arrays never mix.
"""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

if os.environ.get("PICOGPT_SIMULATED_GPU") == "1":  # before picogpt looks for CuPy
    from simulated_gpu import install

    install()

from helpers import REFERENCE, write_text  # noqa: E402 (it imports picogpt)
import picogpt  # noqa: E402
from picogpt.backend import gpu_available  # noqa: E402
from picogpt.config import GPT2Config  # noqa: E402

settings.register_profile("default", max_examples=25, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", settings.get_profile("default"), derandomize=True, database=None)
settings.register_profile("dev", max_examples=10, deadline=None)
settings.register_profile("thorough", max_examples=300, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if IN_CI else "default"))

GPU_SKIP_REASON = "needs CuPy and a CUDA GPU (picogpt.backend.gpu_available() is False here)"


def pytest_collection_modifyitems(config, items):
    """Skip every test marked `gpu` when there is no usable GPU, saying why."""
    if gpu_available():
        return
    skip = pytest.mark.skip(reason=GPU_SKIP_REASON)
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", params=["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def xp(request):
    """The array module a test runs on: NumPy always, CuPy as well where there is a GPU.

    Session-scoped so that hypothesis tests may use it (it holds no state between examples).
    """
    if request.param == "numpy":
        return np
    if not gpu_available():  # also guarded by the `gpu` marker; this keeps the fixture safe alone
        pytest.skip(GPU_SKIP_REASON)
    import cupy

    return cupy


@pytest.fixture(scope="session", params=["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def device(request):
    """The device a test runs on: "cpu" always, "gpu" as well where there is a GPU (or the simulated one)."""
    return request.param


@pytest.fixture(scope="session")
def reference():
    """What tests/fixtures/make_fixtures.py computed with transformers and torch for helpers.TINY:
    logits, greedy continuations, loss and every gradient, ten AdamW steps and their learning rates."""
    with np.load(REFERENCE) as npz:
        return dict(npz)


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    """A few KB of word salad to train on (helpers.write_text)."""
    return write_text(tmp_path_factory.mktemp("text") / "words.txt")


@pytest.fixture(scope="session")
def gpt2_vocab_model(tmp_path_factory):
    """The folder of a tiny random GPT-2 with GPT-2's own vocabulary (50,257), saved by picogpt:
    2 layers, 2 heads, 32 wide, a context of 64. For whatever goes through the tokenizer."""
    folder = tmp_path_factory.mktemp("models") / "gpt2-vocab"
    picogpt.save_model(picogpt.init_model(GPT2Config(n_layer=2, n_head=2, n_embd=32, n_ctx=64), seed=0), folder)
    return folder


def pytest_terminal_summary(terminalreporter):
    """How long each chapter notebook took to run (tests/test_notebooks.py records it)."""
    times = [(r.nodeid.split("[")[-1].rstrip("]"), dict(r.user_properties)["notebook_seconds"])
             for r in terminalreporter.stats.get("passed", [])
             if r.when == "call" and "notebook_seconds" in dict(r.user_properties)]
    if times:
        terminalreporter.write_sep("-", "notebook run times")
        for name, seconds in sorted(times):
            terminalreporter.write_line(f"{name:<20} {seconds:6.1f} s")
        terminalreporter.write_line(f"{'total':<20} {sum(s for _, s in times):6.1f} s")
