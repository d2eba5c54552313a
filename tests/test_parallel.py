"""Data parallelism (picogpt/parallel.py): the flat buffer, ZeRO-1's slice update, dropout per global
row, and real MPI jobs (`mpiexec -n 2` in a subprocess) against one process with the whole batch.

The MPI tests need mpi4py and an MPI (`pip install ".[mpi]"`: the MPICH wheel provides mpiexec);
they are skipped, saying so, where mpi4py does not import. The rest is NumPy alone.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, quiet, subprocess_env, write_text

from picogpt import parallel as P
from picogpt import safetensors
from picogpt.errors import PicoGPTError
from picogpt.optim import AdamW, adamw_update, clip_grad_norm
from picogpt.train import TrainConfig, Trainer

HAVE_MPI = importlib.util.find_spec("mpi4py") is not None and shutil.which("mpiexec") is not None
needs_mpi = pytest.mark.skipif(not HAVE_MPI, reason="needs mpi4py and mpiexec: pip install '.[mpi]'")


def random_params(seed=0, dtype=np.float32):
    r = np.random.default_rng(seed)
    shapes = {"wte.weight": (11, 4), "h.0.ln_1.weight": (4,), "h.0.attn.c_attn.weight": (4, 12),
              "h.0.attn.c_attn.bias": (12,), "ln_f.bias": (4,)}
    return {k: r.normal(size=s).astype(dtype) for k, s in shapes.items()}


# --- NumPy alone ------------------------------------------------------------------------------

def test_flatten_then_unflatten_gives_back_every_array_and_views_share_the_buffer():
    params = random_params()
    layout = P.FlatLayout.of(params, parts=3)
    buf = layout.flatten(params)
    assert layout.size == sum(a.size for a in params.values()) and layout.padded % 3 == 0
    assert buf.shape == (layout.padded,) and not buf[layout.size:].any()     # the padding is zeros
    views = P.unflatten(buf, params)
    for k, a in params.items():
        assert views[k].shape == a.shape and np.array_equal(views[k], a)
    views["h.0.attn.c_attn.bias"][3] = 42.0                                  # a view writes the buffer
    assert buf[layout.offsets["h.0.attn.c_attn.bias"] + 3] == 42.0
    assert np.array_equal(P.flatten(params, ["ln_f.bias", "wte.weight"])[:4], params["ln_f.bias"])
    slices = [layout.shard(r) for r in range(3)]
    assert slices[0].start == 0 and slices[-1].stop == layout.padded
    assert all(a.stop == b.start for a, b in zip(slices, slices[1:]))


@pytest.mark.parametrize("cuts", [(0, 50, 200), (0, 7, 61, 100)])
def test_adamw_on_any_slices_of_the_flat_buffer_equals_adamw_per_tensor_exactly(cuts):
    """ZeRO-1 cuts the flat buffer anywhere, even inside a tensor; each number's update is the same."""
    params, names = random_params(1), None
    grads = [{k: g.astype(np.float32) for k, g in random_params(s).items()} for s in (2, 3, 4)]
    layout = P.FlatLayout.of(params)
    cuts = list(cuts) + [layout.size]
    ref, opt = {k: a.copy() for k, a in params.items()}, AdamW(params, names, weight_decay=0.1)
    flat = layout.flatten(params)
    m, v = np.zeros_like(flat), np.zeros_like(flat)
    decay = layout.mask(k for k in params if params[k].ndim >= 2)
    for t, g in enumerate(grads, start=1):
        lr = 1e-2 / t
        opt.step(ref, g, lr)
        gflat = layout.flatten(g)
        for a, b in zip(cuts, cuts[1:]):
            adamw_update(flat[a:b], gflat[a:b], m[a:b], v[a:b], lr, t, 0.1, (0.9, 0.95), 1e-8, decay[a:b])
        for k, view in layout.unflatten(flat).items():
            assert np.array_equal(view, ref[k]), (t, k)


