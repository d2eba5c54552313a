"""Scores for generated text and for classifiers, written out to be read.

    bleu(hypotheses, references)          corpus BLEU, 0-100, = sacrebleu.corpus_bleu(...).score
    rouge(hypotheses, references)         ROUGE-1/2/L F1 averaged over pairs, = Google's rouge-score
    distinct_n(texts, n)                  distinct n-grams / all n-grams (diversity of generated text)
    generation_scores(hypotheses, references)   all of the above at once, as `eval --task generate` reports
    accuracy(y_true, y_pred)              fraction of equal labels
    f1(y_true, y_pred, labels=None)       macro F1: the mean over labels of each label's F1
    confusion_matrix(y_true, y_pred, labels)   counts[true, predicted]

References, for `bleu` and `rouge`: a list with one entry per hypothesis, each entry a string
(one reference) or a list of strings (several references for that hypothesis):

    bleu(["the cat sat"], ["the cat sat down"])                       one reference each
    bleu(["the cat sat"], [["the cat sat down", "a cat was sitting"]])  several

sacrebleu lays its argument out the other way round: a list of reference *streams*, stream k
holding the k-th reference of every hypothesis (`corpus_bleu(hyps, [refs_1, refs_2])`).

Plain Python and NumPy: no dependency at run time. tests/fixtures/make_metrics.py checks every
function here against sacrebleu and rouge-score.
"""

import math
import re
from collections import Counter

import numpy as np

from .errors import PicoGPTError

BLEU_MAX_ORDER = 4


# ---------------------------------------------------------------------------------------------
# Inputs


def _pairs(hypotheses, references, metric):
    """Check the inputs of bleu/rouge; return (hypotheses, [list of references per hypothesis])."""
    if isinstance(hypotheses, str) or isinstance(references, str):
        raise PicoGPTError(f"{metric} takes a list of hypotheses and a list of references, not a single string.")
    hypotheses, references = list(hypotheses), list(references)
    if len(hypotheses) != len(references):
        raise PicoGPTError(f"{metric} got {len(hypotheses)} hypotheses but {len(references)} references: "
                           "give one reference (or one list of references) per hypothesis.")
    if not hypotheses:
        raise PicoGPTError(f"{metric} needs at least one hypothesis.")
    refs = []
    for i, (hyp, ref) in enumerate(zip(hypotheses, references)):
        ref = [ref] if isinstance(ref, str) else list(ref)
        if not isinstance(hyp, str):
            raise PicoGPTError(f"hypothesis {i} must be a string, got {type(hyp).__name__}.")
        if not ref or not all(isinstance(r, str) for r in ref):
            raise PicoGPTError(f"the references of hypothesis {i} must be a string or a non-empty list of strings.")
        refs.append(ref)
    return hypotheses, refs


def ngrams(tokens, n):
    """Counter of the n-grams (tuples of n consecutive tokens) of a token list.

    ngrams(["a", "b", "a", "b"], 2) -> {("a", "b"): 2, ("b", "a"): 1}
    """
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


# ---------------------------------------------------------------------------------------------
# BLEU (Papineni et al. 2002), as sacrebleu computes it by default


# mteval-v13a's tokenisation, the rules of sacrebleu's "13a" tokenizer, applied in this order.
_13A_RULES = [
    # ASCII punctuation and symbols become tokens: { | } ~ [ \ ] ^ _ ` space ! " # $ % & ( ) * +
    # : ; < = > ? @ / (the hyphen, apostrophe, period and comma are handled below).
    (re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),
    # a period or comma is split off unless it sits between digits ("3.14" and "1,000" stay)
    (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),
    (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),
    # a dash after a digit is split off ("1990-2000" -> "1990 - 2000"); "well-known" stays
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),
]


def tokenize_13a(text):
    """Text -> tokens, as sacrebleu's default tokenizer (mteval-v13a) splits it.

    Trailing whitespace goes, "<skipped>" goes, a hyphen at a line end joins the lines, other
    newlines become spaces, four HTML entities are unescaped, then the regular expressions above
    put spaces around punctuation, and the text is split on whitespace. Only ASCII punctuation
    is split off: non-ASCII letters and symbols stay inside their words.

    tokenize_13a("Hello, world! It's 3.14.") -> ['Hello', ',', 'world', '!', "It's", '3.14', '.']
    """
    line = text.rstrip()
    line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:
        line = line.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    line = f" {line} "
    for pattern, replacement in _13A_RULES:
        line = pattern.sub(replacement, line)
    return line.split()


