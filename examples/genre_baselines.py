"""Baselines for the genre task: what a fine-tuned GPT-2 classifier has to beat.

    python examples/genre_baselines.py        # reads examples/genre/{train,val}.jsonl

Prints held-out accuracy, macro-F1 and the confusion matrix (rows: truth, columns: prediction)
on the validation plays for
  majority      always the most frequent training label
  naive Bayes   multinomial, bag of words, add-one smoothing
  logistic      softmax regression on bag-of-words features (log(1 + count), rows scaled to
                unit length), L2-regularised, full-batch gradient descent; its loss and
                gradient are picogpt.layers' cross-entropy pair
Nothing is tuned on the validation plays: the settings below are fixed.
"""

import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from picogpt import layers as L
from picogpt.metrics import accuracy, confusion_matrix, f1
from picogpt.sft import read_classify_jsonl

DATA = Path(__file__).parent / "genre"
MIN_COUNT = 2            # a word seen fewer times in training is not a feature
L2, LR, STEPS = 1e-4, 2.0, 500


def words(text):
    return re.findall(r"[a-z']+", text.lower())


def bag_of_words(texts, vocab):
    """counts (N, V) float64: counts[i, j] = occurrences of vocab word j in text i."""
    index = {w: j for j, w in enumerate(vocab)}
    X = np.zeros((len(texts), len(vocab)))
    for i, t in enumerate(texts):
        for w, c in Counter(words(t)).items():
            if w in index:
                X[i, index[w]] = c
    return X


def naive_bayes(X, y, K, alpha=1.0):
    """Multinomial naive Bayes -> a predict function. log P(k | x) = log P(k) + x . log P(w | k) + const."""
    log_prior = np.log(np.bincount(y, minlength=K) / len(y))
    counts = np.stack([X[y == k].sum(axis=0) for k in range(K)]) + alpha      # (K, V)
    log_like = np.log(counts / counts.sum(axis=1, keepdims=True))
    return lambda Z: (Z @ log_like.T + log_prior).argmax(axis=1)


def features(X):
    """log(1 + count), each row scaled to unit length (long and short passages alike)."""
    F = np.log1p(X)
    return F / np.maximum(np.linalg.norm(F, axis=1, keepdims=True), 1e-12)


def logistic(X, y, K):
    """Softmax regression by gradient descent -> a predict function.

    loss = cross_entropy(F W + b, y) + L2/2 |W|^2; dW = F^T dlogits + L2 W, db = sum of dlogits.
    """
    F = features(X)
    W, b = np.zeros((F.shape[1], K)), np.zeros(K)
    for _ in range(STEPS):
        _, cache = L.cross_entropy_forward(F @ W + b, y)
        dlogits = L.cross_entropy_backward(1.0, cache)
        W -= LR * (F.T @ dlogits + L2 * W)
        b -= LR * dlogits.sum(axis=0)
    return lambda Z: (features(Z) @ W + b).argmax(axis=1)


def report(name, truth, pred, labels):
    t, p = [labels[i] for i in truth], [labels[i] for i in pred]
    cm = confusion_matrix(t, p, labels)
    print(f"{name:12s} accuracy {accuracy(t, p):.3f}   macro-F1 {f1(t, p, labels):.3f}")
    for label, row in zip(labels, cm):
        print(f"    {label:>8s} " + " ".join(f"{c:5d}" for c in row))


def main():
    train_texts, y_train, labels = read_classify_jsonl(DATA / "train.jsonl")
    val_texts, y_val, _ = read_classify_jsonl(DATA / "val.jsonl", labels=labels)
    y_train, y_val, K = np.array(y_train), np.array(y_val), len(labels)
    counts = Counter(w for t in train_texts for w in words(t))
    vocab = sorted(w for w, c in counts.items() if c >= MIN_COUNT)
    X_train, X_val = bag_of_words(train_texts, vocab), bag_of_words(val_texts, vocab)
    print(f"train {len(y_train)} passages, validation {len(y_val)} passages of unseen plays, "
          f"{len(vocab):,} words; columns: predicted {' / '.join(labels)}")
    majority = int(np.bincount(y_train, minlength=K).argmax())
    report("majority", y_val, np.full(len(y_val), majority), labels)
    report("naive Bayes", y_val, naive_bayes(X_train, y_train, K)(X_val), labels)
    report("logistic", y_val, logistic(X_train, y_train, K)(X_val), labels)


if __name__ == "__main__":
    sys.exit(main())