def test_zero_adamw_of_one_rank_equals_adamw_and_its_state_dict_is_adamws():
    params = random_params(5)
    ref = {k: a.copy() for k, a in params.items()}
    opt, zero = AdamW(ref), P.ZeroAdamW(P.World(), params)
    for s in (6, 7):
        g = random_params(s)
        opt.step(ref, g, 3e-3)
        zero.step(params, P.FlatLayout.of(params).flatten(g), 3e-3)
    for k in params:
        assert np.array_equal(params[k], ref[k]), k
    (za, zs), (oa, os_) = zero.state_dict(), opt.state_dict()
    assert zs == os_ and set(za) == set(oa) and all(np.array_equal(za[k], oa[k]) for k in oa)
    again = P.ZeroAdamW(P.World(), params)
    again.load_state_dict(oa, os_)
    assert again.t == 2 and np.array_equal(again.m, zero.m) and np.array_equal(again.v, zero.v)
    assert zero.nbytes() == P.adamw_nbytes(params, list(params)) + 2 * 4 * (zero.layout.padded - zero.layout.size)


def test_gradient_sum_weights_micro_batches_by_their_token_counts():
    params = random_params()
    layout = P.FlatLayout.of(params)
    g1, g2 = random_params(1), random_params(2)
    acc = P.GradientSum(layout, np, np.float32)
    acc.add(g1, 2.0, 3)
    acc.add(g2, 4.0, 1)
    loss, count, grad = acc.reduce(P.World())
    assert count == 4 and loss == pytest.approx((2.0 * 3 + 4.0 * 1) / 4)
    for k, view in layout.unflatten(grad).items():
        np.testing.assert_allclose(view, (3 * g1[k] + g2[k]) / 4, rtol=1e-6)


def test_gradient_sum_reset_reuses_its_buffer_and_starts_from_zero():
    params = random_params()
    layout = P.FlatLayout.of(params)
    acc = P.GradientSum(layout, np, np.float32)
    acc.add(random_params(1), 2.0, 3)
    acc.reduce(P.World())
    buf = acc.buf
    acc.reset()                                    # the next step: only its own micro-batch counts
    acc.add(random_params(2), 4.0, 2)
    loss, count, grad = acc.reduce(P.World())
    assert acc.buf is buf and count == 2 and loss == pytest.approx(4.0)
    for k, view in layout.unflatten(grad).items():
        np.testing.assert_allclose(view, random_params(2)[k], rtol=1e-6)
    acc.reset()
    acc.add(None, 1.0, 5)                          # a skipped (overflowed) micro-batch: no gradient
    _, _, grad = acc.reduce(P.World())
    assert not grad.any()


def test_clip_flat_equals_clip_grad_norm_with_the_norm_summed_in_float64():
    g = random_params(3)
    flat = P.flatten(g)
    exact = float(np.sqrt(sum((a.astype(np.float64) ** 2).sum() for a in g.values())))
    norm = P.clip_flat(flat, 0.5)
    assert norm == pytest.approx(exact, rel=1e-7)
    ref = {k: a.copy() for k, a in g.items()}
    assert clip_grad_norm(ref, 0.5) == pytest.approx(norm, rel=1e-6)
    for k, view in P.unflatten(flat, g).items():
        np.testing.assert_allclose(view, ref[k], rtol=1e-6)
    assert P.clip_flat(flat, 10.0) == pytest.approx(0.5, rel=1e-6)      # below max_norm: unchanged
    assert float(np.sqrt((flat.astype(np.float64) ** 2).sum())) == pytest.approx(0.5, rel=1e-6)


