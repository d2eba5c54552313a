"""Read examples/shakespeare.txt into plays, scenes and speeches (used by make_dialogue.py and make_genre.py).

The file is Project Gutenberg's texts one after another. Each work starts with its title line,
a blank line and "by William Shakespeare". Inside a play, paragraphs are separated by blank
lines; a speech is a paragraph whose first line is the speaker ("HAMLET." or "Ham.", in some
plays without the full stop, "BUCKINGHAM"); a paragraph in [brackets] is a stage direction;
"ACT ..." / "SCENE ..." headings start a scene. The list of persons before the first heading
is skipped. A paragraph of text without a speaker line (after a stage direction inside a
speech) continues the previous speech. Inline directions such as "[Aside.]" are removed.

First Folio (1623) grouping: the 36 plays in its three catalogue sections. Pericles and the
poems are not in the Folio; The Tempest and Twelfth Night are not in this corpus.
"""

import re
from dataclasses import dataclass, field
from pathlib import Path

CORPUS = Path(__file__).parent / "shakespeare.txt"

FOLIO = {
    "comedy": ["ALL'S WELL THAT ENDS WELL", "AS YOU LIKE IT", "THE COMEDY OF ERRORS", "LOVE'S LABOUR'S LOST",
               "MEASURE FOR MEASURE", "THE MERCHANT OF VENICE", "THE MERRY WIVES OF WINDSOR",
               "A MIDSUMMER NIGHT'S DREAM", "MUCH ADO ABOUT NOTHING", "THE TAMING OF THE SHREW",
               "THE TWO GENTLEMEN OF VERONA", "THE WINTER'S TALE"],
    "history": ["KING JOHN", "THE TRAGEDY OF KING RICHARD THE SECOND", "KING HENRY IV, THE FIRST PART",
                "KING HENRY IV, SECOND PART", "THE LIFE OF KING HENRY V", "KING HENRY VI, FIRST PART",
                "HISTORY OF KING HENRY THE SIXTH, SECOND PART", "THE HISTORY OF KING HENRY THE SIXTH, THIRD PART",
                "THE LIFE AND DEATH OF KING RICHARD III", "THE LIFE OF HENRY THE EIGHTH"],
    # Troilus and Cressida stands between the histories and the tragedies, unpaginated; it is
    # usually counted with the tragedies, as is Cymbeline, which the Folio calls a tragedy.
    "tragedy": ["THE HISTORY OF TROILUS AND CRESSIDA", "THE TRAGEDY OF CORIOLANUS", "THE TRAGEDY OF TITUS ANDRONICUS",
                "ROMEO AND JULIET", "THE LIFE OF TIMON OF ATHENS", "JULIUS CAESAR", "MACBETH",
                "HAMLET, PRINCE OF DENMARK", "THE TRAGEDY OF KING LEAR", "OTHELLO, THE MOOR OF VENICE",
                "ANTONY AND CLEOPATRA", "CYMBELINE"],
}
GENRE = {title: genre for genre, titles in FOLIO.items() for title in titles}

# Whole plays held out for validation: two of each group, chosen to share few characters with
# the training plays (Henry IV/V share Falstaff, Hal and Pistol, so they stay in training).
VALIDATION = ["AS YOU LIKE IT", "MEASURE FOR MEASURE", "KING JOHN", "THE LIFE OF HENRY THE EIGHTH",
              "MACBETH", "OTHELLO, THE MOOR OF VENICE"]

_SCENE = re.compile(r"^(ACT|Act|SCENE|Scene)\b")                     # starts a scene, however long
_HEADING = re.compile(r"^(ACT|Act|SCENE|Scene|PROLOGUE|Prologue|EPILOGUE|Epilogue|INDUCTION|Induction)\b")
_SMALL_WORDS = {"of", "the", "and", "de", "la", "le", "du"}


@dataclass
class Speech:
    speaker: str
    lines: list = field(default_factory=list)

    @property
    def text(self):
        return "\n".join(self.lines)


@dataclass
class Play:
    title: str
    scenes: list = field(default_factory=list)   # each a list of Speech

    @property
    def genre(self):
        return GENRE.get(self.title)


