"""The Trainer and `python -m picogpt.train`: gradient accumulation, determinism, resuming
(in process, and after a SIGKILL mid-run), a loss that blows up, and bad input.

Everything trains a model of a few layers 16 or 32 wide for a few steps on a few kilobytes of
text (conftest's `text`), so the whole file runs in about a minute on two cores.
"""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY, assert_clean_error, quiet, rel_err, run_module, subprocess_env

import picogpt
from picogpt import data as D
from picogpt import safetensors
from picogpt.backend import PicoGPTError
from picogpt.train import TrainConfig, Trainer


# --- helpers ---------------------------------------------------------------------------

def read_log(path):
    """(losses, evals): step -> loss of the LAST record of each step (a resumed run appends)."""
    losses, evals = {}, {}
    for line in Path(path).read_text().splitlines():
        rec = json.loads(line)
        if rec.get("eval"):
            evals[rec["step"]] = (rec["train_loss"], rec["val_loss"])
        else:
            losses[rec["step"]] = rec["loss"]
    return losses, evals


def small_cfg(text, out, **kw):
    """A TrainConfig for a 2-layer, 32-wide model on 16-token windows."""
    base = dict(data=str(text), out=str(out), model="gpt2-micro", n_embd=32, block_size=16, batch_size=4,
                steps=4, warmup_steps=2, eval_interval=100, eval_batches=1, log_interval=1, device="cpu")
    return TrainConfig(**{**base, **kw})



# --- accumulation, determinism, resuming in process ----------------------------------------

def test_two_micro_batches_averaged_equal_one_batch_of_both():
    model = picogpt.load_model(TINY)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 1000, (4, 16)), rng.integers(0, 1000, (4, 16))
    loss, grads = model.loss_and_grads(x, y)
    l1, g1 = model.loss_and_grads(x[:2], y[:2])
    l2, g2 = model.loss_and_grads(x[2:], y[2:])
    assert (l1 + l2) / 2 == pytest.approx(loss, abs=1e-6)
    for k in grads:
        assert rel_err((g1[k] + g2[k]) / 2, grads[k]) <= 1e-6, k


def test_trainer_grad_accum_averages_the_micro_batch_gradients(text, tmp_path, monkeypatch):
    """The Trainer with grad_accum=2 of 2 rows hands AdamW the gradient of the 4 rows at once."""
    drawn, seen = [], {}
    real_get_batch = D.get_batch

    def record(*a, **kw):
        drawn.append(real_get_batch(*a, **kw))
        return drawn[-1]

    def capture(name):
        def step(params, grads, lr):
            seen[name] = {k: g.copy() for k, g in grads.items()}
        return step

    monkeypatch.setattr(D, "get_batch", record)
    t = Trainer(small_cfg(text, tmp_path / "a", batch_size=2, grad_accum=2, grad_clip=0), log=quiet)
    drawn.clear()
    t.opt.step = capture("accum")
    info = t.step()
    assert len(drawn) == 2
    x = np.concatenate([drawn[0][0], drawn[1][0]])
    y = np.concatenate([drawn[0][1], drawn[1][1]])
    monkeypatch.setattr(D, "get_batch", lambda *a, **kw: (x, y))
    t1 = Trainer(small_cfg(text, tmp_path / "b", batch_size=4, grad_accum=1, grad_clip=0), log=quiet)
    t1.opt.step = capture("whole")
    info1 = t1.step()
    assert info["loss"] == pytest.approx(info1["loss"], abs=1e-6)
    assert info["tokens"] == info1["tokens"] == 4 * 16
    for k in seen["whole"]:
        assert rel_err(seen["accum"][k], seen["whole"][k]) <= 1e-6, k


def run_steps(cfg, n):
    t = Trainer(cfg, log=quiet)
    return [t.step()["loss"] for _ in range(n)], t


def test_same_seed_same_losses_different_seed_different(text, tmp_path):
    kw = dict(dropout=0.1, lr=3e-3)
    a, ta = run_steps(small_cfg(text, tmp_path / "a", seed=1, **kw), 3)
    b, tb = run_steps(small_cfg(text, tmp_path / "b", seed=1, **kw), 3)
    c, _ = run_steps(small_cfg(text, tmp_path / "c", seed=2, **kw), 3)
    assert a == b
    for k in ta.model.params:
        np.testing.assert_array_equal(ta.model.params[k], tb.model.params[k])
    assert a != c


