"""Training: AdamW, the schedule and clipping against torch; accumulation; determinism; and
`python -m picogpt.train` killed mid-run and resumed, blowing up, and given bad input.

The torch numbers come from tests/fixtures/make_fixtures.py (committed); these tests need
neither torch nor a network. Everything trains a model of a few layers 32 wide for a few steps
on a few kilobytes of text, so the whole file runs in well under a minute on two cores.
"""

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import picogpt
from picogpt import data as D
from picogpt import safetensors
from picogpt.backend import PicoGPTError
from picogpt.optim import AdamW, clip_grad_norm, decays, global_norm, lr_at
from picogpt.train import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
TINY = FIXTURES / "tiny-gpt2"           # vocab 1000, n_ctx 64, 2 layers, 64 wide (transformers' save_pretrained)


# --- helpers ---------------------------------------------------------------------------

def write_text(path, n_lines=100, seed=0):
    """A few KB of word salad from a small vocabulary: ~1,300 GPT-2 tokens per 100 lines."""
    r = random.Random(seed)
    words = ("the king queen lord love death night day sword crown heart blood fair sweet speak "
             "come go thou thee my").split()
    path.write_text("\n".join(" ".join(r.choice(words) for _ in range(12)) for _ in range(n_lines)) + "\n")
    return path


def env():
    e = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    e.pop("PICOGPT_DEVICE", None)
    return e


def cli(module, *args, cwd=None, timeout=120):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          env=env(), cwd=cwd, timeout=timeout)


def assert_clean_error(r, *needles):
    """Exit 2, no traceback, one line on stderr that starts with 'error:' and says what went wrong."""
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, r.stderr
    assert r.stderr.rstrip("\n").endswith(errors[0]), f"the error is not the last thing said:\n{r.stderr}"
    for needle in needles:
        assert needle.lower() in errors[0].lower(), (needle, errors[0])
    return errors[0]


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


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    return write_text(tmp_path_factory.mktemp("text") / "words.txt")


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(FIXTURES / "reference.npz"))


def small_cfg(text, out, **kw):
    """A TrainConfig for a 2-layer, 32-wide model on 16-token windows."""
    base = dict(data=str(text), out=str(out), model="gpt2-micro", n_embd=32, block_size=16, batch_size=4,
                steps=4, warmup_steps=2, eval_interval=100, eval_batches=1, log_interval=1, device="cpu")
    return TrainConfig(**{**base, **kw})


def quiet(*_args, **_kw):
    pass


# --- against torch (fixtures) ------------------------------------------------------------

def test_loss_and_every_gradient_match_torch(ref):
    model = picogpt.load_model(TINY, device="cpu", dtype="float32")
    loss, grads = model.loss_and_grads(ref["loss_ids"], ref["loss_targets"])
    assert abs(loss - float(ref["loss"])) <= 1e-4 * abs(float(ref["loss"]))
    expected = {k[len("grad:"):]: v for k, v in ref.items() if k.startswith("grad:")}
    assert set(grads) == set(expected) == set(model.params)
    worst = max(expected, key=lambda k: rel_err(picogpt.asnumpy(grads[k]), expected[k]))
    assert rel_err(picogpt.asnumpy(grads[worst]), expected[worst]) <= 1e-4, worst
    for k, g in grads.items():
        assert g.dtype == np.float32, k


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_ten_adamw_steps_follow_torch(ref, dtype):
    """Warmup + cosine, decoupled weight decay on matrices only, global-norm clipping: the loss
    sequence of torch.optim.AdamW (float64) within 1e-4."""
    cfg = json.loads(str(ref["adam_config"]))
    model = picogpt.load_model(TINY, device="cpu", dtype=dtype)
    opt = AdamW(model.params, weight_decay=cfg["weight_decay"], betas=(cfg["beta1"], cfg["beta2"]), eps=cfg["eps"])
    losses, norms = [], []
    for step in range(cfg["total_steps"]):
        loss, grads = model.loss_and_grads(ref["adam_x"][step], ref["adam_y"][step])
        norms.append(clip_grad_norm(grads, cfg["grad_clip"]))
        opt.step(model.params, grads, lr_at(step, cfg["lr"], cfg["min_lr"], cfg["warmup_steps"], cfg["total_steps"]))
        losses.append(loss)
    assert max(norms) > cfg["grad_clip"]          # clipping really happened
    np.testing.assert_allclose(losses, ref["adam_losses"], rtol=0, atol=1e-4)


# --- optimizer pieces --------------------------------------------------------------------

def test_decays_matrices_not_biases_or_layernorm_gains():
    model = picogpt.load_model(TINY)
    decayed = {k for k, a in model.params.items() if decays(a)}
    for k in model.params:
        matrix = k in ("wte.weight", "wpe.weight") or k.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight"))
        assert (k in decayed) == matrix, k
    assert not any(k.endswith(".bias") for k in decayed)
    assert not any(".ln_" in k or k.startswith("ln_f") for k in decayed)
    assert AdamW(model.params).decay == decayed


