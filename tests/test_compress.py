"""Compression: pruning (magnitude masks, head gates and head removal), distillation, mixed precision.

The torch references are tests/fixtures/make_compress.py's (compress.npz): float64 autograd
gradients of the whole model with head gates, of the distillation KL, and of a whole student
distilled from a teacher. The ops' own backwards are gradchecked on hypothesis-drawn shapes.
"""

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from helpers import FIXTURES, TINY, assert_clean_error, host, normal, quiet, rel_err, run_module, tiny, write_text

import picogpt
from picogpt import adaptive as AS
from picogpt import amp
from picogpt import distill as DI
from picogpt import prune as P
from picogpt.backend import xp_for
from picogpt.config import GPT2Config
from picogpt.errors import PicoGPTError
from picogpt.gates import gate_name, head_gate_backward, head_gate_forward
from picogpt.gradcheck import check_op
from picogpt.train import TrainConfig, Trainer

seeds = st.integers(0, 2**32 - 1)


@pytest.fixture(scope="module")
def ref():
    with np.load(FIXTURES / "compress.npz") as npz:
        return dict(npz)


def assert_grads_match(grads, loss, ref, label):
    assert abs(loss - float(ref[f"{label}_loss"])) <= 1e-6 * abs(float(ref[f"{label}_loss"]))
    names = [k.split(":", 1)[1] for k in ref if k.startswith(f"{label}_grad:")]
    assert len(names) >= 7
    for name in names:
        assert rel_err(grads[name], ref[f"{label}_grad:{name}"]) <= 1e-4, name


@pytest.fixture(scope="module")
def four_heads(tmp_path_factory):
    """A tiny random GPT-2 with GPT-2's vocabulary and 4 heads per layer, saved, and a text."""
    folder = tmp_path_factory.mktemp("compress")
    picogpt.save_model(picogpt.init_model(GPT2Config(n_layer=2, n_head=4, n_embd=32, n_ctx=64), seed=0),
                       folder / "model")
    write_text(folder / "text.txt", n_lines=60)
    return folder


def trainer(folder, out, device="cpu", **kw):
    cfg = dict(data=str(folder / "text.txt"), out=str(out), block_size=16, batch_size=2, steps=4,
               warmup_steps=1, eval_interval=100, eval_batches=1, log_interval=100, device=device, seed=1)
    return Trainer(TrainConfig(**{**cfg, **kw}), log=quiet)


# --- head gates --------------------------------------------------------------------------------

@given(B=st.integers(1, 3), H=st.integers(1, 4), T=st.integers(1, 5), D=st.integers(1, 4), seed=seeds)
def test_head_gate_backward_gradchecks(B, H, T, D, seed):
    result = check_op(head_gate_forward, head_gate_backward, [normal(seed, (B, H, T, D)), normal(seed + 1, (H,))])
    assert result.ok, result.report()