def test_dropout_is_on_in_training_steps_only(text, tmp_path):
    t = Trainer(small_cfg(text, tmp_path, dropout=0.5), log=quiet)
    # evaluation is deterministic (no dropout) ...
    assert t.evaluate("val") == t.evaluate("val")
    # ... while the training loss of one batch changes with the dropout masks.
    x, y = t.eval_sets["train"][0]
    plain, _ = t.model.loss_and_grads(x, y)
    dropped, _ = t.model.loss_and_grads(x, y, rng=np.random.default_rng(0))
    assert plain != dropped


def test_trainer_rejects_bad_settings_with_one_sentence(text, tmp_path):
    for bad in (dict(lr=0.0), dict(lr=-1.0), dict(lr=float("nan")), dict(steps=0), dict(batch_size=0),
                dict(grad_accum=0), dict(dropout=1.0), dict(block_size=0), dict(lora_rank=-1), dict(grad_clip=-1.0)):
        with pytest.raises(PicoGPTError):
            Trainer(small_cfg(text, tmp_path, **bad), log=quiet)


def test_resume_in_process_continues_exactly(text, tmp_path):
    """Stop after 2 of 4 steps, checkpoint, resume in a new Trainer: the same losses and weights."""
    full, t_full = run_steps(small_cfg(text, tmp_path / "full", lr=3e-3), 4)
    t = Trainer(small_cfg(text, tmp_path / "part", lr=3e-3), log=quiet)
    first = [t.step()["loss"] for _ in range(2)]
    t.save_checkpoint()
    t2 = Trainer(small_cfg(text, tmp_path / "part", lr=3e-3, resume=True), log=quiet)
    assert t2.step_num == 2 and t2.opt.t == 2
    rest = [t2.step()["loss"] for _ in range(2)]
    assert first + rest == full
    for k in t_full.model.params:
        np.testing.assert_array_equal(t2.model.params[k], t_full.model.params[k])


def test_resume_refuses_a_checkpoint_made_with_other_settings(text, tmp_path):
    t = Trainer(small_cfg(text, tmp_path, seed=1), log=quiet)
    t.step()
    t.save_checkpoint()
    with pytest.raises(PicoGPTError, match="seed"):
        Trainer(small_cfg(text, tmp_path, seed=2, resume=True), log=quiet)


# --- the command line: kill and resume ---------------------------------------------------

TRAIN_ARGS = ["--model", "gpt2-micro", "--n-embd", 16, "--block-size", 16, "--batch-size", 4, "--steps", 24,
              "--warmup-steps", 5, "--lr", 3e-3, "--log-interval", 1, "--eval-interval", 5, "--eval-batches", 1,
              "--seed", 7, "--device", "cpu"]


@pytest.mark.slow
def test_kill_mid_run_then_resume_continues_like_an_uninterrupted_run(text, tmp_path):
    # The reference: the same command, never interrupted.
    r = run_module("picogpt.train", "--data", text, "--out", tmp_path / "ref", *TRAIN_ARGS)
    assert r.returncode == 0, r.stderr
    ref_losses, ref_evals = read_log(tmp_path / "ref" / "log.jsonl")
    assert sorted(ref_losses) == list(range(1, 25))

    # The same command, killed with SIGKILL right after it logs step 10 -- that is, while it
    # evaluates and writes the step-10 checkpoint, or just after -- never at a clean boundary.
    out = tmp_path / "run"
    log = out / "log.jsonl"
    cmd = [sys.executable, "-m", "picogpt.train", "--data", str(text), "--out", str(out), *map(str, TRAIN_ARGS)]
    p = subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and p.poll() is None:
            if log.is_file() and any(json.loads(line).get("step", 0) >= 10 for line in log.read_text().splitlines()
                                     if line.endswith("}")):
                break
            time.sleep(0.005)
        assert p.poll() is None, f"the run ended before it could be killed: {p.stderr.read().decode()[-2000:]}"
        p.send_signal(signal.SIGKILL)
    finally:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=30)
    assert p.returncode == -signal.SIGKILL
    killed_at = max(read_log(log)[0])
    assert 10 <= killed_at < 24

    # Whatever it was doing, every file under its real name is whole.
    ckpt = out / "checkpoint.safetensors"
    arrays = safetensors.load(ckpt)
    _, meta, _ = safetensors.read_header(ckpt)
    saved_step = int(meta["step"])
    assert saved_step % 5 == 0 and 5 <= saved_step <= killed_at
    assert all(np.isfinite(a).all() for a in arrays.values())
    assert {k for k in arrays if k.startswith("param:")} == {f"param:{k}" for k in
                                                            picogpt.init_model("gpt2-micro", n_embd=16, n_ctx=16).params}
    model = picogpt.load_model(out)
    assert model.config.n_embd == 16 and model.config.n_ctx == 16
    json.loads((out / "config.json").read_text())
    json.loads((out / "train_config.json").read_text())
    real = {"checkpoint.safetensors", "model.safetensors", "config.json", "train_config.json", "log.jsonl"}
    for f in out.iterdir():
        assert f.name in real or (f.name.startswith(".") and ".tmp-" in f.name), f"unexpected file {f.name}"

    # Resume to the end.
    r = run_module("picogpt.train", "--data", text, "--out", out, *TRAIN_ARGS, "--resume")
    assert r.returncode == 0, r.stderr
    assert f"at step {saved_step}" in r.stdout
    losses, evals = read_log(log)
    assert sorted(losses) == list(range(1, 25))
    for s in range(saved_step + 1, 25):
        assert losses[s] == pytest.approx(ref_losses[s], abs=1e-6), s
    for s in ref_evals:
        if s > saved_step:
            assert evals[s] == pytest.approx(ref_evals[s], abs=1e-6), s
    # ... and it ends with the same weights.
    a = safetensors.load(out / "model.safetensors")
    b = safetensors.load(tmp_path / "ref" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-6, err_msg=k)


