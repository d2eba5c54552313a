"""Fine-tuning on examples through the commands: `picogpt.data --task sft|classify`, the trainer
on such folders (task from meta.json, exact resume, --epochs, LoRA, a classifier's head), early
stopping (--patience, with a scripted validation curve), `picogpt.eval --task classify|sft`."""

import json

import numpy as np
import pytest
from helpers import host, quiet

import picogpt
from picogpt import data as D
from picogpt import eval as E
from picogpt import heads as H
from picogpt import safetensors, sft
from picogpt import train as T

WORDS = "the king queen lord lady love death war night day sword crown fool wit song".split()


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def sft_records(n, seed=0):
    rng = np.random.default_rng(seed)
    say = lambda: " ".join(rng.choice(WORDS, rng.integers(3, 12)))   # noqa: E731
    return [{"messages": [{"role": "HAMLET", "content": say()}, {"role": "HORATIO", "content": say()}]}
            if i % 2 else {"prompt": say(), "response": say()} for i in range(n)]


def classify_records(n, seed=0, labels=("comedy", "tragedy")):
    # the label is readable from the words, so a classifier can learn it
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        label = labels[i % len(labels)]
        words = list(rng.choice(WORDS, rng.integers(4, 10))) + (["fool", "wit"] if label == "comedy" else ["death"])
        rng.shuffle(words)
        out.append({"text": " ".join(words), "label": label})
    return out


def prepare(tmp_path_factory, task, records):
    """A data folder made by `python -m picogpt.data --task TASK` from 24 train and 8 val records."""
    tmp = tmp_path_factory.mktemp(task)
    train = write_jsonl(tmp / "train.jsonl", records(24))
    val = write_jsonl(tmp / "val.jsonl", records(8, seed=1))
    assert D.main(["--task", task, str(train), "--val", str(val), "--out", str(tmp / "data")]) == 0
    return tmp / "data"


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory):
    return prepare(tmp_path_factory, "sft", sft_records)


@pytest.fixture(scope="module")
def cls_dir(tmp_path_factory):
    return prepare(tmp_path_factory, "classify", classify_records)


def trainer(data, model_dir, out, **kw):
    kw = {"batch_size": 4, "steps": 4, "warmup_steps": 1, "eval_interval": 2, "eval_batches": 2, "log_interval": 2,
          "lr": 1e-3, "device": "cpu", **kw}
    cfg = T.TrainConfig(data=str(data), init=str(model_dir), out=str(out), **kw)
    return T.Trainer(cfg, log=quiet)


# --- picogpt.data --task sft | classify --------------------------------------------------------

def test_data_writes_sft_examples_that_round_trip(sft_dir, tmp_path):
    meta = json.loads((sft_dir / "meta.json").read_text())
    assert meta["task"] == "sft" and meta["splits"]["train"]["examples"] == 24 and meta["splits"]["val"]["examples"] == 8
    ex = sft.load_examples(sft_dir, "train")
    tok = picogpt.get_tokenizer()
    for i, record in enumerate(sft_records(24)[:5]):
        ids, mask = sft.encode_record(record, tok)
        got_ids, got_mask, _ = ex[i]
        np.testing.assert_array_equal(got_ids, ids)
        np.testing.assert_array_equal(got_mask, mask)