def _closest_length(hyp_len, ref_lens):
    """The reference length closest to the hypothesis length; on a tie, the shorter one."""
    return min(ref_lens, key=lambda r: (abs(r - hyp_len), r))


def bleu_statistics(hypothesis, references, max_order=BLEU_MAX_ORDER):
    """The counts one sentence adds to corpus BLEU.

    hypothesis: a string; references: a list of strings. Returns a dict:
      hyp_len   number of hypothesis tokens
      ref_len   the reference length closest to hyp_len (the shorter one on a tie)
      matches   [m_1 .. m_N]: clipped n-gram matches, m_n = sum over the hypothesis's n-grams g
                of min(count_hyp(g), max over references of count_ref(g))
      totals    [t_1 .. t_N]: t_n = number of n-grams in the hypothesis = max(hyp_len - n + 1, 0)

    Clipping is what stops "the the the the" from scoring against "the cat": an n-gram earns
    at most as many matches as the reference that uses it most often.
    """
    hyp = tokenize_13a(hypothesis)
    refs = [tokenize_13a(r) for r in references]
    matches, totals = [], []
    for n in range(1, max_order + 1):
        hyp_ngrams = ngrams(hyp, n)
        most_in_a_ref = Counter()           # per n-gram, its largest count in any one reference
        for ref in refs:
            most_in_a_ref |= ngrams(ref, n)  # Counter | Counter keeps the maximum of each count
        matches.append(sum(min(count, most_in_a_ref[g]) for g, count in hyp_ngrams.items()))
        totals.append(sum(hyp_ngrams.values()))
    return {"hyp_len": len(hyp), "ref_len": _closest_length(len(hyp), [len(r) for r in refs]),
            "matches": matches, "totals": totals}


def bleu_from_statistics(hyp_len, ref_len, matches, totals):
    """Corpus BLEU (0-100) from corpus-summed counts, with sacrebleu's defaults.

        p_n  = 100 m_n / t_n                         modified n-gram precision, in percent
        p_n  = 100 / (2^k t_n)   when m_n = 0        exponential smoothing ("exp", mteval's NIST
                                                    rule): the k-th order without a match counts
                                                    as if it had 1/2^k of a match
        BP   = 1                  if c >= r          brevity penalty, c = hypothesis tokens,
             = exp(1 - r / c)     if 0 < c < r       r = the closest reference lengths, summed
             = 0                  if c = 0
        BLEU = BP exp( (1/N) sum_n log p_n )         geometric mean of the precisions, N = 4

    Edge cases as sacrebleu: no match of any order gives 0; an order with no n-grams at all
    (t_n = 0, every hypothesis shorter than n tokens) gives 0.
    """
    bp = 1.0 if hyp_len >= ref_len else (math.exp(1 - ref_len / hyp_len) if hyp_len > 0 else 0.0)
    if not any(matches):
        return 0.0
    log_precisions, unmatched_orders = [], 0
    for m, t in zip(matches, totals):
        if t == 0:
            return 0.0   # sacrebleu: precision 0 -> log floored to -1e10 -> exp gives 0
        if m == 0:
            unmatched_orders += 1
            p = 100.0 / (2 ** unmatched_orders * t)
        else:
            p = 100.0 * m / t
        log_precisions.append(math.log(p))
    return bp * math.exp(sum(log_precisions) / len(log_precisions))