@pytest.mark.parametrize("device", ["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def test_whole_model_gradients_with_head_gates_match_torch(ref, device):
    model = tiny(device, "float64")
    for k in ref:
        if k.startswith("gates_param:"):
            model.params[k.split(":", 1)[1]] = model.xp.asarray(ref[k].astype(np.float64))
    loss, grads = model.loss_and_grads(ref["ids"], ref["targets"], wanted=set(model.params))
    assert_grads_match(grads, loss, ref, "gates")


@pytest.mark.parametrize("device", ["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def test_a_head_pruned_model_gives_the_logits_of_its_gates_at_zero(tmp_path, device):
    model = tiny(device)
    ids = np.arange(30).reshape(2, 15) * 7 % 1000
    heads = {0: [1, 3], 1: [0]}
    pruned = P.remove_heads(model, heads)
    assert pruned.config.pruned_heads == ((1, 3), (0,)) and [pruned.config.heads(i) for i in (0, 1)] == [2, 3]
    assert pruned.params["h.0.attn.c_attn.weight"].shape == (64, 3 * 32)
    assert pruned.params["h.0.attn.c_proj.weight"].shape == (32, 64)
    P.add_gates(model)
    for i, hs in heads.items():
        model.params[gate_name(i)][np.array(hs)] = 0.0
    assert rel_err(pruned.forward(ids), model.forward(ids)) <= 1e-6
    # the same again through a folder: smaller on disk, and greedy generation with the KV cache agrees
    picogpt.save_model(pruned, tmp_path / "p")
    picogpt.save_model(tiny(), tmp_path / "full")
    assert (tmp_path / "p" / "model.safetensors").stat().st_size < (tmp_path / "full" / "model.safetensors").stat().st_size
    back = picogpt.load_model(tmp_path / "p", device=device)
    assert json.loads((tmp_path / "p" / "config.json").read_text())["pruned_heads"] == {"0": [1, 3], "1": [0]}
    assert rel_err(back.forward(ids), model.forward(ids)) <= 1e-6
    np.testing.assert_array_equal(host(back.generate(ids[:1, :5], 6)), host(model.generate(ids[:1, :5], 6)))
    assert back.num_params() == back.config.num_params() < tiny().num_params()


def test_pruning_twice_counts_heads_by_their_original_index():
    once = P.remove_heads(tiny(), {0: [1]})                 # layer 0 keeps heads 0, 2, 3
    twice = P.remove_heads(once, {0: [1], 1: [2, 3]})       # current head 1 of layer 0 is original head 2
    assert twice.config.pruned_heads == ((1, 2), (2, 3))
    with pytest.raises(PicoGPTError, match="at least one must stay"):
        P.remove_heads(twice, {0: [0, 1]})


def test_head_importance_is_the_summed_gate_gradient_and_the_least_important_go():
    model = tiny()
    x, y = np.arange(18).reshape(2, 9), np.arange(1, 19).reshape(2, 9)
    imp = P.head_importance(model, [(x, y), (x, y)])
    assert gate_name(0) not in model.params                 # the gates were only lent
    P.add_gates(model)
    _, g = model.loss_and_grads(x, y, wanted={gate_name(0), gate_name(1)})
    np.testing.assert_allclose(imp[0], 2 * np.abs(g[gate_name(0)]), rtol=1e-5)
    chosen = P.heads_to_prune([np.array([1.0, 0.1, 0.5, 0.2]), np.array([0.3, 0.01, 0.02, 0.4])], 0.5)
    assert chosen == {0: [1, 3], 1: [1, 2]}
    assert all(len(h) == 3 for h in P.heads_to_prune(imp, 0.99).values())   # each layer keeps one


# --- magnitude pruning ----------------------------------------------------------------------------

@pytest.mark.parametrize("scope", ["layer", "global"])
def test_magnitude_masks_zero_the_smallest_weights(scope):
    model = tiny()
    names = P.prunable(model.config)
    masks = P.magnitude_masks(model.params, names, 0.3, scope)
    sizes = {k: model.params[k].size for k in names}
    if scope == "layer":
        assert all(int((~masks[k]).sum()) == int(0.3 * sizes[k]) for k in names)
    else:
        assert sum(int((~m).sum()) for m in masks.values()) == int(0.3 * sum(sizes.values()))
        kept = min(np.abs(model.params[k][masks[k]]).min() for k in names)
        gone = max(np.abs(model.params[k][~masks[k]]).max() for k in names)
        assert gone <= kept   # one threshold across all matrices
    P.apply_masks(model.params, masks)
    assert abs(P.sparsity_of(model.params, names) - 0.3) < 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def test_pruned_weights_stay_zero_through_fine_tuning(four_heads, tmp_path, device):
    assert run_module("picogpt.prune", "--model", four_heads / "model", "--sparsity", "0.5", "--out",
                      tmp_path / "sparse").returncode == 0
    t = trainer(four_heads, tmp_path / "ft", device, init=str(tmp_path / "sparse"), weight_decay=0.5, lr=1e-2)
    zero = {k: host(t.model.params[k]) == 0 for k in P.prunable(t.model.config)}
    assert all(abs(z.mean() - 0.5) < 0.01 for z in zero.values())
    before = {k: host(t.model.params[k]).copy() for k in zero}
    t.run()
    for k, z in zero.items():
        after = host(t.model.params[k])
        assert (after[z] == 0).all(), k
        assert (after[~z] != before[k][~z]).mean() > 0.9, k       # the others did train
    again = trainer(four_heads, tmp_path / "ft2", init=str(tmp_path / "ft"), steps=2)   # the masks travel on
    assert again.masks is not None and all((host(again.masks[k]) == ~zero[k]).all() for k in zero)


@pytest.mark.slow
def test_the_prune_command_removes_heads_ranked_on_data(four_heads, tmp_path):
    r = run_module("picogpt.prune", "--model", four_heads / "model", "--heads", "0.25", "--data",
                   four_heads / "text.txt", "--batches", "2", "--block-size", "16", "--out", tmp_path / "h")
    assert r.returncode == 0, r.stderr
    model = picogpt.load_model(tmp_path / "h")
    assert sum(model.config.heads(i) for i in range(2)) == 6 and "removed 2 of 8 heads" in r.stdout
    t = trainer(four_heads, tmp_path / "ft", init=str(tmp_path / "h"), steps=2)   # and it trains
    assert np.isfinite(t.run()["val_loss"])


@pytest.mark.parametrize("args, words", [
    (["--sparsity", "1.0"], ["sparsity", "below 1"]),
    (["--sparsity", "-0.1"], ["sparsity", "at least 0"]),
    (["--heads", "0.3"], ["--data"]),
    ([], ["--sparsity", "--heads"]),
    (["--sparsity", "0.2", "--heads", "0.2"], ["one of"]),
])
def test_bad_pruning_inputs_are_one_sentence(tmp_path, capsys, args, words):
    assert P.main(["--model", str(TINY), *args, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and all(w in err for w in words), err


# --- distillation ------------------------------------------------------------------------------

@given(N=st.integers(1, 4), V=st.integers(1, 6), T=st.floats(0.5, 4.0), seed=seeds)
def test_distillation_kl_backward_gradchecks(N, V, T, seed):
    w = np.abs(normal(seed + 2, (N,)))
    result = check_op(lambda s, t: DI.kl_forward(s, t, T, w), DI.kl_backward,
                      [normal(seed, (N, V), 2.0), normal(seed + 1, (N, V), 2.0)], wrt=[0])
    assert result.ok, result.report()


def test_the_kl_and_its_gradient_match_torch(ref):
    loss, cache = DI.kl_forward(ref["kl_student"], ref["kl_teacher"], float(ref["kl_T"]), ref["kl_weights"])
    assert abs(float(loss) - float(ref["kl_loss"])) <= 1e-12 * max(1.0, abs(float(ref["kl_loss"])))
    assert rel_err(DI.kl_backward(1.0, cache), ref["kl_grad"]) <= 1e-10


def test_the_kl_is_zero_for_the_same_logits_and_positive_otherwise():
    s = normal(0, (3, 5))
    assert abs(float(DI.kl_forward(s, s, 2.0, np.ones(3))[0])) < 1e-12
    assert float(DI.kl_forward(s, s + normal(1, (3, 5)), 2.0, np.ones(3))[0]) > 0


def distill_pair(device="cpu", dtype="float64"):
    student = tiny(device, dtype)
    teacher = tiny(device, dtype)
    teacher.params["wte.weight"] = teacher.params["wte.weight"] * 2
    return student, teacher


@pytest.mark.parametrize("device", ["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def test_whole_student_distillation_gradients_match_torch(ref, device):
    student, teacher = distill_pair(device)
    xp = student.xp
    loss, grads = DI.loss_and_grads(student, teacher, xp.asarray(ref["ids"]), xp.asarray(ref["targets"]), 2.0, 0.3)
    assert_grads_match(grads, loss, ref, "distill")


def test_chunks_do_not_change_the_distillation_loss_and_alpha_0_is_plain_training():
    rng = np.random.default_rng(3)
    hs, ht = rng.normal(size=(7, 4)), rng.normal(size=(7, 5))
    W, Wt, tg = rng.normal(size=(9, 4)), rng.normal(size=(9, 5)), rng.integers(0, 9, 7)
    tg[2] = -100
    one = DI.head_loss(hs, W, ht, Wt, tg, 1.5, 0.4, chunk_rows=1)
    all_ = DI.head_loss(hs, W, ht, Wt, tg, 1.5, 0.4, chunk_rows=7)
    for a, b in zip(one, all_):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    student, teacher = distill_pair()
    x, y = np.arange(18).reshape(2, 9), np.arange(1, 19).reshape(2, 9)
    loss, grads = DI.loss_and_grads(student, teacher, x, y, 3.0, 0.0)
    plain_loss, plain = student.loss_and_grads(x, y)
    assert abs(loss - plain_loss) < 1e-12 and all(rel_err(grads[k], plain[k]) < 1e-10 for k in plain)


@pytest.mark.slow
def test_training_with_a_teacher_lowers_the_distillation_loss(four_heads, tmp_path):
    t = trainer(four_heads, tmp_path / "d", init="scratch", model="gpt2-micro", teacher=str(four_heads / "model"),
                distill_temperature=2.0, distill_alpha=0.7, lr=3e-3, steps=6)
    losses = [t.step()["loss"] for _ in range(6)]
    assert losses[-1] < losses[0]


@pytest.mark.slow
def test_a_teacher_with_another_vocabulary_is_one_sentence(four_heads, tmp_path):
    r = run_module("picogpt.train", "--data", four_heads / "text.txt", "--teacher", TINY, "--model", "gpt2-micro",
                   "--steps", "1", "--block-size", "16", "--out", tmp_path / "o")
    assert_clean_error(r, "another vocabulary", "1,000")


@pytest.mark.parametrize("flags, words", [(["--distill-temperature", "0"], ["temperature", "> 0"]),
                                          (["--distill-alpha", "1.5"], ["alpha", "between 0"])])
def test_bad_distillation_settings_are_one_sentence(four_heads, tmp_path, flags, words, capsys):
    from picogpt.train import main
    assert main(["--data", str(four_heads / "text.txt"), "--teacher", str(four_heads / "model"), *flags,
                 "--model", "gpt2-micro", "--steps", "1", "--block-size", "16", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and all(w in err for w in words), err


# --- mixed precision -----------------------------------------------------------------------------

def amp_trainer(four_heads, out, device="cpu", **kw):
    return trainer(four_heads, out, device, **{"init": "scratch", "model": "gpt2-micro", "n_embd": 32, "lr": 3e-3,
                                               "steps": 6, **kw})


@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def test_float16_losses_track_float32(four_heads, tmp_path, device):
    full = amp_trainer(four_heads, tmp_path / "32", device)
    half = amp_trainer(four_heads, tmp_path / "16", device, dtype="float16")
    assert half.model.dtype == np.float32              # the master weights
    a = [full.step()["loss"] for _ in range(6)]
    b = [half.step()["loss"] for _ in range(6)]
    np.testing.assert_allclose(b, a, rtol=5e-3)
    assert a[-1] < a[0]


@pytest.mark.slow
def test_an_overflow_skips_exactly_that_step_and_halves_the_scale(four_heads, tmp_path, monkeypatch):
    said = []
    t = amp_trainer(four_heads, tmp_path / "o", dtype="float16", loss_scale=1024.0, loss_scale_window=3)
    t.log = said.append
    real = amp.loss_and_grads

    def overflow_at_step_3(params, config, ids, targets, scale, *a, **kw):   # a real overflow, at step 3 only
        return real(params, config, ids, targets, 1e30 if t.step_num == 2 else scale, *a, **kw)
    monkeypatch.setattr(amp, "loss_and_grads", overflow_at_step_3)
    scales, params, adam_t = [], [], []
    for _ in range(6):
        before = {k: host(a).copy() for k, a in t.model.params.items()}
        info = t.step()
        scales.append(t.scaler.scale)
        params.append(any(not np.array_equal(before[k], host(t.model.params[k])) for k in before))
        adam_t.append(t.opt.t)
        assert info.get("skipped", False) == (info["step"] == 3)
    assert params == [True, True, False, True, True, True]
    assert adam_t == [1, 2, 2, 3, 4, 5]
    assert scales == [1024, 1024, 512, 512, 512, 1024]   # halved at step 3, doubled after 3 clean steps
    assert any("step 3: inf/NaN gradient at loss scale 1024" in s and "skipped" in s for s in said)


@pytest.mark.slow
def test_resume_restores_the_loss_scale(four_heads, tmp_path):
    t = amp_trainer(four_heads, tmp_path / "r", dtype="float16", loss_scale=4096.0, loss_scale_window=2, steps=3,
                    eval_interval=3)
    t.run()
    assert t.scaler.scale == 8192.0 and t.scaler.clean == 1
    again = amp_trainer(four_heads, tmp_path / "r", dtype="float16", loss_scale=4096.0, loss_scale_window=2, steps=5,
                        eval_interval=3, resume=True)
    assert (again.scaler.scale, again.scaler.clean) == (8192.0, 1)


def test_loss_scaler_grows_and_halves():
    s = amp.LossScaler(8.0, window=2)
    assert [s.update(True), s.update(True), s.update(False), s.update(True)] == [None, "grow", "overflow", None]
    assert s.scale == 8.0 and s.clean == 1


# --- adaptive softmax ------------------------------------------------------------------------------

def adaptive_inputs(seed, N, C, cutoffs, V):
    params = AS.init_params(C, cutoffs, V, np, np.float64, seed)
    head, tails, _ = AS._parts(params)
    rng = np.random.default_rng(seed)
    return rng.normal(size=(N, C)), [head * 30] + [a * 30 for pair in tails for a in pair]


@given(N=st.integers(1, 6), C=st.integers(4, 9), sizes=st.lists(st.integers(1, 4), min_size=2, max_size=4),
       ignore=st.booleans(), seed=seeds)
def test_adaptive_softmax_backward_gradchecks(N, C, sizes, ignore, seed):
    cutoffs = list(np.cumsum(sizes[:-1]))
    V = int(sum(sizes))
    x, mats = adaptive_inputs(seed, N, C, [int(c) for c in cutoffs], V)
    targets = np.random.default_rng(seed + 1).integers(0, V, N)
    if ignore:
        targets[0] = -100

    def forward(x, head, *tails):
        return AS.adaptive_forward(x, targets, head, list(zip(tails[::2], tails[1::2])), [int(c) for c in cutoffs])

    def backward(d, cache):
        dx, dhead, dtails = AS.adaptive_backward(d, cache)
        return (dx, dhead, *[g for pair in dtails for g in pair])
    result = check_op(forward, backward, [x, *mats])
    assert result.ok, result.report()


def test_adaptive_softmax_is_a_distribution_over_the_whole_vocabulary():
    x, mats = adaptive_inputs(0, 1, 8, [3, 7], 12)
    head, tails = mats[0], list(zip(mats[1::2], mats[2::2]))
    p = [float(np.exp(-AS.adaptive_forward(x, np.array([v]), head, tails, [3, 7])[0])) for v in range(12)]
    assert abs(sum(p) - 1.0) < 1e-12


@pytest.mark.parametrize("device", ["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def test_adaptive_softmax_loss_and_gradients_match_torch(ref, device):
    xp = xp_for(device)
    params = {k.split(":", 1)[1]: xp.asarray(ref[k]) for k in ref if k.startswith("adaptive_param:")}
    assert AS.cutoffs_of(params) == [6, 15]
    head, tails, cutoffs = AS._parts(params)
    loss, cache = AS.adaptive_forward(xp.asarray(ref["adaptive_x"]), xp.asarray(ref["adaptive_targets"]), head, tails,
                                      cutoffs)
    assert abs(float(loss) - float(ref["adaptive_loss"])) <= 1e-12
    dx, dhead, dtails = AS.adaptive_backward(1.0, cache)
    got = {"x": dx, AS.HEAD: dhead, **{n: g for i, pair in enumerate(dtails) for n, g in zip(AS.tail_names(i), pair)}}
    for k, g in got.items():
        assert rel_err(g, ref[f"adaptive_grad:{k}"]) <= 1e-10, k


@pytest.mark.slow
def test_training_with_an_adaptive_softmax_learns_and_saves_it_beside_the_model(four_heads, tmp_path):
    t = trainer(four_heads, tmp_path / "a", init="scratch", model="gpt2-micro", adaptive_softmax_cutoffs="500,5000",
                lr=3e-3, steps=6, eval_interval=6)
    losses = [t.step()["loss"] for _ in range(6)]
    assert losses[-1] < losses[0]
    t.save_checkpoint()
    assert AS.cutoffs_of(picogpt.safetensors.load(tmp_path / "a" / AS.FILE)) == [500, 5000]
    assert picogpt.load_model(tmp_path / "a").num_params() == t.model.config.num_params()


@pytest.mark.parametrize("cutoffs", ["2000,1000", "100,60000", "0,10", "a,b"])
def test_bad_adaptive_cutoffs_are_one_sentence(four_heads, tmp_path, capsys, cutoffs):
    from picogpt.train import main
    assert main(["--data", str(four_heads / "text.txt"), "--adaptive-softmax-cutoffs", cutoffs, "--model", "gpt2-micro",
                 "--steps", "1", "--block-size", "16", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "cutoffs" in err, err


def test_prefix_tuning_a_head_pruned_model_is_one_sentence(four_heads, tmp_path, capsys):
    from picogpt.train import main
    picogpt.save_model(P.remove_heads(picogpt.load_model(four_heads / "model"), {0: [1]}), tmp_path / "p")
    assert main(["--data", str(four_heads / "text.txt"), "--init", str(tmp_path / "p"), "--prefix-tokens", "2",
                 "--steps", "1", "--block-size", "16", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "pruned attention heads" in err, err