def test_data_without_val_keeps_the_last_records(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", sft_records(20))
    assert D.main(["--task", "sft", str(src), "--out", str(tmp_path / "o"), "--val-fraction", "0.25"]) == 0
    meta = json.loads((tmp_path / "o" / "meta.json").read_text())
    assert meta["splits"]["train"]["examples"] == 15 and meta["splits"]["val"]["examples"] == 5
    tok = picogpt.get_tokenizer()
    np.testing.assert_array_equal(sft.load_examples(tmp_path / "o", "val")[0][0],
                                  sft.encode_record(sft_records(20)[15], tok)[0])


def test_data_classify_keeps_label_names_and_refuses_an_unknown_one(cls_dir, tmp_path, capsys):
    meta = json.loads((cls_dir / "meta.json").read_text())
    assert meta["task"] == "classify" and meta["label_names"] == ["comedy", "tragedy"]
    assert list(sft.load_examples(cls_dir, "val").labels) == [0, 1] * 4
    train = write_jsonl(tmp_path / "t.jsonl", classify_records(6))
    val = write_jsonl(tmp_path / "v.jsonl", classify_records(3) + [{"text": "a fool", "label": "history"}])
    assert D.main(["--task", "classify", str(train), "--val", str(val), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "line 4" in err and "unknown label 'history'" in err


def test_show_marks_the_trained_tokens(tmp_path, capsys):
    src = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Who is there?", "response": "Nay, answer me."}] * 3)
    assert D.main(["--task", "sft", str(src), "--show", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("--- record") == 2 and "user:\nWho is there?<|endoftext|>assistant:\n[[Nay, answer me.<|endoftext|>]]" in out
    assert not (tmp_path / "data").exists()   # --show writes nothing
    src = write_jsonl(tmp_path / "c.jsonl", classify_records(3))
    assert D.main(["--task", "classify", str(src), "--show", "1"]) == 0
    assert "label 'comedy'" in capsys.readouterr().out


@pytest.mark.parametrize("lines, needle", [
    (['{"prompt": "a", "response": "b"}', '{"prompt": "a", "response": '], "line 2: malformed JSON"),
    (['{"prompt": "a"}'], "line 1: missing field 'response'"),
    ([""], "the dataset is empty"),
])
def test_bad_records_are_one_sentence_naming_the_line(tmp_path, capsys, lines, needle):
    src = tmp_path / "bad.jsonl"
    src.write_text("\n".join(lines) + "\n")
    assert D.main(["--task", "sft", str(src), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and needle in err, err


def test_data_refuses_show_for_a_text(tmp_path, capsys):
    (tmp_path / "t.txt").write_text("some text " * 50)
    assert D.main([str(tmp_path / "t.txt"), "--show", "2"]) == 2
    assert "--task sft" in capsys.readouterr().err


# --- training on examples --------------------------------------------------------------------

def test_task_of_reads_meta_json(sft_dir, cls_dir, tmp_path):
    (tmp_path / "t.txt").write_text("x")
    assert (T.task_of(sft_dir), T.task_of(cls_dir), T.task_of(tmp_path / "t.txt")) == ("sft", "classify", "lm")


def test_an_sft_step_trains_on_padded_examples_with_their_masks(sft_dir, gpt2_vocab_model, tmp_path):
    t = trainer(sft_dir, gpt2_vocab_model, tmp_path / "o")
    assert t.task == "sft" and len(t.batches) == 6
    probe = sft.ExampleBatches(t.examples["train"], 4, t.block_size, seed=0)
    x, y = probe.next()
    want = t.model.loss(x, y)
    assert t.step()["loss"] == pytest.approx(want, rel=1e-6)   # the first step's loss is that batch's


def test_examples_longer_than_the_block_are_counted_in_the_log(sft_dir, gpt2_vocab_model, tmp_path):
    said = []
    t = T.Trainer(T.TrainConfig(data=str(sft_dir), init=str(gpt2_vocab_model), out=str(tmp_path / "o"), block_size=12,
                                batch_size=4, steps=1, eval_batches=1, warmup_steps=0, device="cpu"), log=said.append)
    longer = int((t.examples["train"].lengths() > 13).sum())
    assert longer > 0 and t.batches.truncated == longer
    x, y = t.batches.next()
    assert x.shape[1] <= 12 and (y != -100).any(axis=1).all()   # cut from the left: the reply stays
    t.run()
    assert f"{longer} train examples longer than the block cut from the left" in said[0]


def test_resume_of_an_sft_run_is_exact(sft_dir, gpt2_vocab_model, tmp_path):
    # 7 steps of 4 examples over 24 cross an epoch boundary (6 batches per epoch)
    kw = {"steps": 7, "eval_interval": 100, "save_interval": 100}
    whole = trainer(sft_dir, gpt2_vocab_model, tmp_path / "a", **kw)
    whole.run()
    half = trainer(sft_dir, gpt2_vocab_model, tmp_path / "b", **kw)
    for _ in range(4):
        half.step()
    half.save_checkpoint()   # as a run stopped after step 4 left it
    assert json.loads(safetensors.read_header(tmp_path / "b" / "checkpoint.safetensors")[1]["sampler"]) == \
        {"epoch": 0, "position": 16, "seed": 0}
    rest = trainer(sft_dir, gpt2_vocab_model, tmp_path / "b", resume=True, **kw)
    assert rest.batches.state()["position"] == 16
    rest.run()
    for k, a in whole.model.params.items():
        np.testing.assert_array_equal(host(rest.model.params[k]), host(a), err_msg=k)


def test_epochs_set_the_steps(sft_dir, gpt2_vocab_model, tmp_path):
    assert trainer(sft_dir, gpt2_vocab_model, tmp_path / "o", epochs=2).cfg.steps == 12   # 6 batches per epoch
    assert trainer(sft_dir, gpt2_vocab_model, tmp_path / "p", epochs=3, grad_accum=4).cfg.steps == 5   # ceil(18 / 4)


def test_a_classifier_is_trained_and_evaluated_with_its_accuracy(cls_dir, gpt2_vocab_model, tmp_path):
    t = trainer(cls_dir, gpt2_vocab_model, tmp_path / "o", steps=6)
    assert isinstance(t.model, picogpt.GPT2Classifier) and t.model.config.labels == ("comedy", "tragedy")
    x, lengths, labels = sft.ExampleBatches(t.examples["train"], 4, t.block_size, seed=0).next()
    want = H.classification_loss_and_grads(t.model.params, t.model.config, x, labels, lengths=lengths)[0]
    assert t.step()["loss"] == pytest.approx(float(want), rel=1e-6)
    last = t.run()
    assert 0.0 <= last["val_accuracy"] <= 1.0 and "train_accuracy" in last
    log = [json.loads(line) for line in (tmp_path / "o" / "log.jsonl").read_text().splitlines()]
    assert any("val_accuracy" in r for r in log)
    back = picogpt.load_model(tmp_path / "o")
    assert isinstance(back, picogpt.GPT2Classifier) and back.config.labels == ("comedy", "tragedy")
    np.testing.assert_allclose(back.params[H.SCORE], host(t.model.params[H.SCORE]))


def test_lora_on_a_classifier_trains_the_adapters_and_the_head_only(cls_dir, gpt2_vocab_model, tmp_path):
    t = trainer(cls_dir, gpt2_vocab_model, tmp_path / "o", lora_rank=2)
    before = {k: host(a).copy() for k, a in t.model.params.items()}
    for _ in range(2):
        t.step()
    changed = {k for k, a in t.model.params.items() if not np.array_equal(host(a), before[k])}
    assert H.SCORE in changed and changed <= {H.SCORE} | {k for k in before if k.endswith((".lora_A", ".lora_B"))}


def test_a_classifier_with_other_labels_or_for_sft_is_refused(cls_dir, sft_dir, gpt2_vocab_model, tmp_path):
    other = picogpt.make_classifier(picogpt.load_model(gpt2_vocab_model), ["x", "y"])
    picogpt.save_model(other, tmp_path / "m")
    with pytest.raises(picogpt.PicoGPTError, match="classifies into x, y"):
        trainer(cls_dir, tmp_path / "m", tmp_path / "o")
    with pytest.raises(picogpt.PicoGPTError, match="needs a language model"):
        trainer(sft_dir, tmp_path / "m", tmp_path / "p")


# --- early stopping ----------------------------------------------------------------------------

@pytest.mark.parametrize("task", ["sft", "lm"])
def test_early_stopping_stops_at_the_right_evaluation_and_keeps_the_best_model(task, sft_dir, gpt2_vocab_model,
                                                                               tmp_path, monkeypatch):
    if task == "lm":
        data = tmp_path / "text.txt"
        data.write_text(" ".join(np.random.default_rng(0).choice(WORDS, 3000)))
    else:
        data = sft_dir
    curve = iter([3.0, 2.0, 2.5, 1.9, 2.2, 2.1, 2.0, 1.0])   # val losses at steps 1, 2, ...: best 1.9 at step 4
    snapshots = {}

    def scripted(self, split="val"):
        if split == "train":
            return 0.0
        snapshots[self.step_num] = {k: host(a).copy() for k, a in self.model.params.items()}
        return next(curve)

    monkeypatch.setattr(T.Trainer, "evaluate", scripted)
    t = trainer(data, gpt2_vocab_model, tmp_path / "o", steps=8, eval_interval=1, log_interval=1, patience=3,
                save_interval=100, **({"block_size": 16} if task == "lm" else {}))
    last = t.run()
    assert last["stopped_early"] and last["step"] == 7 and t.step_num == 7   # 3 evaluations after step 4's
    assert (t.best_step, t.best_val) == (4, 1.9)
    best = picogpt.load_model(tmp_path / "o")
    for k, a in best.params.items():
        np.testing.assert_array_equal(a, snapshots[4][k], err_msg=k)   # the folder's model is step 4's
    header, meta, _ = safetensors.read_header(tmp_path / "o" / "checkpoint.safetensors")
    assert int(meta["step"]) == 7   # the checkpoint is the last step, so --resume continues from there
    ckpt = safetensors.load(tmp_path / "o" / "checkpoint.safetensors")
    np.testing.assert_array_equal(ckpt["param:wte.weight"], snapshots[7]["wte.weight"])
    evals = [json.loads(line) for line in (tmp_path / "o" / "log.jsonl").read_text().splitlines() if '"eval"' in line]
    assert [r["step"] for r in evals if r.get("best")] == [1, 2, 4]


def test_resume_after_early_stopping_continues_with_the_count(sft_dir, gpt2_vocab_model, tmp_path, monkeypatch):
    curve = iter([2.0, 2.5, 2.6, 2.7, 1.5])
    monkeypatch.setattr(T.Trainer, "evaluate", lambda self, split="val": 0.0 if split == "train" else next(curve))
    kw = {"steps": 8, "eval_interval": 1, "log_interval": 1, "patience": 2, "save_interval": 100}
    t = trainer(sft_dir, gpt2_vocab_model, tmp_path / "o", **kw)
    assert t.run()["step"] == 3
    again = trainer(sft_dir, gpt2_vocab_model, tmp_path / "o", resume=True, **kw)
    assert (again.step_num, again.since_best, again.best_step) == (3, 2, 1)
    last = again.run()   # step 4 is another evaluation without a lower loss: stop again
    assert last["step"] == 4 and last["stopped_early"]


@pytest.mark.parametrize("args, needle", [(["--patience", "0"], "--patience must be >= 1"),
                                          (["--steps", "3", "--epochs", "1"], "not both"),
                                          (["--epochs", "0"], "--epochs must be >= 1")])
def test_bad_train_flags_are_one_sentence(sft_dir, tmp_path, capsys, args, needle):
    assert T.main(["--data", str(sft_dir), "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and needle in err, err


# --- picogpt.eval --task classify | sft --------------------------------------------------------------

@pytest.fixture(scope="module")
def classifier_dir(gpt2_vocab_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("clsmodel")
    picogpt.save_model(picogpt.make_classifier(picogpt.load_model(gpt2_vocab_model), ["comedy", "tragedy"], seed=3),
                       folder)
    return folder


def test_eval_classify_prints_accuracy_f1_and_the_confusion_matrix(classifier_dir, cls_dir, tmp_path, capsys):
    from picogpt import metrics
    records = classify_records(8, seed=1)
    src = write_jsonl(tmp_path / "v.jsonl", records)
    model = picogpt.load_model(classifier_dir)
    pred = model.predict([r["text"] for r in records])
    truth = [r["label"] for r in records]
    for data in (src, cls_dir):   # a JSONL file, or the folder's val split (the same records)
        assert E.main(["--task", "classify", "--data", str(data), "--model", str(classifier_dir)]) == 0
        out = capsys.readouterr().out
        assert f"accuracy {metrics.accuracy(truth, pred):.4f}" in out
        assert f"macro-F1 {metrics.f1(truth, pred, ['comedy', 'tragedy']):.4f}" in out
        counts = metrics.confusion_matrix(truth, pred, ["comedy", "tragedy"])
        rows = [line.split() for line in out.splitlines() if line.startswith(("comedy", "tragedy"))]
        assert [[int(c) for c in r[1:]] for r in rows] == counts.tolist()


def test_eval_classify_refuses_an_unknown_label_and_a_language_model(classifier_dir, gpt2_vocab_model, tmp_path,
                                                                     capsys):
    src = write_jsonl(tmp_path / "v.jsonl", classify_records(2) + [{"text": "the king", "label": "history"}])
    assert E.main(["--task", "classify", "--data", str(src), "--model", str(classifier_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "line 3" in err and "unknown label 'history'" in err
    assert E.main(["--task", "classify", "--data", str(src), "--model", str(gpt2_vocab_model)]) == 2
    assert "not a classifier" in capsys.readouterr().err


def test_eval_sft_is_the_loss_of_the_trained_tokens(sft_dir, gpt2_vocab_model, tmp_path, capsys):
    src = write_jsonl(tmp_path / "v.jsonl", sft_records(8, seed=1))
    model = picogpt.load_model(gpt2_vocab_model)
    tok = picogpt.get_tokenizer()
    total = count = 0
    for record in sft_records(8, seed=1):   # one example at a time
        x, y = sft.targets(*sft.encode_record(record, tok))
        n = int((y != -100).sum())
        total, count = total + model.loss(x[None], y[None]) * n, count + n
    for data in (src, sft_dir):
        assert E.main(["--task", "sft", "--data", str(data), "--model", str(gpt2_vocab_model), "--batch-size", "3"]) == 0
        out = capsys.readouterr().out
        assert f"loss {total / count:.4f} nats per trained token ({count:,} tokens)" in out


# --- the device --------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("which", ["sft", "classify"])
def test_training_steps_on_examples_agree_on_the_gpu(which, sft_dir, cls_dir, gpt2_vocab_model, tmp_path):
    data = sft_dir if which == "sft" else cls_dir
    cpu = trainer(data, gpt2_vocab_model, tmp_path / "c")
    gpu = T.Trainer(T.TrainConfig(**{**vars(cpu.cfg), "device": "gpu", "out": str(tmp_path / "g")}), log=quiet)
    for _ in range(3):
        assert gpu.step()["loss"] == pytest.approx(cpu.step()["loss"], abs=1e-4)
    assert gpu.evaluate("val") == pytest.approx(cpu.evaluate("val"), abs=1e-4)
    assert gpu.accuracy == cpu.accuracy
