"""picogpt against Hugging Face transformers, through the committed fixtures.

tests/fixtures/make_fixtures.py (torch + transformers) wrote the reference numbers; these tests
need neither torch nor a network.
"""

import json
from pathlib import Path

import numpy as np
import pytest

import picogpt
from picogpt import safetensors

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(FIXTURES / "reference.npz"))


@pytest.fixture(scope="module", params=["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def device(request):
    return request.param


@pytest.fixture(scope="module")
def model(device):
    return picogpt.load_model(FIXTURES / "tiny-gpt2", device=device)


def test_logits_match_transformers(model, ref):
    logits = picogpt.asnumpy(model.forward(ref["ids"]))
    assert logits.shape == ref["logits"].shape
    assert np.abs(logits - ref["logits"]).max() <= 1e-4


def test_hub_layout_loads_to_the_same_logits(device, ref):
    # No `transformer.` prefix, mask buffers h.N.attn.bias / masked_bias present, no lm_head.
    hub = picogpt.load_model(FIXTURES / "tiny-gpt2-hub", device=device)
    assert "h.0.attn.c_attn.bias" in hub.params and "h.0.attn.bias" not in hub.params
    assert np.abs(picogpt.asnumpy(hub.forward(ref["ids"])) - ref["logits"]).max() <= 1e-4


def test_float64_logits_match_more_tightly(ref):
    m = picogpt.load_model(FIXTURES / "tiny-gpt2", dtype="float64")
    # The reference itself is float32, so the float32 rounding of transformers bounds this.
    assert np.abs(m.forward(ref["ids"]) - ref["logits"]).max() <= 1e-5


def test_kv_cache_decoding_equals_full_forward(model, ref):
    ids = ref["ids"]
    full = picogpt.asnumpy(model.forward(ids))
    kv = model.new_cache(ids.shape[0], ids.shape[1])
    steps = [model.forward(ids[:, :5], kv=kv)] + [model.forward(ids[:, t:t + 1], kv=kv) for t in range(5, ids.shape[1])]
    cached = np.concatenate([picogpt.asnumpy(s) for s in steps], axis=1)
    assert np.abs(cached - full).max() <= 1e-5


def test_greedy_generation_matches_transformers(model, ref):
    out = model.generate(ref["greedy_prompt"], max_new_tokens=40, temperature=0.0)
    assert out.shape == ref["greedy_out"].shape
    np.testing.assert_array_equal(out, ref["greedy_out"])


def test_prompts_of_different_lengths_match_transformers_left_padded(model, ref):
    short, long = ref["ragged_short"].tolist(), ref["ragged_long"].tolist()
    out = model.generate([short, long], max_new_tokens=40, temperature=0.0)
    assert out[0] == ref["ragged_out_short"].tolist()
    assert out[1] == ref["ragged_out_long"].tolist()
    # ... and each row equals that prompt generated on its own.
    alone = model.generate(short, max_new_tokens=40, temperature=0.0)
    assert alone.tolist() == out[0]


def test_save_model_writes_the_layout_transformers_was_shown_to_load(model, tmp_path):
    # make_fixtures.py saved with picogpt.save_model, loaded that in transformers and checked
    # its logits; here we check that save_model still writes exactly that layout.
    picogpt.save_model(model, tmp_path)
    header, meta, _ = safetensors.read_header(tmp_path / "model.safetensors")
    layout = {"metadata": meta, "tensors": {k: [v["dtype"], v["shape"]] for k, v in sorted(header.items())}}
    assert layout == json.loads((FIXTURES / "save_model_layout.json").read_text())
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "gpt2" and cfg["architectures"] == ["GPT2LMHeadModel"]


def test_save_then_load_roundtrips_exactly(model, ref, tmp_path):
    picogpt.save_model(model, tmp_path)
    again = picogpt.load_model(tmp_path, device=model.device)
    for k, a in model.params.items():
        np.testing.assert_array_equal(picogpt.asnumpy(again.params[k]), picogpt.asnumpy(a))


def test_float16_storage_halves_the_file_and_loads_back(model, ref, tmp_path):
    picogpt.save_model(model, tmp_path / "f16", dtype="float16")
    picogpt.save_model(model, tmp_path / "f32")
    size = lambda d: (tmp_path / d / "model.safetensors").stat().st_size  # noqa: E731
    assert size("f16") < 0.55 * size("f32")
    back = picogpt.load_model(tmp_path / "f16")
    assert back.dtype == np.float32
    assert np.abs(picogpt.asnumpy(back.forward(ref["ids"])) - ref["logits"]).max() < 0.05


def test_save_model_loads_in_transformers_when_installed(model, ref, tmp_path):
    """The live check, for machines that have transformers (CI does not; the fixture covers it)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    picogpt.save_model(model, tmp_path)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    with torch.no_grad():
        logits = hf(torch.tensor(ref["ids"])).logits.numpy()
    assert np.abs(logits - ref["logits"]).max() <= 1e-5