def test_dropout_streams_give_each_global_row_the_same_mask_however_the_batch_is_split():
    whole = P.RowStreams(np, 0, 5, range(0, 6)).random((6, 3, 4))
    parts = [P.RowStreams(np, 0, 5, rows).random((len(rows), 3, 4)) for rows in (range(0, 2), range(2, 3), range(3, 6))]
    assert np.array_equal(np.concatenate(parts), whole)
    assert not np.array_equal(whole, P.RowStreams(np, 0, 6, range(0, 6)).random((6, 3, 4)))   # another step
    assert not np.array_equal(whole[0], whole[1])                                           # another row
    # rank r of N takes rows (micro * N + r) * B ...: the global batch is micro-batch-major
    w = P.World()
    w.rank, w.size = 1, 3
    assert list(P.my_rows(w, 2, micro=1)) == [8, 9]


def test_a_world_of_one_process_does_nothing_and_needs_no_mpi(monkeypatch):
    for var in P.LAUNCHER_VARS:
        monkeypatch.delenv(var, raising=False)
    w = P.world()
    assert (w.rank, w.size, w.local_rank, w.transport) == (0, 1, 0, "none")
    buf = np.arange(4.0)
    assert w.allreduce(buf) is buf and np.array_equal(w.reduce_scatter(buf), buf)
    assert np.array_equal(w.sum([1.0, 2.0]), [1.0, 2.0]) and w.allgather_object({"a": 1}) == [{"a": 1}]


def test_mpiexec_without_mpi4py_says_how_to_install_it(monkeypatch):
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)       # `import mpi4py` now raises ImportError
    with pytest.raises(PicoGPTError, match=r'mpi4py is not installed: pip install "\.\[mpi\]"'):
        P.world()


def test_agreement_names_the_field_that_differs():
    class TwoRanks(P.World):
        def allgather_object(self, obj):
            return [obj, {**obj, "config": {**obj["config"], "lr": 0.5}}]

    facts = {"config": {"lr": 0.1, "steps": 3}, "data": "abc", "picogpt": P.source_fingerprint()}
    P.check_agreement(P.World(), facts)
    with pytest.raises(P.AllRanksError, match=r"rank 1 and rank 0 disagree on the config lr \(0\.5 vs 0\.1\)"):
        P.check_agreement(TwoRanks(), facts)


def test_data_fingerprint_sees_a_changed_file(tmp_path):
    write_text(tmp_path / "a.txt")
    before = P.data_fingerprint(tmp_path)
    assert before == P.data_fingerprint(tmp_path)
    with open(tmp_path / "a.txt", "a") as f:
        f.write("more")
    assert P.data_fingerprint(tmp_path) != before


# --- real MPI jobs ---------------------------------------------------------------------------------
# Every job runs `python -m picogpt.train` through a small driver (below) under `mpiexec -n 2`, with one
# BLAS thread per rank; the one-process runs it is compared with run in this process.

DRIVER = """
import os, sys
sys.path.insert(0, {tests!r})
if os.environ.get("PICOGPT_SIMULATED_GPU") == "1":  # GPU tests without a GPU: the simulated device
    from simulated_gpu import install
    install()
from picogpt import train as T

FAIL_AT = int(os.environ.get("FAIL_AT_STEP", "0"))
if FAIL_AT:  # a deliberately failing rank: rank 1 raises in step FAIL_AT
    step = T.Trainer.step

    def failing_step(self):
        if self.world.rank == 1 and self.step_num + 1 == FAIL_AT:
            raise RuntimeError(f"deliberate failure on rank 1 in step {{FAIL_AT}}")
        return step(self)

    T.Trainer.step = failing_step
sys.exit(T.main(sys.argv[1:]))
"""

# A 2-layer, 32-wide model on 16-token windows; constant learning rate (min_lr = lr), so a run cut
# short and resumed follows the same schedule as one run through.
FLAGS = dict(model="gpt2-micro", n_embd=32, block_size=16, steps=4, warmup_steps=0, lr=3e-3, min_lr=3e-3,
             eval_interval=2, eval_batches=2, log_interval=1, device="cpu")


