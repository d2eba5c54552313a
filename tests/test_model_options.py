"""nanoGPT's model options: `bias` (False: no biases in linear layers and layer norms) and `gelu`
("exact": the erf form, transformers' activation_function "gelu"); defaults stay GPT-2's.

Reference: tests/fixtures/make_model_options.py wrote, with transformers and torch, a small GPT-2
with activation_function "gelu" (tiny-gpt2-gelu/) and its float64 logits, loss and gradients
(model_options.npz); and the same with every bias zero and frozen, which is the function a
bias-free model computes (transformers' GPT-2 has no bias-free option of its own).
"""

from types import SimpleNamespace

import numpy as np
import pytest

import picogpt
from helpers import FIXTURES, assert_clean_error, quiet, rel_err, write_text
from picogpt import model as M
from picogpt import train as T
from picogpt.config import GPT2Config
from picogpt.gradcheck import check_gradients

GELU_MODEL = FIXTURES / "tiny-gpt2-gelu"


@pytest.fixture(scope="module")
def ref():
    with np.load(FIXTURES / "model_options.npz") as npz:
        return dict(npz)


def loss_and_grads(model, ref):
    return model.loss_and_grads(ref["ids"], ref["targets"])


# --- against transformers ----------------------------------------------------------------------

def test_exact_gelu_model_equals_transformers(ref, device):
    model = picogpt.load_model(GELU_MODEL, device=device, dtype="float64")
    assert model.config.gelu == "exact" and model.config.bias
    assert rel_err(model(ref["ids"]), ref["logits"]) < 1e-6
    loss, grads = loss_and_grads(model, ref)
    assert abs(loss - float(ref["loss"])) < 1e-7   # erf to 1.5e-7 (layers.erf)
    names = {k[len("grad:"):] for k in ref if k.startswith("grad:")}
    assert names == set(grads) == set(model.params)
    for k in names:
        assert rel_err(grads[k], ref["grad:" + k]) < 1e-5, k
    # the test can tell the two GELUs apart: the tanh form misses transformers' logits
    tanh = M.GPT2(model.config.replace(gelu="tanh"), model.params, device=device)
    assert rel_err(tanh(ref["ids"]), ref["logits"]) > 1e-4


def test_bias_free_model_equals_transformers_with_zero_biases(ref, device):
    full = picogpt.load_model(GELU_MODEL, device=device, dtype="float64")
    config = full.config.replace(bias=False)
    params = {k: a for k, a in full.params.items() if not k.endswith(".bias")}
    assert set(params) == set(M.param_names(config)) == set(M.param_shapes(config))
    model = M.GPT2(config, params, device=device)
    assert rel_err(model(ref["ids"]), ref["nobias_logits"]) < 1e-6
    loss, grads = loss_and_grads(model, ref)
    assert abs(loss - float(ref["nobias_loss"])) < 1e-7
    assert set(grads) == {k[len("nobias_grad:"):] for k in ref if k.startswith("nobias_grad:")}
    for k, g in grads.items():
        assert rel_err(g, ref["nobias_grad:" + k]) < 1e-5, k
    assert rel_err(full(ref["ids"]), ref["nobias_logits"]) > 1e-3   # the biases mattered


# --- gradient checks ---------------------------------------------------------------------------

TINY = GPT2Config(n_layer=2, n_head=2, n_embd=8, n_ctx=8, vocab_size=11)


@pytest.mark.slow   # 5-10 s each; the fast tests above check the same backward against torch's autograd
@pytest.mark.parametrize("bias,gelu,seed", [(False, "tanh", 0), (False, "exact", 1), (True, "exact", 2)])
def test_model_gradients_with_each_option(bias, gelu, seed):
    """The whole model's backward against finite differences (GPT-2's own options: test_gradients.py)."""
    config = TINY.replace(bias=bias, gelu=gelu)
    params = M.init_params(config, np, np.float64, seed)
    rng = np.random.default_rng(seed + 1)
    for k, a in params.items():   # off the initial 0 / 1, and weights big enough to bend the GELU
        params[k] = a + rng.normal(0.0, 0.1 if a.ndim == 1 else 0.3, a.shape)
    ids, targets = rng.integers(0, 11, (2, 6)), rng.integers(0, 11, (2, 6))
    result = check_gradients(lambda p: M.loss_and_grads(p, config, ids, targets)[0], params,
                             lambda p: M.loss_and_grads(p, config, ids, targets, wanted=set(p))[1], max_elements=16)
    assert result.ok and result.max_rel_error <= 1e-6, "\n" + result.report()
    assert set(result.inputs) == set(M.param_names(config))
    assert any(k.endswith(".bias") for k in params) == bias