def test_sigkill_while_a_checkpoint_is_written_leaves_the_previous_one_whole(tmp_path):
    """The kill above lands wherever it lands; this one lands, for sure, mid-write."""
    target = tmp_path / "checkpoint.safetensors"
    safetensors.save({"a": np.arange(10, dtype=np.float32)}, target, metadata={"step": "1"})
    code = ("import sys, numpy as np; from picogpt import safetensors; "
            "safetensors.save({'a': np.ones(25_000_000, np.float32)}, sys.argv[1], metadata={'step': '2'})")
    p = subprocess.Popen([sys.executable, "-c", code, str(target)], env=subprocess_env())
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and p.poll() is None:
            tmps = list(tmp_path.glob(".checkpoint.safetensors.tmp-*"))
            if tmps and tmps[0].stat().st_size > 0:
                break
            time.sleep(0.001)
        assert p.poll() is None, "the write finished before it could be interrupted"
        p.send_signal(signal.SIGKILL)
    finally:
        p.wait(timeout=30)
    assert p.returncode == -signal.SIGKILL
    np.testing.assert_array_equal(safetensors.load(target)["a"], np.arange(10, dtype=np.float32))
    assert safetensors.read_header(target)[1] == {"step": "1"}


# --- the command line: a loss that blows up ----------------------------------------------

def test_nan_loss_stops_with_a_message_naming_the_step_and_keeps_the_checkpoint(text, tmp_path):
    out = tmp_path / "out"
    r = run_module("picogpt.train", "--data", text, "--out", out, "--model", "gpt2-micro", "--n-embd", 32, "--block-size", 16,
            "--batch-size", 4, "--steps", 30, "--lr", 1e6, "--grad-clip", 0, "--warmup-steps", 0,
            "--log-interval", 1, "--eval-interval", 1, "--eval-batches", 1, "--device", "cpu")
    error = assert_clean_error(r, "step", "checkpoint")
    losses, _ = read_log(out / "log.jsonl")
    last_good = max(losses)
    assert all(math.isfinite(v) for v in losses.values())
    # The step the message names is the one that went bad, counted as the log and the progress
    # lines count (from 1): a training loss, the step after the last one logged; an evaluation
    # loss, the step it evaluates (the last one logged: its update is the one that blew up).
    bad = last_good if "evaluation loss" in error else last_good + 1
    assert f"step {bad}:" in error or f"step {bad} " in error, (error, last_good)
    # The checkpoint from before is there and loads.
    ckpt = out / "checkpoint.safetensors"
    _, meta, _ = safetensors.read_header(ckpt)
    assert 1 <= int(meta["step"]) <= last_good
    assert all(np.isfinite(a).all() for a in safetensors.load(ckpt).values())
    picogpt.load_model(out)