def bleu(hypotheses, references, max_order=BLEU_MAX_ORDER):
    """Corpus BLEU, 0-100, equal to `sacrebleu.corpus_bleu(hypotheses, streams).score`.

    hypotheses: list of strings. references: one entry per hypothesis, a string or a list of
    strings (see the module docstring; sacrebleu's `streams` is the transpose of this).

    Corpus BLEU is not the mean of sentence BLEUs: each sentence's counts (bleu_statistics)
    are summed over the corpus first, and the formula (bleu_from_statistics) is applied once.
    So the result does not depend on the order of the sentences.
    """
    hypotheses, references = _pairs(hypotheses, references, "bleu")
    hyp_len = ref_len = 0
    matches, totals = [0] * max_order, [0] * max_order
    for hyp, refs in zip(hypotheses, references):
        s = bleu_statistics(hyp, refs, max_order)
        hyp_len += s["hyp_len"]
        ref_len += s["ref_len"]
        matches = [a + b for a, b in zip(matches, s["matches"])]
        totals = [a + b for a, b in zip(totals, s["totals"])]
    return bleu_from_statistics(hyp_len, ref_len, matches, totals)


# ---------------------------------------------------------------------------------------------
# ROUGE (Lin 2004), as Google's rouge-score computes it without stemming

_NOT_ALPHANUMERIC = re.compile(r"[^a-z0-9]+")


def tokenize_rouge(text):
    """Text -> tokens, as rouge-score's default tokenizer (no stemming) makes them.

    Lowercase (Python's Unicode lower()), then every run of characters other than a-z and 0-9
    becomes one space, then split. So punctuation and every non-ASCII character separate words
    and vanish: "Café au lait!" -> ['caf', 'au', 'lait'], and a text in Greek has no tokens at
    all. (A few non-ASCII letters lowercase to ASCII and survive: the Kelvin sign K -> 'k'.)
    """
    return _NOT_ALPHANUMERIC.sub(" ", text.lower()).split()


def _f1(precision, recall):
    """Harmonic mean 2 P R / (P + R), 0 when both are 0."""
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def rouge_n(hyp_tokens, ref_tokens, n):
    """(precision, recall, F1) of ROUGE-N for one pair of token lists.

        overlap   = sum over the reference's n-grams g of min(count_ref(g), count_hyp(g))
        precision = overlap / max(#hypothesis n-grams, 1)
        recall    = overlap / max(#reference n-grams, 1)
    """
    hyp, ref = ngrams(hyp_tokens, n), ngrams(ref_tokens, n)
    overlap = sum(min(count, hyp[g]) for g, count in ref.items())
    precision = overlap / max(sum(hyp.values()), 1)
    recall = overlap / max(sum(ref.values()), 1)
    return precision, recall, _f1(precision, recall)


def lcs_table(a, b):
    """The dynamic-programming table of the longest common subsequence of token lists a and b.

    table[i][j] = length of the LCS of a[:i] and b[:j], so table[-1][-1] is the answer:
        table[i][j] = table[i-1][j-1] + 1                  if a[i-1] == b[j-1]
                    = max(table[i-1][j], table[i][j-1])    otherwise
    A subsequence keeps order but may skip tokens: the LCS of "a b c d" and "a c b d" is 3.
    """
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            if a[i - 1] == b[j - 1]:
                table[i][j] = table[i - 1][j - 1] + 1
            else:
                table[i][j] = max(table[i - 1][j], table[i][j - 1])
    return table


def rouge_l(hyp_tokens, ref_tokens):
    """(precision, recall, F1) of ROUGE-L: precision = LCS / len(hyp), recall = LCS / len(ref);
    all three are 0 when either side has no tokens."""
    if not hyp_tokens or not ref_tokens:
        return 0.0, 0.0, 0.0
    lcs = lcs_table(ref_tokens, hyp_tokens)[-1][-1]
    precision, recall = lcs / len(hyp_tokens), lcs / len(ref_tokens)
    return precision, recall, _f1(precision, recall)


def rouge(hypotheses, references):
    """{"rouge1", "rouge2", "rougeL"}: each the F1 averaged over the pairs, in [0, 1].

    Equal to rouge-score's RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False):
    `score(reference, hypothesis)[type].fmeasure` per pair, and with several references,
    `score_multi(references, hypothesis)`, which keeps, for each type separately, the reference
    with the highest F1. Then the plain mean over pairs.
    """
    hypotheses, references = _pairs(hypotheses, references, "rouge")
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for hyp, refs in zip(hypotheses, references):
        h = tokenize_rouge(hyp)
        rs = [tokenize_rouge(r) for r in refs]
        totals["rouge1"] += max(rouge_n(h, r, 1)[2] for r in rs)
        totals["rouge2"] += max(rouge_n(h, r, 2)[2] for r in rs)
        totals["rougeL"] += max(rouge_l(h, r)[2] for r in rs)
    return {k: v / len(hypotheses) for k, v in totals.items()}


