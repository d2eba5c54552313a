"""LoRA: only the adapters train, merging gives the same logits, adapters save and load alone.

(LoRA gradients against finite differences are in tests/test_gradients.py.)
"""

import numpy as np
import pytest
from helpers import TINY, host, quiet

import picogpt
from picogpt import lora as lora_mod
from picogpt import safetensors
from picogpt.backend import PicoGPTError
from picogpt.config import GPT2Config
from picogpt.optim import AdamW, clip_grad_norm
from picogpt.train import TrainConfig, Trainer

@pytest.fixture()
def model():
    return picogpt.load_model(TINY, device="cpu")


def batch(seed=0, B=2, T=12, V=1000):
    rng = np.random.default_rng(seed)
    return rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))


def train_adapters(model, names, steps=4, lr=1e-2):
    opt = AdamW(model.params, names, weight_decay=0.1)
    for s in range(steps):
        x, y = batch(s)
        _, grads = model.loss_and_grads(x, y, wanted=set(names))
        assert set(grads) == set(names)
        clip_grad_norm(grads, 1.0)
        opt.step(model.params, grads, lr)


def test_add_lora_names_shapes_and_starts_at_the_base_model(model):
    x, _ = batch()
    base_logits = host(model.forward(x))
    names = lora_mod.add_lora(model, rank=4, seed=0)
    C = model.config.n_embd
    assert len(names) == 2 * 4 * model.config.n_layer
    assert model.params["h.0.attn.c_attn.lora_A"].shape == (C, 4)
    assert model.params["h.0.attn.c_attn.lora_B"].shape == (4, 3 * C)
    assert model.params["h.1.mlp.c_proj.lora_A"].shape == (4 * C, 4)
    assert model.params["h.1.mlp.c_proj.lora_B"].shape == (4, C)
    assert sorted(lora_mod.lora_names(model.params)) == sorted(names)
    assert model.lora_scale == 1.0
    # B = 0, so the adapted model starts exactly where the base is.
    np.testing.assert_array_equal(host(model.forward(x)), base_logits)


def test_only_adapter_parameters_change(model):
    base = {k: host(a).copy() for k, a in model.params.items()}
    names = lora_mod.add_lora(model, rank=4, alpha=8, seed=0)
    start = {k: host(model.params[k]).copy() for k in names}
    train_adapters(model, names)
    for k, a in base.items():
        np.testing.assert_array_equal(host(model.params[k]), a, err_msg=f"base parameter {k} changed")
    for k in names:
        assert not np.array_equal(host(model.params[k]), start[k]), f"adapter {k} did not train"


def test_merged_model_gives_the_adapted_models_logits(model):
    names = lora_mod.add_lora(model, rank=4, alpha=16, seed=1)   # scale 4, to make the adapters count
    train_adapters(model, names)
    x, _ = batch(7, B=3, T=20)
    adapted = host(model.forward(x))
    merged = lora_mod.merge_lora(model)
    assert not lora_mod.lora_names(merged.params)
    assert set(merged.params) == set(picogpt.load_model(TINY).params)
    base = host(picogpt.load_model(TINY).forward(x))
    assert np.abs(adapted - base).max() > 1e-3                  # the adapters really do something
    assert np.abs(host(merged.forward(x)) - adapted).max() <= 1e-5
    # merging leaves the adapted model as it was
    np.testing.assert_array_equal(host(model.forward(x)), adapted)


def test_save_and_load_adapters_round_trip(model, tmp_path):
    names = lora_mod.add_lora(model, rank=2, alpha=6, seed=0)
    train_adapters(model, names, steps=2)
    x, _ = batch(3)
    adapted = host(model.forward(x))
    path = lora_mod.save_adapters(model, tmp_path / "adapters.safetensors")
    assert set(safetensors.load(path)) == set(names)          # the adapters alone, no base weights
    fresh = picogpt.load_model(TINY)
    lora_mod.load_adapters(fresh, path)
    assert fresh.lora_scale == model.lora_scale == 3.0
    assert fresh.lora["rank"] == 2
    for k in names:
        np.testing.assert_array_equal(host(fresh.params[k]), host(model.params[k]))
    np.testing.assert_array_equal(host(fresh.forward(x)), adapted)
    # loaded adapters can be trained further (they are ordinary writable arrays)
    train_adapters(fresh, names, steps=1)
    with pytest.raises(PicoGPTError, match="already has"):
        lora_mod.load_adapters(fresh, path)


def test_load_adapters_refuses_other_files_and_other_shapes(tmp_path):
    m = picogpt.load_model(TINY)
    with pytest.raises(PicoGPTError, match="not a picogpt LoRA"):
        lora_mod.load_adapters(m, TINY / "model.safetensors")
    other = picogpt.init_model(GPT2Config(n_layer=1, n_head=2, n_embd=16, n_ctx=16, vocab_size=1000))
    lora_mod.add_lora(other, rank=2)
    lora_mod.save_adapters(other, tmp_path / "a.safetensors")
    with pytest.raises(PicoGPTError, match="n_layer"):
        lora_mod.load_adapters(m, tmp_path / "a.safetensors")
    with pytest.raises(PicoGPTError, match="no LoRA adapters"):
        lora_mod.save_adapters(m, tmp_path / "b.safetensors")


