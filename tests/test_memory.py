"""Bounded memory for every batch-like flag (issue 8, item 6).

`python -m picogpt.generate "ROMEO:" --max-new-tokens 5 --num-samples 100000` once grew to 20 GB:
all the samples were one batch. Now samples are made --batch-size at a time and printed as each
batch is done; a batch that cannot fit is refused in one sentence before any work, and the
training evaluation batches are drawn when used rather than held.
"""

import os
import subprocess
import sys
import time

import pytest
from helpers import assert_clean_error, quiet, subprocess_env

import picogpt
from picogpt import generate, memory
from picogpt.config import GPT2Config
from picogpt.errors import PicoGPTError
from picogpt.train import TrainConfig, Trainer

BOUND = 1.5 * 2**30          # bytes of resident memory the huge request must stay under
SAMPLES_SEEN = 24            # samples that must have streamed out before the run is stopped


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    """One layer, 16 wide, GPT-2's vocabulary (the prompt goes through the real tokenizer): fast to sample."""
    folder = tmp_path_factory.mktemp("models") / "one-layer"
    picogpt.save_model(picogpt.init_model(GPT2Config(n_layer=1, n_head=2, n_embd=16, n_ctx=32), seed=0), folder)
    return folder


def peak_rss_of(args, stop_after_samples=None, timeout=120):
    """Run `python -m picogpt.generate args` and return (peak resident bytes, stdout so far, exit status).

    stop_after_samples: terminate the run once that many sample headers are on its stdout (it
    must get there by streaming). The peak comes from wait4, for this one child alone."""
    p = subprocess.Popen([sys.executable, "-m", "picogpt.generate", *map(str, args)], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True, env=subprocess_env())
    out, seen, deadline = [], 0, time.monotonic() + timeout
    try:
        for line in p.stdout:
            out.append(line)
            seen += line.startswith("---------- sample")
            if (stop_after_samples and seen >= stop_after_samples) or time.monotonic() > deadline:
                p.terminate()
                break
    finally:
        p.stdout.close()
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = status  # Popen must not wait for a child already reaped
    return usage.ru_maxrss * 1024, "".join(out), status   # ru_maxrss is in KiB on Linux


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss is in KiB on Linux only")
def test_a_hundred_thousand_samples_stream_in_bounded_memory(small_model):
    args = ["ROMEO:", "--model", small_model, "--max-new-tokens", 5, "--temperature", 0, "--batch-size", 8]
    peak, out, _ = peak_rss_of([*args, "--num-samples", 100000], stop_after_samples=SAMPLES_SEEN)
    assert out.count("---------- sample") >= SAMPLES_SEEN, "the first batches were not printed as they finished"
    assert out.startswith("---------- sample 1\nROMEO:")
    assert peak < BOUND, f"{peak / 2**30:.2f} GB resident"
    # ... and about what one batch alone takes: the memory does not grow with --num-samples
    single, _, status = peak_rss_of([*args, "--num-samples", 8])
    assert status == 0
    assert peak < single + 200 * 2**20, (peak / 2**20, single / 2**20)


def test_a_batch_that_cannot_fit_is_refused_in_one_sentence(small_model, capsys):
    code = generate.main(["ROMEO:", "--model", str(small_model), "--max-new-tokens", "5", "--num-samples", str(10**12),
                          "--batch-size", str(10**12)])
    out, err = capsys.readouterr()
    r = subprocess.CompletedProcess([], code, out, err)
    assert_clean_error(r, "memory", "--batch-size", alone=True)


def test_check_fits_passes_what_fits_and_refuses_what_does_not():
    free = memory.available_bytes("cpu")
    assert free is None or free > 0
    memory.check_fits(1, "cpu", "one byte", "nothing")
    with pytest.raises(PicoGPTError, match="lower --x"):
        memory.check_fits(2**80, "cpu", "a yottabyte", "lower --x")


def test_the_estimates_grow_with_the_batch():
    config = picogpt.get_config("gpt2")
    for estimate in (memory.training_bytes, memory.inference_bytes):
        assert estimate(config, 2, 1024) > estimate(config, 1, 1024) > 0
    one, two = (memory.generation_bytes(config, b, 10, 110) for b in (1, 2))
    kv = 2 * config.n_layer * 110 * config.n_embd * 4
    assert two - one >= kv   # each sample adds at least its KV cache


def test_many_evaluation_batches_cost_time_not_memory(text, tmp_path):
    """--eval-batches 10**9 used to be drawn and kept up front; now a Trainer holds none of them."""
    cfg = TrainConfig(data=str(text), out=str(tmp_path / "out"), model="gpt2-micro", n_embd=16, block_size=8,
                      batch_size=2, steps=1, eval_batches=10**9, device="cpu")
    t0 = time.perf_counter()
    trainer = Trainer(cfg, log=quiet)
    assert time.perf_counter() - t0 < 30
    # the batches are still the same fixed ones at every evaluation
    first = next(trainer.eval_batches("val"))
    again = next(trainer.eval_batches("val"))
    assert (first[0] == again[0]).all() and (first[1] == again[1]).all()