# ---------------------------------------------------------------------------------------------
# Diversity


def distinct_n(texts, n):
    """Distinct-n (Li et al. 2016): distinct n-grams / all n-grams, over all texts together.

    Tokens are whitespace-separated words. 1.0 means no n-gram repeats; a model stuck in a loop
    scores near 0. A corpus without any n-gram (every text shorter than n words) scores 0.
    """
    if isinstance(texts, str):
        raise PicoGPTError("distinct_n takes a list of texts, not a single string.")
    if not isinstance(n, int) or n < 1:
        raise PicoGPTError(f"distinct_n needs n >= 1, got {n!r}.")
    seen, total = set(), 0
    for text in texts:
        grams = ngrams(str(text).split(), n)
        seen.update(grams)
        total += sum(grams.values())
    return len(seen) / total if total else 0.0


def generation_scores(hypotheses, references):
    """{"bleu", "rouge1", "rouge2", "rougeL", "distinct1", "distinct2"} of generated texts."""
    scores = {"bleu": bleu(hypotheses, references), **rouge(hypotheses, references)}
    return {**scores, "distinct1": distinct_n(hypotheses, 1), "distinct2": distinct_n(hypotheses, 2)}


# ---------------------------------------------------------------------------------------------
# Classification


def _labels_pair(y_true, y_pred, metric):
    y_true, y_pred = list(y_true), list(y_pred)
    if len(y_true) != len(y_pred):
        raise PicoGPTError(f"{metric} got {len(y_true)} true labels but {len(y_pred)} predictions: give one prediction per example.")
    if not y_true:
        raise PicoGPTError(f"{metric} needs at least one example.")
    return y_true, y_pred


def accuracy(y_true, y_pred):
    """Fraction of examples whose prediction equals the true label, in [0, 1]."""
    y_true, y_pred = _labels_pair(y_true, y_pred, "accuracy")
    return sum(t == p for t, p in zip(y_true, y_pred)) / len(y_true)


def confusion_matrix(y_true, y_pred, labels):
    """counts (K, K) int64: counts[i, j] = examples of true label labels[i] predicted as labels[j].

    Rows are the truth, columns the prediction (scikit-learn's convention). The diagonal holds
    the correct predictions. A label outside `labels` is an error, not silently dropped.
    """
    y_true, y_pred = _labels_pair(y_true, y_pred, "confusion_matrix")
    index = {label: k for k, label in enumerate(labels)}
    if len(index) != len(list(labels)):
        raise PicoGPTError("confusion_matrix: the labels must be distinct.")
    counts = np.zeros((len(index), len(index)), dtype=np.int64)
    for t, p in zip(y_true, y_pred):
        for what, y in (("true label", t), ("prediction", p)):
            if y not in index:
                raise PicoGPTError(f"confusion_matrix: the {what} {y!r} is not in labels {list(labels)}.")
        counts[index[t], index[p]] += 1
    return counts


def f1(y_true, y_pred, labels=None):
    """Macro F1: the unweighted mean over labels of each label's F1, in [0, 1].

    For label k, from the confusion matrix: TP = counts[k, k], FP = column k - TP (predicted k,
    was not), FN = row k - TP (was k, predicted otherwise), and

        F1_k = 2 TP / (2 TP + FP + FN)         (= 2 P R / (P + R); 0 when TP = 0)

    labels default to every label seen in y_true or y_pred, sorted. Equal to scikit-learn's
    f1_score(y_true, y_pred, average="macro", zero_division=0).
    """
    y_true, y_pred = _labels_pair(y_true, y_pred, "f1")
    if labels is None:
        labels = sorted(set(y_true) | set(y_pred), key=lambda y: (str(type(y)), y))
    counts = confusion_matrix(y_true, y_pred, labels)
    tp = np.diag(counts)
    fp = counts.sum(axis=0) - tp
    fn = counts.sum(axis=1) - tp
    denominator = 2 * tp + fp + fn
    per_label = np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)
    return float(per_label.mean())
