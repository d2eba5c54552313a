"""How every `python -m picogpt.<command>` reports a user's mistake: one sentence, no traceback."""

import sys

from .backend import PicoGPTError


def run_command(body, args, interrupted="interrupted."):
    """Call body(args) and turn its outcome into an exit status.

    A PicoGPTError (bad input, a missing GPU, a corrupt file...) prints `error: <sentence>` on
    stderr and gives 2; Ctrl-C prints `interrupted` and gives 130; a normal return gives 0.
    """
    try:
        body(args)
    except PicoGPTError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\n{interrupted}", file=sys.stderr)
        return 130
    return 0