def test_add_lora_rejects_bad_arguments(model):
    for rank in (0, -1, 1.5):
        with pytest.raises(PicoGPTError, match="rank"):
            lora_mod.add_lora(model, rank=rank)
    with pytest.raises(PicoGPTError, match="target"):
        lora_mod.add_lora(model, rank=2, targets=("attn.c_attn", "ln_1"))
    lora_mod.add_lora(model, rank=2)
    with pytest.raises(PicoGPTError, match="already has"):
        lora_mod.add_lora(model, rank=2)


def test_targets_limit_where_adapters_go(model):
    names = lora_mod.add_lora(model, rank=2, targets=("attn.c_attn",))
    assert sorted(names) == sorted(f"h.{i}.attn.c_attn.lora_{ab}" for i in range(2) for ab in "AB")


# --- through the Trainer --------------------------------------------------------------------

def lora_cfg(text, gpt2_vocab_model, out, **kw):
    return TrainConfig(**{**dict(data=str(text), out=str(out), init=str(gpt2_vocab_model), block_size=16, batch_size=4,
                                 steps=4, warmup_steps=1, lr=1e-2, eval_interval=2, eval_batches=1, log_interval=1,
                                 lora_rank=2, lora_alpha=4, device="cpu"), **kw})


def test_lora_training_run_changes_only_adapters_and_writes_adapters_and_merged_model(text, gpt2_vocab_model, tmp_path):
    out = tmp_path / "out"
    t = Trainer(lora_cfg(text, gpt2_vocab_model, out), log=quiet)
    names = sorted(t.trainable)
    assert names == sorted(lora_mod.lora_names(t.model.params))
    t.run()
    base = picogpt.load_model(gpt2_vocab_model)
    for k, a in base.params.items():
        np.testing.assert_array_equal(host(t.model.params[k]), host(a), err_msg=f"base parameter {k} changed")
    assert any(np.abs(host(t.model.params[k])).max() > 0 for k in names if k.endswith("lora_B"))

    # The folder: adapters alone, and a merged model that load_model reads and that equals
    # base + adapters.
    assert set(safetensors.load(out / "adapters.safetensors")) == set(names)
    merged = picogpt.load_model(out)
    assert not lora_mod.lora_names(merged.params)
    x = np.random.default_rng(0).integers(0, 50257, (2, 16))
    assert np.abs(host(merged.forward(x)) - host(t.model.forward(x))).max() <= 1e-5
    again = picogpt.load_model(gpt2_vocab_model)
    lora_mod.load_adapters(again, out / "adapters.safetensors")
    assert np.abs(host(again.forward(x)) - host(t.model.forward(x))).max() <= 1e-6
    # The checkpoint holds only what trains (the adapters and their AdamW moments).
    ckpt = safetensors.load(out / "checkpoint.safetensors")
    assert {k for k in ckpt if k.startswith("param:")} == {f"param:{k}" for k in names}


def test_lora_run_resumes_exactly(text, gpt2_vocab_model, tmp_path):
    full = Trainer(lora_cfg(text, gpt2_vocab_model, tmp_path / "full"), log=quiet)
    losses = [full.step()["loss"] for _ in range(4)]
    part = Trainer(lora_cfg(text, gpt2_vocab_model, tmp_path / "part"), log=quiet)
    first = [part.step()["loss"] for _ in range(2)]
    part.save_checkpoint()
    resumed = Trainer(lora_cfg(text, gpt2_vocab_model, tmp_path / "part", resume=True), log=quiet)
    rest = [resumed.step()["loss"] for _ in range(2)]
    assert first + rest == losses
    for k in full.trainable:
        np.testing.assert_array_equal(host(resumed.model.params[k]), host(full.model.params[k]))


def test_remove_lora_gives_back_the_base_model(model):
    x, _ = batch()
    base = {k: picogpt.asnumpy(a).copy() for k, a in model.params.items()}
    base_logits = picogpt.asnumpy(model.forward(x))
    names = lora_mod.add_lora(model, rank=4, alpha=16, seed=1)
    train_adapters(model, names)
    assert np.abs(picogpt.asnumpy(model.forward(x)) - base_logits).max() > 1e-3   # the adapters count
    assert sorted(lora_mod.remove_lora(model)) == sorted(names)
    assert set(model.params) == set(base) and model.lora is None and model.lora_scale == 1.0
    for k, a in base.items():
        np.testing.assert_array_equal(picogpt.asnumpy(model.params[k]), a, err_msg=f"base parameter {k} changed")
    np.testing.assert_array_equal(picogpt.asnumpy(model.forward(x)), base_logits)
    with pytest.raises(PicoGPTError, match="no LoRA adapters"):
        lora_mod.remove_lora(model)
    assert lora_mod.add_lora(model, rank=2) and lora_mod.lora_names(model.params)   # attachable again
