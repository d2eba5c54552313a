"""The GPT-2 paper's zero-shot recipes (Radford et al. 2019, "Language Models are Unsupervised
Multitask Learners", section 3), written out as plain prompts, decoded with picogpt and scored
with picogpt.metrics:

    summarisation   article + "\\nTL;DR:", 100 tokens of top-k sampling with k = 2, the first
                    3 sentences are the summary                               -> ROUGE-1/2/L
    translation     a few "english sentence = french sentence" lines, then
                    "english sentence =", greedy, the first line is the translation  -> BLEU
    question answering  a few "Q: ... A: ..." pairs, then "Q: question A:", greedy, the first
                    line is the answer                      -> exact match (accuracy), ROUGE-1

    python examples/zero_shot.py                       # the bundled Shakespeare model
    python examples/zero_shot.py --model gpt2          # OpenAI's GPT-2 124M (downloaded on first use)

THE DATA BELOW IS TOY DATA, written for this example (a handful of items each, not a benchmark):
its scores say that the recipe runs end to end, not how good a model is. The paper's figures
come from CNN/Daily Mail, WMT-14 French-English and Natural Questions.

Real GPT-2 weights could not be downloaded where this example was written, so it has only been
run on the bundled model, which knows nothing but Shakespeare: expect scores near 0 from it
(its translations are blank verse). With `--model gpt2` the same code runs the real recipe.
"""

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # run from a clone without installing

import picogpt  # noqa: E402
from picogpt import metrics  # noqa: E402

# --- toy data (written for this example) -----------------------------------------------------------

ARTICLES = [  # (article, reference summary)
    ("The city council voted on Tuesday to close the old bridge over the river for repairs. Engineers found "
     "cracks in two of its supports last month. The bridge will stay closed for six months, and a free ferry "
     "will carry people across the river until it opens again.",
     "The old bridge will close for six months of repairs after engineers found cracks. A free ferry will run."),
    ("A small bakery in the village won a national prize for its bread this week. The owner, who opened the shop "
     "ten years ago, said she still gets up at four every morning to bake. Queues now stretch down the street.",
     "A village bakery won a national bread prize; its owner still bakes from four every morning."),
    ("Heavy snow closed schools across the region on Monday. Buses could not run on icy roads, and the weather "
     "service warned that more snow would fall overnight. Schools hope to open again on Wednesday.",
     "Snow closed the region's schools on Monday; more snow is expected and schools may reopen Wednesday."),
]

TRANSLATION_SHOTS = [  # "english = french" pairs shown to the model before each question
    ("I like apples.", "J'aime les pommes."),
    ("Where is the station?", "Où est la gare ?"),
    ("The weather is nice today.", "Il fait beau aujourd'hui."),
]
TRANSLATIONS = [  # (english, reference french)
    ("The cat is black.", "Le chat est noir."),
    ("I am tired.", "Je suis fatigué."),
    ("We are going to the sea.", "Nous allons à la mer."),
    ("Thank you very much.", "Merci beaucoup."),
]

QA_SHOTS = [
    ("What is the capital of France?", "Paris"),
    ("How many legs does a spider have?", "eight"),
    ("Who wrote Romeo and Juliet?", "William Shakespeare"),
]
QUESTIONS = [  # (question, reference answer)
    ("What is the capital of Italy?", "Rome"),
    ("How many days are in a week?", "seven"),
    ("What colour is the sky on a clear day?", "blue"),
    ("Who wrote Hamlet?", "William Shakespeare"),
]


# --- the prompts ------------------------------------------------------------------------------------

def tldr_prompt(article):
    """Summarisation, zero-shot: the article, then "TL;DR:" (what Reddit users write before a summary)."""
    return article + "\nTL;DR:"


def translation_prompt(sentence, shots=TRANSLATION_SHOTS):
    """Translation, few-shot: "english = french" lines, then the sentence and " =" for the model to go on."""
    return "".join(f"{en} = {fr}\n" for en, fr in shots) + f"{sentence} ="


def qa_prompt(question, shots=QA_SHOTS):
    """Question answering, few-shot: "Q: ... A: ..." pairs, then the question and "A:"."""
    return "".join(f"Q: {q}\nA: {a}\n\n" for q, a in shots) + f"Q: {question}\nA:"


def first_sentences(text, n=3):
    """The first n sentences of a text (the paper's summary is the first 3 generated)."""
    return " ".join(re.split(r"(?<=[.!?])\s+", text.strip())[:n])


def first_line(text):
    return text.strip().split("\n")[0].strip()


def new_text(model, tok, prompts, max_new_tokens, **options):
    """The text each prompt's row adds (its prompt may have been cut from the left to fit)."""
    ids = [tok.encode(p)[-(model.config.n_ctx - max_new_tokens):] for p in prompts]
    rows = model.generate(ids, max_new_tokens, eot_token=tok.eot_token, **options)
    return [tok.decode([t for t in row[len(p):] if t != tok.eot_token]) for row, p in zip(rows, ids)]


# --- the recipes ------------------------------------------------------------------------------------

def summarise(model, tok, seed=0):
    outs = new_text(model, tok, [tldr_prompt(a) for a, _ in ARTICLES], 100, temperature=1.0, top_k=2, seed=seed)
    summaries = [first_sentences(o) for o in outs]
    return summaries, metrics.rouge(summaries, [r for _, r in ARTICLES])


def translate(model, tok):
    outs = new_text(model, tok, [translation_prompt(en) for en, _ in TRANSLATIONS], 24, stop="\n")
    french = [first_line(o) for o in outs]
    return french, {"bleu": metrics.bleu(french, [[fr] for _, fr in TRANSLATIONS])}


def answer(model, tok):
    outs = new_text(model, tok, [qa_prompt(q) for q, _ in QUESTIONS], 12, stop="\n")
    answers = [first_line(o) for o in outs]
    refs = [a for _, a in QUESTIONS]
    exact = metrics.accuracy([r.lower().rstrip(".") for r in refs], [a.lower().rstrip(".") for a in answers])
    return answers, {"exact_match": exact, "rouge1": metrics.rouge(answers, refs)["rouge1"]}


def main(argv=None):
    p = argparse.ArgumentParser(description="The GPT-2 paper's zero-shot recipes on toy data (see the docstring).")
    p.add_argument("--model", default=None, help="shakespeare (bundled, the default), gpt2, ... or a folder")
    p.add_argument("--device", default=None, choices=["cpu", "gpu"])
    p.add_argument("--seed", type=int, default=0, help="for the summaries' top-k sampling")
    args = p.parse_args(argv)
    model, tok = picogpt.load_model(args.model, device=args.device), picogpt.get_tokenizer()
    results = {}
    for name, (outs, scores) in (("summarisation (TL;DR:)", summarise(model, tok, args.seed)),
                                 ("translation (english = french)", translate(model, tok)),
                                 ("question answering (few-shot Q/A)", answer(model, tok))):
        print(f"== {name}, toy data, model {args.model or 'shakespeare (bundled)'}")
        for o in outs:
            print(f"   {o[:100]!r}")
        print("   " + "  ".join(f"{k} {v:.4f}" for k, v in scores.items()))
        results[name] = scores
    return results


if __name__ == "__main__":
    main()
