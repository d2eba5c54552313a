"""Parameter-efficient fine-tuning against peft and torch: LoRA, prefix-tuning, bottleneck adapters.

The references are tests/fixtures/make_peft.py's (peft for LoRA and prefixes, a torch
reimplementation for bottleneck adapters, which peft lacks): folders peft wrote, the logits peft
gives with them, and float64 autograd gradients of the whole model with each method. The ops'
own backwards are gradchecked here, on hypothesis-drawn shapes, and their properties tested.
"""

import json
import shutil

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from helpers import FIXTURES, TINY, host, normal, quiet, rel_err, tiny

import picogpt
from picogpt import layers as L
from picogpt import lora as old_path   # the import path notebooks and older code use
from picogpt.config import GPT2Config
from picogpt.errors import PicoGPTError
from picogpt.gradcheck import check_gradients, check_op
from picogpt.peft import adapters as AD
from picogpt.peft import lora as LO
from picogpt.peft import prefix as PX
from picogpt.peft.formats import attached
from picogpt.train import TrainConfig, Trainer
from picogpt.train import main as train_main

PEFT_LORA, PEFT_PREFIX, PICO_LORA = FIXTURES / "peft-lora", FIXTURES / "peft-prefix", FIXTURES / "picogpt-lora"
seeds = st.integers(0, 2**32 - 1)


@pytest.fixture(scope="module")
def ref():
    with np.load(FIXTURES / "peft.npz") as npz:
        return dict(npz)


def assert_grads_match(model, ref, label):
    """The whole model's loss and gradients (float64) against torch autograd's, rel. error <= 1e-4."""
    loss, grads = model.loss_and_grads(ref["ids"], ref["targets"], wanted=set(model.params))
    assert abs(loss - ref[f"{label}_loss"]) <= 1e-6 * abs(ref[f"{label}_loss"])
    names = [k.split(":", 1)[1] for k in ref if k.startswith(f"{label}_grad:")]
    assert len(names) >= 7
    for name in names:
        assert rel_err(grads[name], ref[f"{label}_grad:{name}"]) <= 1e-4, name


# --- LoRA: peft's folders in picogpt, picogpt's in peft -------------------------------------------

