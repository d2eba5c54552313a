"""A classifier as a model: loading transformers' GPT2ForSequenceClassification folders, saving
ones transformers loads, model.classify on rows of any length, make_classifier.

References: tests/fixtures/tiny-gpt2-cls and classifier.npz (make_classifier.py: transformers'
logits), save_classifier_layout.json (make_classifier_layout.py: a folder written by
picogpt.save_model, loaded by transformers with the same logits, then recorded).
"""

import json

import numpy as np
import pytest
from helpers import FIXTURES, TINY, assert_clean_error, host, rel_err, run_module

import picogpt
from picogpt import heads as H
from picogpt import safetensors
from picogpt.config import GPT2Config
from picogpt.errors import PicoGPTError

CLS = FIXTURES / "tiny-gpt2-cls"


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(FIXTURES / "classifier.npz"))


def rows_of(ref, batch):
    """The fixture's batch as a list of unpadded id lists."""
    return [list(r[:n]) for r, n in zip(ref[f"{batch}_ids"], ref[f"{batch}_lengths"])]


def test_load_model_reads_a_transformers_classifier_folder():
    model = picogpt.load_model(CLS)
    assert isinstance(model, picogpt.GPT2Classifier)
    assert model.config.labels == ("comedy", "history", "tragedy") and model.config.num_labels == 3
    assert model.config.pad_token_id == 127
    assert model.config.id2label == {0: "comedy", 1: "history", 2: "tragedy"}
    assert model.params[H.SCORE].shape == (3, 32)


@pytest.mark.parametrize("batch", ["equal", "ragged"])
def test_classify_rows_of_different_lengths_equals_transformers(ref, device, batch):
    model = picogpt.load_model(CLS, device=device)
    logits = model.classify(rows_of(ref, batch), batch_size=3)   # batches of 3: mixes lengths across batches
    assert isinstance(logits, np.ndarray) and logits.shape == (len(ref[f"{batch}_ids"]), 3)
    assert rel_err(logits, ref[f"{batch}_logits"]) <= 1e-4
    assert model.predict(rows_of(ref, batch)) == [model.config.labels[k] for k in ref[f"{batch}_logits"].argmax(1)]


def test_a_row_gives_the_same_logits_alone_and_in_a_batch(ref):
    model = picogpt.load_model(CLS)
    rows = rows_of(ref, "ragged")
    together = model.classify(rows)
    for i, r in enumerate(rows):
        np.testing.assert_allclose(model.classify([r])[0], together[i], atol=1e-5)


def test_save_model_writes_the_classifier_layout_transformers_was_shown_to_load(ref, tmp_path):
    # make_classifier_layout.py saved with picogpt.save_model, loaded that with transformers'
    # GPT2ForSequenceClassification, checked its logits; here: save_model still writes that layout.
    picogpt.save_model(picogpt.load_model(CLS), tmp_path)
    header, meta, _ = safetensors.read_header(tmp_path / "model.safetensors")
    want = json.loads((FIXTURES / "save_classifier_layout.json").read_text())
    assert {"metadata": meta, "tensors": {k: [v["dtype"], v["shape"]] for k, v in sorted(header.items())}} == \
        {"metadata": want["metadata"], "tensors": want["tensors"]}
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert {k: cfg[k] for k in want["config"]} == want["config"]
    back = picogpt.load_model(tmp_path)
    assert back.config == picogpt.load_model(CLS).config
    assert rel_err(back.classify(rows_of(ref, "ragged")), ref["ragged_logits"]) <= 1e-4