def test_weight_decay_is_decoupled_and_skips_biases_and_gains():
    """With a zero gradient Adam's update is 0, so only the decay acts: p * (1 - lr * wd)."""
    model = picogpt.load_model(TINY)
    before = {k: a.copy() for k, a in model.params.items()}
    opt = AdamW(model.params, weight_decay=0.1)
    opt.step(model.params, {k: np.zeros_like(a) for k, a in model.params.items()}, lr=0.5)
    for k, a in model.params.items():
        if a.ndim >= 2:
            np.testing.assert_allclose(a, before[k] * (1 - 0.5 * 0.1), rtol=1e-6)
        else:
            np.testing.assert_array_equal(a, before[k])


def test_adamw_first_step_is_lr_times_sign():
    """Bias correction: after one step m_hat = g, v_hat = g^2, so the update is lr * g / (|g| + eps)."""
    p = {"w": np.array([1.0, -2.0, 3.0]), "b": np.array([0.5])}
    g = {"w": np.array([0.3, -0.001, 5.0]), "b": np.array([-2.0])}
    AdamW(p, weight_decay=0.0, eps=0.0).step(p, g, lr=0.1)
    np.testing.assert_allclose(p["w"], [0.9, -1.9, 2.9])
    np.testing.assert_allclose(p["b"], [0.6])