def test_a_nan_evaluation_loss_stops_the_run_before_it_overwrites_the_checkpoint(text, tmp_path, monkeypatch):
    """A model whose validation loss is NaN is not 'good': the run must stop, with the error,
    and keep the checkpoint written before it."""
    t = Trainer(small_cfg(text, tmp_path, steps=6, eval_interval=2), log=quiet)
    real = t.evaluate
    monkeypatch.setattr(t, "evaluate", lambda split="val": float("nan") if t.step_num >= 4 else real(split))
    with pytest.raises(PicoGPTError, match="step"):
        t.run()
    _, meta, _ = safetensors.read_header(tmp_path / "checkpoint.safetensors")
    assert int(meta["step"]) == 2


# --- the command line: bad input -----------------------------------------------------------

SMALL = ["--model", "gpt2-micro", "--n-embd", 32, "--block-size", 16, "--batch-size", 2, "--steps", 2,
         "--eval-batches", 1, "--device", "cpu"]


def test_empty_data_file(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    assert_clean_error(run_module("picogpt.train", "--data", tmp_path / "empty.txt", "--out", tmp_path / "o", *SMALL), "empty")
    (tmp_path / "blank.txt").write_text("  \n\n ")
    assert_clean_error(run_module("picogpt.train", "--data", tmp_path / "blank.txt", "--out", tmp_path / "o", *SMALL), "empty")


def test_data_file_too_short_for_one_window(tmp_path):
    (tmp_path / "short.txt").write_text("To be, or not to be, that is the question.\n")
    assert_clean_error(run_module("picogpt.train", "--data", tmp_path / "short.txt", "--out", tmp_path / "o", *SMALL), "too few")


def test_missing_data(tmp_path):
    assert_clean_error(run_module("picogpt.train", "--data", tmp_path / "nothing.txt", "--out", tmp_path / "o", *SMALL), "no data")


def test_block_size_longer_than_the_models_context(text, tmp_path):
    r = run_module("picogpt.train", "--data", text, "--init", TINY, "--block-size", 128, "--out", tmp_path / "o",
            "--steps", 2, "--device", "cpu")
    assert_clean_error(r, "context", "64")


@pytest.mark.parametrize("lr", ["0", "-1", "nan"])
def test_learning_rate_must_be_positive(text, tmp_path, lr):
    assert_clean_error(run_module("picogpt.train", "--data", text, "--out", tmp_path / "o", *SMALL, "--lr", lr), "learning rate")


def test_unknown_init(text, tmp_path):
    r = run_module("picogpt.train", "--data", text, "--init", "gpt5", "--block-size", 16, "--out", tmp_path / "o", "--device", "cpu")
    assert_clean_error(r, "gpt5")


@pytest.mark.parametrize("how", ["garbage", "truncated", "not-a-training-checkpoint", "missing"])
def test_corrupt_checkpoint_on_resume(text, tmp_path, how):
    out = tmp_path / "o"
    out.mkdir()
    ckpt = out / "checkpoint.safetensors"
    if how == "garbage":
        ckpt.write_bytes(os.urandom(5000))
    elif how == "truncated":
        t = Trainer(small_cfg(text, out), log=quiet)
        t.step()
        t.save_checkpoint()
        blob = ckpt.read_bytes()
        ckpt.write_bytes(blob[:len(blob) // 2])
    elif how == "not-a-training-checkpoint":
        ckpt.write_bytes((TINY / "model.safetensors").read_bytes())
    args = ["--data", text, "--out", out, "--model", "gpt2-micro", "--n-embd", 32, "--block-size", 16,
            "--batch-size", 4, "--steps", 4, "--warmup-steps", 2, "--eval-interval", 100, "--eval-batches", 1,
            "--log-interval", 1, "--device", "cpu", "--resume"]
    assert_clean_error(run_module("picogpt.train", *args), "checkpoint" if how != "garbage" else "corrupt")


def test_a_fresh_run_refuses_to_overwrite_a_checkpoint(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("It is a truth universally acknowledged, that a single man in possession. " * 30)
    cfg = dict(data=str(text), out=str(tmp_path / "out"), model="gpt2-micro", n_embd=16, n_head=2, block_size=8,
               batch_size=2, steps=2, eval_interval=2, eval_batches=1, log_interval=1)
    Trainer(TrainConfig(**cfg), log=lambda *a: None).run()
    with pytest.raises(PicoGPTError, match="--resume"):
        Trainer(TrainConfig(**cfg), log=lambda *a: None)
    resumed = Trainer(TrainConfig(**{**cfg, "steps": 3, "resume": True}), log=lambda *a: None)
    resumed.run()
    steps = [json.loads(line)["step"] for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 2, 3, 3]  # each training step once, and the evaluations at 2 and 3
