"""Build the genre classification data from examples/shakespeare.txt: passages labelled
comedy / history / tragedy by the First Folio's grouping of the plays.

    python examples/make_genre.py             # writes examples/genre/{train,val}.jsonl (or into a folder given)

A passage is consecutive lines of speech (speakers' names and stage directions removed), cut
at a line end once it has MIN_WORDS words, so each is about 60-80 words (~100 GPT-2 tokens).
PER_PLAY passages are kept from each play, evenly spaced through it, so that every play
weighs the same. Records: {"play": "MACBETH", "text": "...", "label": "tragedy"}.

The six plays in plays.VALIDATION (two of each genre) are held out whole: the score on them
measures whether a classifier recognises the genre of a play it has never seen, not whether it
remembers lines (or characters' names) of plays it trained on.
"""

import sys
from pathlib import Path

import numpy as np
from make_dialogue import write_jsonl
from plays import VALIDATION, read_plays

OUT = Path(__file__).parent / "genre"
MIN_WORDS = 60
PER_PLAY = 100


def passages(play, min_words=MIN_WORDS):
    """The play's spoken lines, in order, grouped into passages of at least min_words words."""
    out, cur, n = [], [], 0
    for scene in play.scenes:
        for speech in scene:
            for line in speech.lines:
                cur.append(line)
                n += len(line.split())
                if n >= min_words:
                    out.append("\n".join(cur))
                    cur, n = [], 0
    return out


def evenly(items, k):
    """k items spread evenly from first to last (all of them if there are at most k)."""
    if len(items) <= k:
        return items
    return [items[i] for i in np.linspace(0, len(items) - 1, k).round().astype(int)]


def main(out=OUT):
    out = Path(out)
    plays = [p for p in read_plays() if p.genre]       # the First Folio's plays
    split = {"train": [], "val": []}
    for p in plays:
        rows = [{"play": p.title, "text": t, "label": p.genre} for t in evenly(passages(p), PER_PLAY)]
        split["val" if p.title in VALIDATION else "train"] += rows
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in split.items():
        write_jsonl(out / f"{name}.jsonl", rows)
        counts = {g: sum(r["label"] == g for r in rows) for g in ("comedy", "history", "tragedy")}
        size = (out / f"{name}.jsonl").stat().st_size
        print(f"{name}: {len(rows):,} passages from {len({r['play'] for r in rows})} plays {counts}, {size / 1e6:.2f} MB")


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