@pytest.fixture(scope="module")
def mpi_env(tmp_path_factory):
    """(data file, driver script, environment) shared by the MPI tests."""
    tmp = tmp_path_factory.mktemp("mpi")
    driver = tmp / "driver.py"
    driver.write_text(DRIVER.format(tests=str(ROOT / "tests")))
    # Open MPI (on the GPU machines) refuses to start as root, as containers run, unless told twice.
    env = subprocess_env(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
                         OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return write_text(tmp / "words.txt", n_lines=200), driver, env


def mpiexec(mpi_env, out, n=2, timeout=120, extra_env=None, **flags):
    text, driver, env = mpi_env
    args = [shutil.which("mpiexec"), "-n", str(n), sys.executable, str(driver), "--out", str(out)]
    for k, v in {**FLAGS, "data": text, **flags}.items():
        if v is True:
            args.append("--" + k.replace("_", "-"))
        elif v is not False:
            args += ["--" + k.replace("_", "-"), str(v)]
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env={**env, **(extra_env or {})})


def one_process(mpi_env, out, **flags):
    Trainer(TrainConfig(out=str(out), **{**FLAGS, "data": str(mpi_env[0]), **flags}), log=quiet).run()


def results(out):
    """(per-step losses, evaluations, parameters, AdamW moments) of a finished run."""
    losses, evals = {}, {}
    for line in (Path(out) / "log.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("eval"):
            evals[rec["step"]] = (rec["train_loss"], rec["val_loss"])
        else:
            losses[rec["step"]] = rec["loss"]
    arrays = safetensors.load(Path(out) / "checkpoint.safetensors")
    return losses, evals, {k: np.asarray(a, np.float64) for k, a in arrays.items()}


def assert_same_run(a, b, tol=1e-5):
    (la, ea, pa), (lb, eb, pb) = results(a), results(b)
    assert la.keys() == lb.keys() and ea.keys() == eb.keys() and pa.keys() == pb.keys()
    for s in la:
        assert abs(la[s] - lb[s]) <= tol * abs(lb[s]), (s, la[s], lb[s])
    for s in ea:
        np.testing.assert_allclose(ea[s], eb[s], rtol=tol)
    for k in pa:
        # Parameters (of order 0.01 to 1) within tol; AdamW's moments (m ~ g, v ~ g^2, far smaller)
        # within tol of their array's largest entry. (A parameter whose true gradient is 0, such as
        # the key bias, moves by rounding noise / (sqrt(v) + eps): far below tol, but not a relative 1e-5.)
        scale = 1.0 if k.startswith("param:") else float(np.abs(pb[k]).max())
        assert float(np.abs(pa[k] - pb[k]).max()) <= tol * scale, k


def ok(r):
    assert r.returncode == 0, (r.returncode, r.stdout[-2000:], r.stderr[-3000:])
    return r


@needs_mpi
@pytest.mark.slow
@pytest.mark.parametrize("flags", [dict(), dict(dropout=0.1, grad_accum=2)], ids=["plain", "dropout+accum"])
def test_two_ranks_with_batch_b_equal_one_process_with_batch_2b(mpi_env, tmp_path, flags):
    one_process(mpi_env, tmp_path / "one", batch_size=4, **flags)
    r = ok(mpiexec(mpi_env, tmp_path / "two", batch_size=2, **flags))
    assert_same_run(tmp_path / "two", tmp_path / "one")
    assert "2 ranks" in r.stdout and r.stdout.count("step      1/4") == 1   # rank 0 alone prints


@needs_mpi
@pytest.mark.slow
def test_zero1_equals_plain_data_parallelism_with_moments_split(mpi_env, tmp_path):
    ok(mpiexec(mpi_env, tmp_path / "plain", batch_size=2, dropout=0.1))
    r = ok(mpiexec(mpi_env, tmp_path / "zero", batch_size=2, dropout=0.1, zero=1))
    assert_same_run(tmp_path / "zero", tmp_path / "plain")
    assert "ZeRO-1: 1/2 of" in r.stdout


@needs_mpi
@pytest.mark.slow
def test_a_two_rank_checkpoint_resumed_by_one_process_continues_exactly(mpi_env, tmp_path):
    one_process(mpi_env, tmp_path / "whole", batch_size=4, dropout=0.1)
    ok(mpiexec(mpi_env, tmp_path / "cut", batch_size=2, dropout=0.1, zero=1, steps=2))
    one_process(mpi_env, tmp_path / "cut", batch_size=4, dropout=0.1, resume=True)
    assert_same_run(tmp_path / "cut", tmp_path / "whole")


@needs_mpi
def test_a_rank_that_raises_ends_the_whole_job_with_its_message(mpi_env, tmp_path):
    t0 = time.perf_counter()
    r = mpiexec(mpi_env, tmp_path / "out", batch_size=2, steps=50, timeout=60, extra_env={"FAIL_AT_STEP": "2"})
    assert time.perf_counter() - t0 < 30
    assert r.returncode != 0
    assert "rank 1/2:" in r.stderr and "RuntimeError: deliberate failure on rank 1 in step 2" in r.stderr, r.stderr


@needs_mpi
def test_ranks_that_disagree_refuse_to_start_naming_the_difference(mpi_env, tmp_path):
    text, driver, env = mpi_env
    common = [sys.executable, str(driver), "--data", str(text), "--out", str(tmp_path / "out"), "--model", "gpt2-micro"]
    r = subprocess.run([shutil.which("mpiexec"), "-n", "1", *common, "--lr", "1e-3", ":", "-n", "1", *common, "--lr", "2e-3"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 2, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "rank 1 and rank 0 disagree on the training config lr (0.002 vs 0.001)" in errors[0], r.stderr
    assert not (tmp_path / "out").exists()


@needs_mpi
@pytest.mark.gpu
@pytest.mark.slow
def test_gpu_ranks_equal_one_gpu_process(mpi_env, tmp_path):
    """On the simulated device (CI) the gradients go through the host-staged path; on a machine
    with GPUs, through NCCL where it loads. The one process runs on the GPU too: dropout masks
    come from CuPy's generator there, which draws other numbers than NumPy's for the same seed."""
    one_process(mpi_env, tmp_path / "one", batch_size=4, dropout=0.1, zero=1, device="gpu")
    r = ok(mpiexec(mpi_env, tmp_path / "gpu", batch_size=2, dropout=0.1, zero=1, device="gpu"))
    assert_same_run(tmp_path / "gpu", tmp_path / "one", tol=1e-4)
    assert "gradients by nccl" in r.stdout or "gradients by mpi via host" in r.stdout


@needs_mpi
@pytest.mark.slow
def test_sft_examples_on_two_ranks_equal_one_process_with_the_whole_batch(mpi_env, tmp_path):
    """Examples (padded, their targets -100 where not trained): each rank scores a different number
    of targets, and the token-weighted average still equals one process's. In float64: in float32,
    AdamW turns the rounding noise of a gradient entry near zero into up to lr x noise / eps, which
    here reached 1.1e-5 on one parameter; this test is about the averaging, not float32 rounding."""
    src = tmp_path / "src"
    src.mkdir()
    lines = (ROOT / "examples" / "dialogue" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    (src / "train.jsonl").write_text("\n".join(lines[:40]) + "\n", encoding="utf-8")
    (src / "val.jsonl").write_text("\n".join(lines[40:56]) + "\n", encoding="utf-8")
    r = subprocess.run([sys.executable, "-m", "picogpt.data", "--task", "sft", str(src / "train.jsonl"), "--val",
                        str(src / "val.jsonl"), "--out", str(tmp_path / "data")], capture_output=True, text=True,
                       env=mpi_env[2], timeout=120)
    assert r.returncode == 0, r.stderr
    flags = dict(data=str(tmp_path / "data"), block_size=32, dropout=0.1, grad_accum=2, dtype="float64")
    one_process(mpi_env, tmp_path / "one", batch_size=4, **flags)
    ok(mpiexec(mpi_env, tmp_path / "two", batch_size=2, **flags))
    assert_same_run(tmp_path / "two", tmp_path / "one")
