"""Build the dialogue SFT data from examples/shakespeare.txt: one speech and the reply to it.

    python examples/make_dialogue.py          # writes examples/dialogue/{train,val}.jsonl (or into a folder given)

Each record is two consecutive speeches of one scene by two different speakers, the speakers'
names as roles, so the trained turn is the reply (see picogpt.sft):

    {"play": "MACBETH", "messages": [{"role": "MACBETH", "content": "..."},
                                     {"role": "LADY MACBETH", "content": "..."}]}

To keep the files small and the exchanges short enough for a 256-token context: both speeches
have at most MAX_WORDS words, and the pairs do not overlap (a speech is in one record at most;
scanning a scene, a pair that is taken skips to the speech after its reply). Only the 34
plays of the First Folio are used; the six plays in plays.VALIDATION (two comedies, two
histories, two tragedies) are held out whole for validation, so validation measures replies
in scenes the model never saw. Lines keep their verse breaks; stage directions are removed.
"""

import json
import sys
from pathlib import Path

from plays import VALIDATION, read_plays

OUT = Path(__file__).parent / "dialogue"
MAX_WORDS = 40


def pairs(scene, max_words=MAX_WORDS):
    """Non-overlapping (speech, reply) pairs of a scene: different speakers, both short enough."""
    out, i = [], 0
    while i + 1 < len(scene):
        a, b = scene[i], scene[i + 1]
        if a.speaker != b.speaker and max(len(a.text.split()), len(b.text.split())) <= max_words:
            out.append((a, b))
            i += 2
        else:
            i += 1
    return out


def records(play):
    return [{"play": play.title, "messages": [{"role": a.speaker, "content": a.text},
                                              {"role": b.speaker, "content": b.text}]}
            for scene in play.scenes for a, b in pairs(scene)]


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def main(out=OUT):
    out = Path(out)
    plays = [p for p in read_plays() if p.genre]       # the First Folio's plays
    missing = set(VALIDATION) - {p.title for p in plays}
    assert not missing, f"validation plays not found: {missing}"
    split = {"train": [], "val": []}
    for p in plays:
        split["val" if p.title in VALIDATION else "train"] += records(p)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in split.items():
        write_jsonl(out / f"{name}.jsonl", rows)
        size = (out / f"{name}.jsonl").stat().st_size
        print(f"{name}: {len(rows):,} exchanges from {len({r['play'] for r in rows})} plays, {size / 1e6:.2f} MB")


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