def test_lr_schedule_warms_up_linearly_then_cosine_to_min_lr():
    lr, min_lr, warm, total = 1e-3, 1e-4, 10, 110
    got = [lr_at(s, lr, min_lr, warm, total) for s in range(total + 5)]
    np.testing.assert_allclose(got[:warm], lr * np.arange(1, warm + 1) / warm)       # linear, reaching lr
    assert got[warm] == pytest.approx(lr)                                            # cosine starts at the peak
    assert got[warm + (total - warm) // 2] == pytest.approx((lr + min_lr) / 2)      # halfway down
    assert got[total] == pytest.approx(min_lr)                                       # ends at min_lr
    assert all(x == pytest.approx(min_lr) for x in got[total:])                      # and stays there
    assert all(a >= b for a, b in zip(got[warm:], got[warm + 1:]))                  # never rises after warmup
    assert lr_at(0, lr, min_lr, 0, total) == pytest.approx(lr)                       # no warmup: starts at lr


def test_clip_grad_norm_returns_the_norm_before_and_scales_to_max_norm():
    g = {"a": np.array([3.0, 0.0]), "b": np.array([[0.0, 4.0]])}      # global norm 5
    assert clip_grad_norm(g, 1.0) == pytest.approx(5.0)
    assert global_norm(g) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(g["a"] / g["b"][0, 1], [0.75, 0.0])   # direction kept
    g = {"a": np.array([3.0, 0.0]), "b": np.array([[0.0, 4.0]])}
    assert clip_grad_norm(g, 10.0) == pytest.approx(5.0)
    np.testing.assert_array_equal(g["a"], [3.0, 0.0])               # under the limit: untouched


# --- accumulation, determinism -------------------------------------------------------------

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


def test_kill_mid_run_then_resume_continues_like_an_uninterrupted_run(text, tmp_path):
    # The reference: the same command, never interrupted.
    r = cli("picogpt.train", "--data", text, "--out", tmp_path / "ref", *TRAIN_ARGS)
    assert r.returncode == 0, r.stderr
    ref_losses, ref_evals = read_log(tmp_path / "ref" / "log.jsonl")
    assert sorted(ref_losses) == list(range(1, 25))

    # The same command, killed with SIGKILL right after it logs step 10 -- that is, while it
    # evaluates and writes the step-10 checkpoint, or just after -- never at a clean boundary.
    out = tmp_path / "run"
    log = out / "log.jsonl"
    cmd = [sys.executable, "-m", "picogpt.train", "--data", str(text), "--out", str(out), *map(str, TRAIN_ARGS)]
    p = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
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
    r = cli("picogpt.train", "--data", text, "--out", out, *TRAIN_ARGS, "--resume")
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
    p = subprocess.Popen([sys.executable, "-c", code, str(target)], env=env())
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
    r = cli("picogpt.train", "--data", text, "--out", out, "--model", "gpt2-micro", "--n-embd", 32, "--block-size", 16,
            "--batch-size", 4, "--steps", 30, "--lr", 1e6, "--grad-clip", 0, "--warmup-steps", 0,
            "--log-interval", 1, "--eval-interval", 2, "--eval-batches", 1, "--device", "cpu")
    error = assert_clean_error(r, "step", "checkpoint")
    losses, _ = read_log(out / "log.jsonl")
    last_good = max(losses)
    assert all(math.isfinite(v) for v in losses.values())
    # The step the message names is the one that went bad, counted as the log and the progress
    # lines count (from 1): the step after the last one logged.
    assert f"step {last_good + 1}:" in error or f"step {last_good + 1} " in error, (error, last_good)
    # The checkpoint from before is there and loads.
    ckpt = out / "checkpoint.safetensors"
    _, meta, _ = safetensors.read_header(ckpt)
    assert 2 <= int(meta["step"]) <= last_good
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
    assert_clean_error(cli("picogpt.train", "--data", tmp_path / "empty.txt", "--out", tmp_path / "o", *SMALL), "empty")
    (tmp_path / "blank.txt").write_text("  \n\n ")
    assert_clean_error(cli("picogpt.train", "--data", tmp_path / "blank.txt", "--out", tmp_path / "o", *SMALL), "empty")


def test_data_file_too_short_for_one_window(tmp_path):
    (tmp_path / "short.txt").write_text("To be, or not to be, that is the question.\n")
    assert_clean_error(cli("picogpt.train", "--data", tmp_path / "short.txt", "--out", tmp_path / "o", *SMALL), "too few")


def test_missing_data(tmp_path):
    assert_clean_error(cli("picogpt.train", "--data", tmp_path / "nothing.txt", "--out", tmp_path / "o", *SMALL), "no data")


def test_block_size_longer_than_the_models_context(text, tmp_path):
    r = cli("picogpt.train", "--data", text, "--init", TINY, "--block-size", 128, "--out", tmp_path / "o",
            "--steps", 2, "--device", "cpu")
    assert_clean_error(r, "context", "64")


@pytest.mark.parametrize("lr", ["0", "-1", "nan"])
def test_learning_rate_must_be_positive(text, tmp_path, lr):
    assert_clean_error(cli("picogpt.train", "--data", text, "--out", tmp_path / "o", *SMALL, "--lr", lr), "learning rate")


def test_unknown_init(text, tmp_path):
    r = cli("picogpt.train", "--data", text, "--init", "gpt5", "--block-size", 16, "--out", tmp_path / "o", "--device", "cpu")
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
    assert_clean_error(cli("picogpt.train", *args), "checkpoint" if how != "garbage" else "corrupt")


# --- picogpt.data --------------------------------------------------------------------------

def test_data_cli_writes_train_val_and_meta(text, tmp_path):
    out = tmp_path / "prepared"
    r = cli("picogpt.data", text, "--out", out)
    assert r.returncode == 0, r.stderr
    ids = np.array(picogpt.get_tokenizer().encode(text.read_text()), dtype=np.uint16)
    train = np.fromfile(out / "train.bin", dtype=np.uint16)
    val = np.fromfile(out / "val.bin", dtype=np.uint16)
    n_val = max(1, int(len(ids) * 0.05))
    np.testing.assert_array_equal(val, ids[-n_val:])          # the LAST 5%, not a shuffled sample
    np.testing.assert_array_equal(train, ids[:-n_val])
    meta = json.loads((out / "meta.json").read_text())
    assert meta["tokens"] == len(ids) and meta["train_tokens"] == len(train) and meta["val_tokens"] == n_val
    assert meta["dtype"] == "uint16"
    assert not [f for f in out.iterdir() if ".tmp" in f.name]
    # A prepared folder and the text file give the trainer the same tokens.
    for a, b in zip(D.load_dataset(out), D.load_dataset(text)):
        np.testing.assert_array_equal(a, b)


def test_data_cli_val_fraction(text, tmp_path):
    r = cli("picogpt.data", text, "--out", tmp_path / "p", "--val-fraction", 0.2)
    assert r.returncode == 0, r.stderr
    n = len(picogpt.get_tokenizer().encode(text.read_text()))
    assert len(np.fromfile(tmp_path / "p" / "val.bin", dtype=np.uint16)) == int(n * 0.2)
    assert_clean_error(cli("picogpt.data", text, "--out", tmp_path / "q", "--val-fraction", 1.5), "fraction")


def test_data_cli_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    assert_clean_error(cli("picogpt.data", tmp_path / "empty.txt", "--out", tmp_path / "a"), "empty")
    assert_clean_error(cli("picogpt.data", tmp_path / "missing.txt", "--out", tmp_path / "b"), "missing.txt")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    assert_clean_error(cli("picogpt.data", tmp_path / "latin1.txt", "--out", tmp_path / "c"), "utf-8")


def test_get_batch_targets_are_inputs_shifted_by_one():
    ids = np.arange(100, dtype=np.uint16)
    x, y = D.get_batch(ids, 8, 10, np.random.default_rng(0))
    assert x.shape == y.shape == (8, 10) and x.dtype == np.int64
    np.testing.assert_array_equal(y, x + 1)
    assert x.min() >= 0 and y.max() <= 99


def test_a_fresh_run_refuses_to_overwrite_a_checkpoint(tmp_path):
    from picogpt.train import TrainConfig, Trainer

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


def test_model_loss_equals_the_cross_entropy_of_the_logits(ref):
    from picogpt.layers import cross_entropy_forward

    model = picogpt.load_model(FIXTURES / "tiny-gpt2", dtype="float64")
    x, y = ref["loss_ids"], ref["loss_targets"]
    logits = model.forward(x)
    expected = float(cross_entropy_forward(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))[0])
    assert abs(model.loss(x, y) - expected) < 1e-10
    assert abs(model.loss(x, y) - float(ref["loss"])) < 1e-6
