"""`python -m picogpt.eval --task generate|choice|lambada`: what the commands print and write equals
the library functions they stand on (generate + picogpt.metrics, picogpt.score), batches equal
single records, and a bad record is one sentence naming its line. Plain `--text` eval is unchanged."""

import json
import subprocess

import pytest

import picogpt
from helpers import assert_clean_error, write_text
from picogpt import eval as ev
from picogpt import metrics, score
from picogpt.generation import cut_at_stop, generate

PAIRS = [
    {"prompt": "The king said", "reference": "the king said nothing at all"},
    {"prompt": "Once upon a time there was a", "references": ["princess who slept", "king who ruled"]},
    {"prompt": "Q: What is two plus two?\nA:", "reference": "four"},
    {"prompt": "Translate: cat =", "reference": "chat"},
    {"prompt": "Hello", "reference": "world, é 42!"},
]
HELLASWAG = [
    {"ctx": "A man is sitting on a roof. he", "endings": ["is using wrap to wrap a pair of skis.",
     "is ripping level tiles off.", "is holding a rubik's cube.", "starts pulling up roofing on a roof."], "label": 3},
    {"ctx_a": "A woman walks into the kitchen.", "ctx_b": "she", "activity_label": "Cooking",
     "endings": ["opens the fridge.", "flies away.", "sings to a cat."], "label": "0"},
]


def run(argv, capsys):
    code = ev.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, out, err)


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def tok():
    return picogpt.get_tokenizer()


def test_generate_task_equals_generate_and_metrics(gpt2_vocab_model, tmp_path, tok, capsys):
    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    opts = ["--max-new-tokens", 8, "--batch-size", 2, "--num-beams", 2, "--no-repeat-ngram-size", 2, "--stop", "\n"]
    r = run(["--task", "generate", "--data", data, "--model", gpt2_vocab_model, *opts], capsys)
    assert r.returncode == 0, r.stderr
    written = [json.loads(line) for line in (tmp_path / "pairs.predictions.jsonl").read_text().splitlines()]
    assert [w["prompt"] for w in written] == [p["prompt"] for p in PAIRS]
    model = picogpt.load_model(gpt2_vocab_model)
    preds = []
    for p in PAIRS:   # one record at a time: the batched command must agree
        ids = tok.encode(p["prompt"])
        row = generate(model, ids, 8, num_beams=2, no_repeat_ngram_size=2, stop="\n", eot_token=tok.eot_token)
        preds.append(cut_at_stop(tok.decode([t for t in row[len(ids):].tolist() if t != tok.eot_token]), "\n"))
    assert [w["prediction"] for w in written] == preds
    refs = [p.get("references", [p.get("reference")]) for p in PAIRS]
    assert [w["references"] for w in written] == refs
    s = metrics.generation_scores(preds, refs)
    assert f"BLEU {s['bleu']:.2f}  ROUGE-1 {s['rouge1']:.4f}" in r.stdout
    assert f"distinct-2 {s['distinct2']:.4f}" in r.stdout
    assert "5/5" in r.stderr   # the progress bar reached the end


def test_generate_task_record_without_reference(gpt2_vocab_model, tmp_path, capsys):
    data = write_jsonl(tmp_path / "bad.jsonl", [PAIRS[0], {"prompt": "no answer here"}])
    r = run(["--task", "generate", "--data", data, "--model", gpt2_vocab_model], capsys)
    assert_clean_error(r, "line 2", "reference", alone=True)
    assert not (tmp_path / "bad.predictions.jsonl").exists()


@pytest.mark.parametrize("argv, needle", [
    (["--task", "choice"], "--data"),
    (["--task", "generate", "--data", "nowhere.jsonl"], "nowhere.jsonl"),
    (["--task", "generate", "--data", "DATA", "--num-beams", "0"], "num_beams"),
    (["--task", "generate", "--data", "DATA", "--repetition-penalty", "-1"], "repetition_penalty"),
    (["--model", "shakespeare"], "--text"),
])
def test_task_mistakes_are_one_sentence(gpt2_vocab_model, tmp_path, capsys, argv, needle):
    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    argv = [str(data) if a == "DATA" else a for a in argv]
    r = run([*argv, "--model", gpt2_vocab_model] if "--model" not in argv else argv, capsys)
    assert_clean_error(r, needle, alone=True)


def test_choice_task_equals_score(gpt2_vocab_model, tmp_path, tok, capsys):
    data = write_jsonl(tmp_path / "hs.jsonl", HELLASWAG)
    r = run(["--task", "choice", "--data", data, "--model", gpt2_vocab_model, "--batch-size", 3], capsys)
    assert r.returncode == 0, r.stderr
    want = score.choice_accuracy(picogpt.load_model(gpt2_vocab_model), tok, HELLASWAG)
    assert f"acc {want['acc']:.4f}  acc_norm {want['acc_norm']:.4f}" in r.stdout
    assert "2 questions" in r.stdout


def test_lambada_task_equals_score(gpt2_vocab_model, tmp_path, tok, capsys):
    lines = ["He opened the door and saw his old friend", "", "The cat sat on the mat and fell asleep on the mat"]
    data = tmp_path / "lambada.txt"
    data.write_text("\n".join(lines) + "\n")
    r = run(["--task", "lambada", "--data", data, "--model", gpt2_vocab_model], capsys)
    assert r.returncode == 0, r.stderr
    want = score.lambada(picogpt.load_model(gpt2_vocab_model), tok, lines)
    assert f"last-word accuracy {want['acc']:.4f}  perplexity {want['ppl']:.2f}" in r.stdout
    assert "2 passages" in r.stdout


def test_plain_lm_eval_unchanged(gpt2_vocab_model, tmp_path, capsys):
    text = write_text(tmp_path / "t.txt", n_lines=10)
    r = run(["--model", gpt2_vocab_model, "--text", text, "--context", 32], capsys)
    assert r.returncode == 0, r.stderr
    assert "loss" in r.stdout and "perplexity" in r.stdout


def test_model_score_equals_transformers():
    """GPT2.score is picogpt.score.score: transformers' log-probabilities (tests/fixtures/score.json)."""
    from helpers import FIXTURES, TINY
    ref = json.loads((FIXTURES / "score.json").read_text())["pairs"]
    s = picogpt.load_model(TINY).score([p["context"] for p in ref], [p["continuation"] for p in ref], batch_size=4)
    for p, lp, n, greedy in zip(ref, s.logprob, s.tokens, s.greedy):
        assert abs(lp - p["logprob"]) <= 1e-4 and n == len(p["continuation"]) and greedy == p["greedy"]


def _zero_shot():
    import importlib.util
    from helpers import ROOT
    spec = importlib.util.spec_from_file_location("zero_shot", ROOT / "examples" / "zero_shot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_zero_shot_prompts_are_the_papers():
    zs = _zero_shot()
    assert zs.tldr_prompt("Text.") == "Text.\nTL;DR:"
    assert zs.translation_prompt("Hi.", [("Yes.", "Oui.")]) == "Yes. = Oui.\nHi. ="
    assert zs.qa_prompt("Why?", [("Who?", "Me")]) == "Q: Who?\nA: Me\n\nQ: Why?\nA:"
    assert zs.first_sentences("One. Two! Three? Four.") == "One. Two! Three?"


@pytest.mark.slow
def test_zero_shot_example_runs_on_the_bundled_model(capsys):
    results = _zero_shot().main([])
    out = capsys.readouterr().out
    assert out.count("toy data") == 3
    for scores in results.values():
        assert all(0.0 <= v <= 100.0 for v in scores.values())