def split_works(text):
    """[(title, body)] for every work of the corpus, in order."""
    lines = text.split("\n")
    starts = [i for i in range(len(lines) - 2)
              if lines[i].strip() and not lines[i + 1].strip() and lines[i + 2].startswith("by William Shakespeare")]
    return [(lines[s].strip(), "\n".join(lines[s + 3:e])) for s, e in zip(starts, starts[1:] + [len(lines)])]


def speaker_of(line):
    """The speaker's name if `line` is a speaker line ("KING JOHN.", "Ham.", "BUCKINGHAM",
    "TIMON. [To Lucilius.]"), else None."""
    line = re.sub(r"\[[^\]]*\]?", "", line).strip()
    if not line or len(line) > 40 or _HEADING.match(line) or line.startswith("["):
        return None
    name = line[:-1] if line.endswith(".") else line
    if not line.endswith(".") and name != name.upper():
        return None          # without the full stop only an all-capitals name counts
    words = name.replace("-", " ").split()
    if not words or not re.fullmatch(r"[A-Za-z][A-Za-z'&., -]*", name):
        return None
    if any(w[0].islower() and w not in _SMALL_WORDS for w in words):
        return None          # "Go to." is a line of verse, not a speaker
    return name.upper()


def _clean(paragraph_lines):
    """A speech's lines with inline [stage directions] removed and blank lines dropped."""
    text = re.sub(r"\[[^\]]*\]", "", "\n".join(paragraph_lines), flags=re.S)
    text = re.sub(r"\[[^\]\n]*$", "", text, flags=re.M)       # a direction never closed: "[Going."
    return [ln.strip() for ln in text.split("\n") if ln.strip()]


def parse_play(title, body):
    paragraphs = [[ln for ln in para.split("\n") if ln.strip()] for para in re.split(r"\n\s*\n", body)]
    # Some texts run speeches together without a blank line ("And so they shall.\nHOT.\nIn
    # faith..."): a line inside a paragraph starts a new speech if it names one of the play's
    # speakers (a name that also starts a paragraph somewhere), or is a name in capitals with a
    # full stop ("SECOND LORD."), which no line of verse is.
    known = {speaker_of(p[0]) for p in paragraphs if len(p) > 1} - {None}
    play, scene, started = Play(title), None, False
    for lines in paragraphs:
        if not lines:
            continue
        if _SCENE.match(lines[0].strip()) or (len(lines) == 1 and _HEADING.match(lines[0].strip())):
            started, scene = True, []
            play.scenes.append(scene)
            continue
        if not started:
            continue                     # the list of persons
        if lines[0].lstrip().startswith("["):
            # A stage direction. Text after it belongs to a speaker named just before
            # ("SECOND LORD.", blank line, "[Aside.] No, faith..."); else it is skipped.
            if scene and not scene[-1].lines:
                scene[-1].lines += _clean(lines)
            continue
        for chunk in _split_speeches(lines, known):
            who = speaker_of(chunk[0])
            if who is not None and (len(chunk) > 1 or who in known):
                scene.append(Speech(who, _clean(chunk[1:])))
            elif scene:                  # text after a stage direction: the speech goes on
                scene[-1].lines += _clean(chunk)
    play.scenes = [[s for s in scene if s.lines] for scene in play.scenes]
    play.scenes = [s for s in play.scenes if s]
    return play


def _split_speeches(lines, known):
    """A paragraph cut before every inner line that is a known speaker's name."""
    chunks = [[lines[0]]]
    for ln in lines[1:]:
        name, caps = speaker_of(ln), ln.strip()
        if name in known or (name and len(name) > 2 and caps.endswith(".") and caps == caps.upper()):
            chunks.append([])
        chunks[-1].append(ln)
    return chunks


def read_plays(path=CORPUS):
    """Every work of the corpus that has scenes (the plays), parsed."""
    plays = [parse_play(t, b) for t, b in split_works(Path(path).read_text(encoding="utf-8"))]
    return [p for p in plays if p.scenes]