@pytest.mark.parametrize("T", [5, 20])
def test_long_rows_take_causal_attention_by_blocks_with_the_same_loss_and_gradients(T, monkeypatch):
    """Rows longer than CAUSAL_ROWS go through causal_attention_forward (keys above the diagonal
    skipped): the same loss and gradients, in float64, as attention_forward with the full mask."""
    config = TINY.replace(n_ctx=24)
    params = M.init_params(config, np, np.float64, 3)
    rng = np.random.default_rng(4)
    ids, targets = rng.integers(0, 11, (2, T)), rng.integers(0, 11, (2, T))
    monkeypatch.setattr(M.L, "CAUSAL_ROWS", 64)          # longer than T: plain attention
    loss, grads = M.loss_and_grads(params, config, ids, targets)
    monkeypatch.setattr(M.L, "CAUSAL_ROWS", 4)           # blocks of 4 queries
    _, caches = M.forward(params, config, ids)
    assert all(c.causal and len(c.att[4]) == -(-T // 4) for c in caches.blocks)
    loss_b, grads_b = M.loss_and_grads(params, config, ids, targets)
    assert abs(loss_b - loss) < 1e-12
    for k, g in grads.items():
        assert rel_err(grads_b[k], g) < 1e-10, k


# --- config.json and checkpoints ----------------------------------------------------------------

def test_defaults_stay_gpt2s():
    c = GPT2Config()
    assert (c.bias, c.gelu) == (True, "tanh")
    d = c.to_hf_dict()
    assert d["activation_function"] == "gelu_new" and "bias" not in d
    assert GPT2Config.from_hf_dict(d) == c
    assert c.num_params() == picogpt.init_model("gpt2-micro").config.replace(**{"n_layer": 12, "n_head": 12, "n_embd": 768,
                                                                              "n_ctx": 1024}).num_params() == 124439808


@pytest.mark.parametrize("bias,gelu", [(False, "exact"), (False, "tanh"), (True, "exact")])
def test_config_json_and_checkpoint_round_trip(tmp_path, bias, gelu):
    model = picogpt.init_model("gpt2-micro", bias=bias, gelu=gelu, vocab_size=40, seed=3)
    d = model.config.to_hf_dict()
    assert d["activation_function"] == {"exact": "gelu", "tanh": "gelu_new"}[gelu]
    assert d.get("bias", True) is bias     # picogpt's own key: transformers has no bias-free GPT-2
    picogpt.save_model(model, tmp_path / "m")
    back = picogpt.load_model(tmp_path / "m")
    assert back.config == model.config and set(back.params) == set(model.params)
    assert model.config.num_params() == model.num_params()
    ids = np.arange(10)[None] % 40
    assert np.array_equal(back(ids), model(ids))


def test_unknown_values_are_one_sentence():
    with pytest.raises(picogpt.PicoGPTError, match="gelu must be one of tanh, exact"):
        GPT2Config(gelu="erf")
    with pytest.raises(picogpt.PicoGPTError, match="unsupported activation 'relu'"):
        GPT2Config.from_hf_dict({"activation_function": "relu"})


# --- the training flags ---------------------------------------------------------------------------

def run(main, capsys, *args):
    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return SimpleNamespace(returncode=status, stdout=out, stderr=err)


def test_train_flags_make_the_model(tmp_path, capsys):
    text = write_text(tmp_path / "words.txt", n_lines=30)
    r = run(T.main, capsys, "--data", text, "--out", tmp_path / "out", "--model", "gpt2-micro", "--n-embd", 16,
            "--block-size", 16, "--batch-size", 2, "--steps", 2, "--eval-interval", 2, "--eval-batches", 1,
            "--bias", "false", "--gelu", "exact")
    assert r.returncode == 0, r.stderr
    model = picogpt.load_model(tmp_path / "out")
    assert (model.config.bias, model.config.gelu) == (False, "exact")
    assert not any(k.endswith(".bias") for k in model.params)
    # resuming with other options is refused (the checkpoint's parameters are another model's)
    r = run(T.main, capsys, "--data", text, "--out", tmp_path / "out", "--model", "gpt2-micro", "--n-embd", 16,
            "--block-size", 16, "--batch-size", 2, "--steps", 3, "--resume", "--gelu", "exact")
    assert_clean_error(r, "bias=False", "rerun with the same settings")


def test_train_flags_are_for_scratch_and_take_known_values(tmp_path, capsys):
    text = write_text(tmp_path / "words.txt", n_lines=30)
    r = run(T.main, capsys, "--data", text, "--init", FIXTURES / "tiny-gpt2", "--out", tmp_path / "a", "--bias", "false")
    assert_clean_error(r, "--bias/--gelu apply to --init scratch only")
    with pytest.raises(SystemExit) as e:
        T.main(["--data", str(text), "--gelu", "erf"])
    assert e.value.code == 2 and "--gelu takes tanh or exact, got 'erf'" in capsys.readouterr().err


def test_trainer_defaults_build_gpt2s_model(tmp_path):
    text = write_text(tmp_path / "words.txt", n_lines=30)
    t = T.Trainer(T.TrainConfig(data=str(text), out=str(tmp_path / "o"), model="gpt2-micro", block_size=8), log=quiet)
    assert (t.model.config.bias, t.model.config.gelu) == (True, "tanh")
