"""Exercise `sft_targets`: next-token inputs and targets of a fine-tuning example, prompt masked."""

import numpy as np

from ... import sft
from ..exercise import Exercise
from .common import hyp


def reference(ids, mask):
    x, y = sft.targets(ids, mask)
    return x.copy(), y


STATEMENT = """\
## Exercise `sft_targets`

Implement `sft_targets(ids, mask)`: the inputs and targets of one supervised fine-tuning
example, so that the model learns the response and nothing else.

An example is a conversation in the chat template, `{{role}}:\\n{{content}}<|endoftext|>` per turn,
as token ids, with a loss mask: `mask[i]` is True when token `i` is one the model must learn to
write (the reply's content and the `<|endoftext|>` that closes it), False for the prompt and the
role headers. A language model at position `i` predicts token `i + 1`. Every target that must
not count in the loss is `-100`, the value the cross-entropy ignores (as in transformers).

- `ids`: int `(L,)`, `L >= 2`; `mask`: bool `(L,)`.
- returns `(x, y)`: the inputs, int `(L - 1,)`, and the targets, int `(L - 1,)`.

Work out which mask entry decides whether position `i`'s target is trained.

{check}
"""

STUB = '''\
def sft_targets(ids, mask):
    """Inputs and targets of one SFT example; untrained targets are -100.

    ids int (L,), mask bool (L,) (True = a token to learn)  ->  x int (L-1,), y int (L-1,)
    """
    raise NotImplementedError("your code here")
'''

HINTS = (
    "as in pre-training, the inputs are every token but the last and the targets every token but "
    "the first: position i reads ids[i] and must predict ids[i + 1].",
    "the target at position i is the token ids[i + 1]: whether it is learned is a property of THAT "
    "token, so the mask to use is shifted the same way as the targets.",
    "x = ids[:-1]; y = np.where(mask[1:], ids[1:], -100).",
)

MODEL_ANSWER = """\
x = ids[:-1].copy()
y = np.where(mask[1:], ids[1:], -100)
return x, y"""


def examples():
    return [
        ("prompt 2 tokens, reply 2 tokens", (np.array([10, 11, 20, 21]), np.array([False, False, True, True]))),
        ("a reply of one token (the <|endoftext|>)", (np.array([5, 6, 50256]), np.array([False, False, True]))),
        ("two replies with a prompt between", (np.array([1, 2, 3, 4, 5, 6, 7]),
                                               np.array([False, True, True, False, False, True, True]))),
        ("everything trained", (np.array([7, 8, 9]), np.array([True, True, True]))),
    ]


def strategy():
    st, _ = hyp()

    @st.composite
    def inputs(draw):
        L = draw(st.integers(2, 12))
        ids = np.array(draw(st.lists(st.integers(0, 50256), min_size=L, max_size=L)), dtype=np.int64)
        mask = np.array(draw(st.lists(st.booleans(), min_size=L, max_size=L)), dtype=bool)
        return ids, mask

    return inputs()


EXERCISE = Exercise(
    name="sft_targets",
    summary="SFT inputs and targets: shift by one, -100 where the token is not to be learned",
    arg_names=("ids", "mask"), outputs=("x", "y"), reference=reference,
    statement=STATEMENT, stub_function=STUB, hints=HINTS, model_answer=MODEL_ANSWER,
    examples_fn=examples, strategy=strategy,
    mistakes=[
        ("the target at position i is ids[i + 1]: use the mask of THAT token, mask[1:], not mask[:-1].",
         lambda ids, mask: (ids[:-1].copy(), np.where(mask[:-1], ids[1:], -100))),
        ("untrained targets are -100, the value the loss ignores, not 0 (0 is a real token id).",
         lambda ids, mask: (ids[:-1].copy(), np.where(mask[1:], ids[1:], 0))),
    ],
    output_hints={"x": "the inputs are every token but the last: ids[:-1], unmasked (the model reads the prompt)."},
)