@pytest.mark.parametrize("device", ["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def test_a_peft_lora_folder_gives_pefts_logits(ref, device):
    model = picogpt.load_adapters(tiny(device), PEFT_LORA)
    assert model.lora_scale == 2.0 and model.lora["rank"] == 4    # r 4, alpha 8
    # peft's "c_proj" adapts both attention's and the MLP's
    assert {k.split(".", 2)[2] for k in LO.lora_names(model.params)} >= {"mlp.c_proj.lora_A", "attn.c_proj.lora_A"}
    assert rel_err(model.forward(ref["ids"]), ref["lora_logits"]) <= 1e-4
    assert rel_err(LO.merge_lora(model).forward(ref["ids"]), ref["lora_logits"]) <= 1e-4


def test_a_peft_lora_folder_of_another_rank_alpha_and_targets_gives_pefts_logits(ref):
    model = picogpt.load_adapters(tiny(), FIXTURES / "peft-lora-attn")   # r 2, alpha 5, c_attn of block 1
    assert model.lora_scale == 2.5 and sorted(LO.lora_names(model.params)) == ["h.1.attn.c_attn.lora_A",
                                                                                "h.1.attn.c_attn.lora_B"]
    assert rel_err(model.forward(ref["ids"]), ref["lora_attn_logits"]) <= 1e-4


@pytest.mark.parametrize("device", ["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def test_whole_model_gradients_with_lora_match_torch(ref, device):
    assert_grads_match(picogpt.load_adapters(tiny(device, "float64"), PEFT_LORA), ref, "lora")


def picogpt_lora_model():
    """The model make_peft.py saved into picogpt-lora/ (and peft read back)."""
    model = tiny()
    LO.add_lora(model, rank=3, alpha=6, seed=7)
    rng = np.random.default_rng(8)
    for k in LO.lora_names(model.params):
        if k.endswith("lora_B"):
            model.params[k] = rng.normal(0.0, 0.3, model.params[k].shape).astype(np.float32)
    return model


def test_picogpt_writes_the_lora_folder_peft_read_with_the_same_logits(ref, tmp_path):
    model = picogpt_lora_model()
    picogpt.save_adapters(model, tmp_path / "a")
    ours = picogpt.safetensors.load(tmp_path / "a" / "adapter_model.safetensors")
    theirs = picogpt.safetensors.load(PICO_LORA / "adapter_model.safetensors")
    assert set(ours) == set(theirs) and all(k.startswith("base_model.model.transformer.h.") for k in ours)
    for k in ours:
        np.testing.assert_array_equal(ours[k], theirs[k])
    assert ours["base_model.model.transformer.h.0.mlp.c_fc.lora_A.weight"].shape == (3, 64)   # (r, in)
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert config == json.loads((PICO_LORA / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"], config["fan_in_fan_out"]) == ("LORA", 3, 6.0, True)
    # peft's logits with picogpt's folder are picogpt's own
    assert rel_err(model.forward(ref["ids"]), ref["picolora_logits"]) <= 1e-4
    back = picogpt.load_adapters(tiny(), tmp_path / "a")
    assert rel_err(back.forward(ref["ids"]), ref["picolora_logits"]) <= 1e-4


def test_the_lora_api_still_works_beside_the_folders(tmp_path):
    model = picogpt.load_adapters(tiny(), PEFT_LORA)
    ids = np.arange(10)[None]
    adapted = host(model.forward(ids))
    merged = LO.merge_lora(model)
    assert not LO.lora_names(merged.params) and rel_err(merged.forward(ids), adapted) <= 1e-5
    LO.remove_lora(model)
    assert rel_err(model.forward(ids), tiny().forward(ids)) == 0.0
    assert old_path.add_lora is LO.add_lora and old_path.remove_lora is LO.remove_lora


# --- prefix-tuning ---------------------------------------------------------------------------------

@pytest.mark.parametrize("device", ["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def test_a_peft_prefix_folder_gives_pefts_logits_and_greedy_tokens(ref, device):
    model = picogpt.load_adapters(tiny(device), PEFT_PREFIX)
    assert PX.prefix_length(model.params) == 3
    assert rel_err(model.forward(ref["ids"]), ref["prefix_logits"]) <= 1e-4
    # generation starts from a KV cache holding the prefix; the prompt's positions follow it
    out = model.generate(ref["ids"][:, :5], max_new_tokens=6)
    np.testing.assert_array_equal(host(out), ref["prefix_greedy"])


@pytest.mark.parametrize("device", ["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def test_whole_model_gradients_with_a_prefix_match_torch(ref, device):
    assert_grads_match(picogpt.load_adapters(tiny(device, "float64"), PEFT_PREFIX), ref, "prefix")


def projection_model(ref, device="cpu"):
    model = tiny(device, "float64")
    for k in PX.MLP:
        model.params[k] = model.xp.asarray(ref[f"projection_param:{k}"].astype(np.float64))
    return model


@pytest.mark.parametrize("device", ["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def test_whole_model_gradients_through_the_prefix_mlp_match_torch(ref, device):
    assert_grads_match(projection_model(ref, device), ref, "projection")


def test_the_prefix_mlp_is_saved_as_its_output_as_peft_does(ref, tmp_path):
    model = projection_model(ref)
    ids = ref["ids"]
    before = host(model.forward(ids))
    picogpt.save_adapters(model, tmp_path / "p")
    config = json.loads((tmp_path / "p" / "adapter_config.json").read_text())
    assert config["peft_type"] == "PREFIX_TUNING" and config["prefix_projection"] is False
    back = picogpt.load_adapters(tiny(dtype="float64"), tmp_path / "p")
    assert PX.prefix_names(back.params) == [PX.TABLE]
    assert rel_err(back.forward(ids), before) <= 1e-12
    PX.merge_prefix(model)
    assert PX.prefix_names(model.params) == [PX.TABLE] and rel_err(model.forward(ids), before) <= 1e-12


@given(P=st.integers(1, 5), T=st.integers(1, 6), B=st.integers(1, 3), seed=seeds)
def test_a_prefix_of_real_tokens_is_those_tokens_in_the_context(P, T, B, seed):
    """Virtual tokens holding the model's own keys and values of real tokens x make the model
    on y exactly the model on [x, y]: the prefix is a KV cache of x."""
    rng = np.random.default_rng(seed)
    x, y = rng.integers(0, 1000, (1, P)), rng.integers(0, 1000, (B, T))
    model = tiny(dtype="float64")
    full = host(model.forward(np.concatenate([np.repeat(x, B, 0), y], axis=1)))[:, P:]
    PX.add_prefix(model, P, init_ids=x)
    assert rel_err(model.forward(y), full) <= 1e-10
    ids = model.generate(y, max_new_tokens=3)         # from the KV cache that holds the prefix
    again = picogpt.load_model(TINY, dtype="float64").generate(np.concatenate([np.repeat(x, B, 0), y], 1), 3)
    np.testing.assert_array_equal(host(ids), host(again)[:, P:])


def test_prefix_generation_with_prompts_of_different_lengths_matches_one_at_a_time():
    model = picogpt.load_adapters(tiny(), PEFT_PREFIX)
    prompts = [[5, 9, 200, 31, 7], [44, 12]]
    together = model.generate(prompts, max_new_tokens=5)
    for prompt, row in zip(prompts, together):
        alone = model.generate([prompt], max_new_tokens=5)[0]
        assert list(row) == list(alone)


def test_a_prefix_takes_its_positions_from_the_context():
    model = picogpt.load_adapters(tiny(), PEFT_PREFIX)      # n_ctx 64, P 3
    assert model.context == 61
    with pytest.raises(PicoGPTError, match="exceeds the model's context of 61 tokens"):
        model.generate([list(range(1, 56))], max_new_tokens=10)
    with pytest.raises(PicoGPTError, match="exceed the model's context"):
        model.forward([list(range(1, 63))])
    slid = model.generate([list(range(1, 56))], max_new_tokens=10, overflow="slide")   # past the context
    assert len(slid[0]) == 65


# --- bottleneck adapters ---------------------------------------------------------------------------

def adapter_model(ref, device="cpu"):
    model = tiny(device, "float64")
    for k in ref:
        if k.startswith("adapter_param:"):
            model.params[k.split(":", 1)[1]] = model.xp.asarray(ref[k].astype(np.float64))
    return model


@pytest.mark.parametrize("device", ["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def test_whole_model_gradients_with_bottleneck_adapters_match_torch(ref, device):
    model = adapter_model(ref, device)
    assert AD.adapter_kind(model.params) == "houlsby"
    assert_grads_match(model, ref, "adapter")


def test_adapters_start_near_the_identity_and_round_trip_through_a_folder(tmp_path):
    model = tiny()
    ids = np.arange(20)[None] % 1000
    base = host(model.forward(ids))
    names = AD.add_adapters(model, 8, kind="pfeiffer", seed=1)
    assert len(names) == 4 * model.config.n_layer and AD.adapter_kind(model.params) == "pfeiffer"
    start = host(model.forward(ids))
    assert 0 < np.abs(start - base).max() <= 1e-2 * np.abs(base).max()
    for k in names:   # make them matter before saving
        model.params[k] = model.params[k] + np.float32(0.2) * np.ones_like(model.params[k])
    adapted = host(model.forward(ids))
    picogpt.save_adapters(model, tmp_path / "b")
    config = json.loads((tmp_path / "b" / "adapter_config.json").read_text())
    assert (config["peft_type"], config["adapter_size"], config["kind"]) == ("PICOGPT_BOTTLENECK", 8, "pfeiffer")
    back = picogpt.load_adapters(tiny(), tmp_path / "b")
    np.testing.assert_array_equal(host(back.forward(ids)), adapted)


# --- the ops: gradchecks on hypothesis-drawn shapes ---------------------------------------------

@given(B=st.integers(1, 3), H=st.integers(1, 3), T=st.integers(1, 5), P=st.integers(1, 4), D=st.integers(1, 4),
       causal=st.booleans(), seed=seeds)
def test_prefix_attention_backward_gradchecks(B, H, T, P, D, causal, seed):
    q, k, v = (normal(seed + j, (B, H, T, D)) for j in range(3))
    pk, pv = normal(seed + 3, (H, P, D)), normal(seed + 4, (H, P, D))
    mask = L.causal_mask(np, T, P + T) if causal else None
    result = check_op(lambda *a: PX.prefix_attention_forward(*a, mask), PX.prefix_attention_backward, [q, k, v, pk, pv])
    assert result.ok, result.report()


@given(lead=st.lists(st.integers(1, 3), min_size=1, max_size=2), C=st.integers(1, 6), M=st.integers(1, 4), seed=seeds)
def test_adapter_backward_gradchecks(lead, C, M, seed):
    inputs = [normal(seed, (*lead, C)), normal(seed + 1, (C, M)), normal(seed + 2, (M,)),
              normal(seed + 3, (M, C)), normal(seed + 4, (C,))]
    result = check_op(AD.adapter_forward, AD.adapter_backward, inputs)
    assert result.ok, result.report()


@given(P=st.integers(1, 4), C=st.integers(1, 5), Hm=st.integers(1, 4), out=st.integers(1, 6), seed=seeds)
def test_prefix_mlp_backward_gradchecks(P, C, Hm, out, seed):
    shapes = dict(zip(PX.MLP, [(P, C), (C, Hm), (Hm,), (Hm, out), (out,)]))
    params = {k: normal(seed + j, s) for j, (k, s) in enumerate(shapes.items())}
    weights = normal(seed + 9, (P, out))   # the loss: a fixed weighting of the table

    def loss(p):
        return float((PX.table_forward(p)[0] * weights).sum())

    table, cache = PX.table_forward(params)
    result = check_gradients(loss, params, PX.table_backward(weights, cache))
    assert result.ok, result.report()


@given(P=st.integers(1, 3), n_layer=st.integers(1, 3), n_head=st.integers(1, 3), D=st.integers(1, 3), seed=seeds)
def test_the_table_splits_into_layers_as_peft_views_it_and_back(P, n_layer, n_head, D, seed):
    table = normal(seed, (P, 2 * n_layer * n_head * D))
    layers = PX.split_layers(table, n_layer, n_head)
    # peft: view(P, 2L, H, D) -> permute to (2L, H, P, D); layer i's keys are 2i, values 2i + 1
    view = table.reshape(P, 2 * n_layer, n_head, D)
    for i, (pk, pv) in enumerate(layers):
        np.testing.assert_array_equal(pk, view[:, 2 * i].transpose(1, 0, 2))
        np.testing.assert_array_equal(pv, view[:, 2 * i + 1].transpose(1, 0, 2))
    np.testing.assert_array_equal(PX.merge_layers(layers), table)


def test_the_prefix_gradient_is_the_sum_over_rows():
    """Two identical rows give the prefix twice one row's gradient before the mean over rows:
    the same gradient of the mean loss."""
    model = picogpt.load_adapters(tiny(dtype="float64"), PEFT_PREFIX)
    ids, tg = np.arange(1, 9)[None], np.arange(2, 10)[None]
    _, one = model.loss_and_grads(ids, tg, wanted={PX.TABLE})
    _, two = model.loss_and_grads(np.repeat(ids, 2, 0), np.repeat(tg, 2, 0), wanted={PX.TABLE})
    assert set(one) == {PX.TABLE} and rel_err(two[PX.TABLE], one[PX.TABLE]) <= 1e-12


# --- every bad input: one sentence -----------------------------------------------------------------

def other_shape():
    return picogpt.init_model(GPT2Config(n_layer=2, n_head=2, n_embd=32, n_ctx=64, vocab_size=1000), seed=0)


@pytest.mark.parametrize("call, words", [
    (lambda m: LO.add_lora(m, rank=0), "rank must be a whole number >= 1"),
    (lambda m: LO.add_lora(m, rank=-2), "rank must be a whole number >= 1"),
    (lambda m: PX.add_prefix(m, 0), "prefix tokens must be a whole number >= 1"),
    (lambda m: PX.add_prefix(m, 64), "leave no room"),
    (lambda m: PX.add_prefix(m, 2, hidden=-1), "MLP's width"),
    (lambda m: AD.add_adapters(m, 0), "adapter size must be a whole number >= 1"),
    (lambda m: AD.add_adapters(m, 4, kind="lora"), "unknown adapter kind"),
    (lambda m: picogpt.save_adapters(m, "unused"), "no adapters"),
    (lambda m: picogpt.load_adapters(other_shape(), PEFT_LORA), "another shape"),
    (lambda m: picogpt.load_adapters(other_shape(), PEFT_PREFIX), "another shape"),
    (lambda m: picogpt.load_adapters(m, TINY), "is not an adapter folder"),
])
def test_bad_inputs_are_refused_in_one_sentence(call, words):
    with pytest.raises(PicoGPTError, match=words) as e:
        call(tiny())
    assert str(e.value).count(". ") == 0 and str(e.value).endswith(".")


def test_bottleneck_adapters_for_another_shape_and_two_methods_at_once_are_refused(tmp_path):
    model = other_shape()
    AD.add_adapters(model, 4)
    picogpt.save_adapters(model, tmp_path / "small")
    with pytest.raises(PicoGPTError, match="another shape"):
        picogpt.load_adapters(tiny(), tmp_path / "small")
    both = picogpt.load_adapters(tiny(), PEFT_PREFIX)
    AD.add_adapters(both, 4)
    assert attached(both) == ["prefix", "bottleneck"]
    with pytest.raises(PicoGPTError, match="a folder holds one method"):
        picogpt.save_adapters(both, tmp_path / "both")


def test_rslora_scales_by_alpha_over_the_root_of_the_rank(ref, tmp_path):
    folder = shutil.copytree(PEFT_LORA, tmp_path / "rs")
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "use_rslora": True}))
    assert picogpt.load_adapters(tiny(), folder).lora_scale == 8 / 4 ** 0.5    # alpha 8, r 4


def test_each_method_can_be_removed_leaving_the_base_model():
    ids = np.arange(1, 11)[None]
    base = host(tiny().forward(ids))
    for attach, remove in ((lambda m: LO.add_lora(m, 2), LO.remove_lora), (lambda m: PX.add_prefix(m, 2), PX.remove_prefix),
                           (lambda m: AD.add_adapters(m, 2), AD.remove_adapters)):
        model = tiny()
        names = attach(model)
        assert sorted(remove(model)) == sorted(names) and attached(model) == []
        np.testing.assert_array_equal(host(model.forward(ids)), base)
        with pytest.raises(PicoGPTError, match="no .* to remove"):
            remove(model)


@pytest.mark.parametrize("change, words", [
    ({"peft_type": "IA3"}, "not 'IA3'"),
    ({"use_dora": True}, "no use_dora"),
    ({"rank_pattern": {"c_attn": 8}}, "one rank and alpha"),
])
def test_lora_configs_picogpt_cannot_honour_are_refused(tmp_path, change, words):
    folder = shutil.copytree(PEFT_LORA, tmp_path / "x")
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(PicoGPTError, match=words):
        picogpt.load_adapters(tiny(), folder)


# --- through the Trainer and the command line ---------------------------------------------------

def peft_cfg(text, model, out, **kw):
    return TrainConfig(**{**dict(data=str(text), out=str(out), init=str(model), block_size=12, batch_size=4, steps=3,
                                 warmup_steps=1, lr=1e-2, eval_interval=3, eval_batches=1, log_interval=1,
                                 device="cpu"), **kw})


@pytest.mark.parametrize("method, owns", [
    (dict(prefix_tokens=4), lambda k: k == PX.TABLE),
    (dict(prefix_tokens=4, prefix_hidden=8), lambda k: k.startswith("prefix.mlp.")),
    (dict(adapter_size=3), lambda k: ".adapter_" in k),
    (dict(adapter_size=3, adapter_kind="pfeiffer"), lambda k: ".adapter_mlp." in k),
    (dict(bitfit=True), lambda k: k.endswith(".bias")),
])
def test_each_method_trains_only_its_own_numbers_and_its_folder_reloads(text, gpt2_vocab_model, tmp_path, method, owns):
    out = tmp_path / "out"
    t = Trainer(peft_cfg(text, gpt2_vocab_model, out, **method), log=quiet)
    assert t.trainable and all(owns(k) for k in t.trainable)
    before = {k: host(a).copy() for k, a in t.model.params.items()}
    t.run()
    for k, a in t.model.params.items():
        assert (not np.array_equal(host(a), before[k])) == owns(k), k
    x = np.arange(1, 9)[None]
    if method.get("bitfit"):
        assert not (out / "adapter").exists()
        assert rel_err(picogpt.load_model(out).forward(x), t.model.forward(x)) == 0.0
        return
    # model.safetensors holds the base, unchanged; load_model attaches adapter/ beside it
    held = {k.removeprefix("transformer.") for k in picogpt.safetensors.load(out / "model.safetensors")}
    assert held == set(picogpt.load_model(gpt2_vocab_model).params)
    again = picogpt.load_model(out)
    trained = set(t.model.params)
    assert set(again.params) == (trained - set(PX.MLP) | {PX.TABLE} if "prefix_hidden" in method else trained)
    assert rel_err(again.forward(x), t.model.forward(x)) <= 1e-5


def test_a_prefix_run_resumes_exactly(text, gpt2_vocab_model, tmp_path):
    full = Trainer(peft_cfg(text, gpt2_vocab_model, tmp_path / "full", prefix_tokens=2, steps=4), log=quiet)
    losses = [full.step()["loss"] for _ in range(4)]
    part = Trainer(peft_cfg(text, gpt2_vocab_model, tmp_path / "part", prefix_tokens=2, steps=4), log=quiet)
    first = [part.step()["loss"] for _ in range(2)]
    part.save_checkpoint()
    resumed = Trainer(peft_cfg(text, gpt2_vocab_model, tmp_path / "part", prefix_tokens=2, steps=4, resume=True),
                      log=quiet)
    assert first + [resumed.step()["loss"] for _ in range(2)] == losses


@pytest.mark.parametrize("flags, words", [
    (["--prefix-tokens", "-1"], "--prefix-tokens must be >= 0"),
    (["--adapter-size", "-3"], "--adapter-size must be >= 0"),
    (["--lora-rank", "2", "--prefix-tokens", "3"], "choose one parameter-efficient method"),
    (["--adapter-size", "2", "--bitfit"], "choose one parameter-efficient method"),
    (["--prefix-hidden", "8"], "needs prefix tokens"),
    (["--prefix-tokens", "64"], "prefix tokens) is longer than the model's context"),
    (["--adapter-kind", "middle"], "--adapter-kind takes houlsby or pfeiffer"),
])
def test_bad_peft_flags_are_one_sentence(text, gpt2_vocab_model, tmp_path, capsys, flags, words):
    argv = ["--data", str(text), "--init", str(gpt2_vocab_model), "--out", str(tmp_path / "o"), "--steps", "1", *flags]
    try:
        code = train_main(argv)
    except SystemExit as e:   # argparse's own refusals
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and words in err, err


@pytest.mark.gpu
@pytest.mark.parametrize("method", [dict(prefix_tokens=3), dict(adapter_size=4), dict(bitfit=True)])
def test_each_method_trains_on_the_gpu_as_on_the_cpu(text, gpt2_vocab_model, tmp_path, method):
    cpu = Trainer(peft_cfg(text, gpt2_vocab_model, tmp_path / "c", **method), log=quiet)
    gpu = Trainer(peft_cfg(text, gpt2_vocab_model, tmp_path / "g", **{**method, "device": "gpu"}), log=quiet)
    np.testing.assert_allclose([gpu.step()["loss"] for _ in range(3)], [cpu.step()["loss"] for _ in range(3)],
                               atol=1e-4)