@pytest.mark.slow
def test_transformers_loads_what_save_model_writes(ref, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    lm = picogpt.load_model(TINY)
    model = picogpt.make_classifier(lm, ["no", "yes", "maybe"], seed=1)
    picogpt.save_model(model, tmp_path)
    back = transformers.GPT2ForSequenceClassification.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert back.config.id2label == {0: "no", 1: "yes", 2: "maybe"}
    rows = [list(range(5, 17)), list(range(40, 43)), [7]]
    lengths = np.array([len(r) for r in rows])
    ids = np.full((3, lengths.max()), model.config.pad_token_id)
    for b, r in enumerate(rows):
        ids[b, :len(r)] = r
    mask = (np.arange(ids.shape[1])[None] < lengths[:, None]).astype(np.int64)
    with torch.no_grad():
        theirs = back(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    assert rel_err(model.classify(rows), theirs) <= 1e-4


def test_config_round_trips_its_labels_and_a_language_model_stays_one():
    config = GPT2Config(n_layer=1, n_head=2, n_embd=8, n_ctx=8, vocab_size=50, labels=("a", "b"), pad_token_id=3)
    d = config.to_hf_dict()
    assert d["architectures"] == ["GPT2ForSequenceClassification"]
    assert d["id2label"] == {"0": "a", "1": "b"} and d["label2id"] == {"a": 0, "b": 1} and d["pad_token_id"] == 3
    assert GPT2Config.from_hf_dict(json.loads(json.dumps(d))) == config
    lm = json.loads((TINY / "config.json").read_text())
    # transformers writes id2label {0: LABEL_0, 1: LABEL_1} into every config: not a classifier's.
    lm = {**lm, "id2label": {"0": "LABEL_0", "1": "LABEL_1"}}
    assert GPT2Config.from_hf_dict(lm).labels == ()
    assert GPT2Config.from_hf_dict(lm).to_hf_dict()["architectures"] == ["GPT2LMHeadModel"]
    with pytest.raises(PicoGPTError, match="2 distinct label names"):
        GPT2Config(labels=("a", "a"))


def test_a_head_without_its_config_or_a_config_without_its_head_is_refused(tmp_path):
    model = picogpt.load_model(CLS)
    picogpt.save_model(model, tmp_path / "c")
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    (tmp_path / "c" / "config.json").write_text(json.dumps({**cfg, "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(PicoGPTError, match="score.weight"):
        picogpt.load_model(tmp_path / "c")
    lm = picogpt.load_model(TINY)
    picogpt.save_model(lm, tmp_path / "l")
    (tmp_path / "l" / "config.json").write_text(json.dumps({**json.loads((tmp_path / "l" / "config.json").read_text()),
                                                            **H.label_fields(["x", "y"], 0)}))
    with pytest.raises(PicoGPTError, match="score.weight"):
        picogpt.load_model(tmp_path / "l")


def test_make_classifier_adds_a_transformers_initialised_head_and_leaves_the_lm_alone():
    lm = picogpt.load_model(TINY)
    before = {k: a.copy() for k, a in lm.params.items()}
    model = picogpt.make_classifier(lm, ["neg", "pos"], seed=0)
    assert isinstance(model, picogpt.GPT2Classifier) and model.config.labels == ("neg", "pos")
    assert model.config.pad_token_id == lm.config.vocab_size - 1   # a small vocabulary has no <|endoftext|>
    W = model.params[H.SCORE]
    assert W.shape == (2, lm.config.n_embd) and abs(float(W.std()) - 0.02) < 0.005 and abs(float(W.mean())) < 0.005
    np.testing.assert_array_equal(W, H.init_classifier(lm.config, 2, seed=0))
    model.params["wte.weight"] += 1.0   # the classifier's arrays are its own
    assert all(np.array_equal(lm.params[k], before[k]) for k in before) and H.SCORE not in lm.params
    assert picogpt.make_classifier(picogpt.load_model(), ["a", "b"]).config.pad_token_id == 50256


def test_classify_takes_strings_with_a_tokenizer_and_cuts_long_rows_from_the_left():
    model = picogpt.make_classifier(picogpt.load_model(), ["a", "b", "c"], seed=0)
    tok = picogpt.get_tokenizer()
    texts = ["O Romeo, Romeo, wherefore art thou Romeo?", "Now is the winter"]
    np.testing.assert_allclose(model.classify(texts), model.classify([tok.encode(t) for t in texts]), atol=1e-6)
    n = model.config.n_ctx
    long = list(np.arange(n + 30) % 1000 + 100)
    np.testing.assert_allclose(model.classify([long]), model.classify([long[-n:]]), atol=1e-6)


@pytest.mark.parametrize("rows, message", [("one text", "list of rows"), ([], "no rows"), ([[1], []], "empty"),
                                           ([[1, 200]], "must be in")])
def test_bad_rows_are_one_sentence(rows, message):
    with pytest.raises(PicoGPTError, match=message):
        picogpt.load_model(CLS).classify(rows)


def test_to_keeps_a_classifier_a_classifier(ref):
    model = picogpt.load_model(CLS).to(dtype="float64")
    assert isinstance(model, picogpt.GPT2Classifier) and model.dtype == np.float64
    assert rel_err(model.classify(rows_of(ref, "ragged")), ref["ragged_logits"]) <= 1e-4


def test_generate_refuses_a_classifier_in_one_sentence():
    r = run_module("picogpt.generate", "hello", "--model", CLS)
    assert_clean_error(r, "sequence classifier", "--task classify", alone=True)


@pytest.mark.gpu
def test_make_classifier_on_the_gpu_agrees_with_the_cpu():
    cpu = picogpt.make_classifier(picogpt.load_model(TINY), ["a", "b", "c"], seed=2)
    gpu = cpu.to("gpu")
    rows = [[1, 2, 3, 4], [5, 6], [7, 8, 9, 10, 11, 12, 13]]
    assert isinstance(gpu, picogpt.GPT2Classifier) and gpu.device == "gpu"
    assert rel_err(gpu.classify(rows), host(cpu.classify(rows))) <= 1e-5
