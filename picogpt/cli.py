"""How every `python -m picogpt.<command>` reports a user's mistake: one sentence, no traceback."""

import os
import sys

from .errors import PicoGPTError


def run_command(body, args, interrupted="interrupted."):
    """Call body(args) and turn its outcome into an exit status.

    A PicoGPTError (bad input, a missing GPU, a corrupt file...) prints `error: <sentence>` on
    stderr and gives 2; Ctrl-C prints `interrupted` and gives 130; otherwise the status is what
    body returned (None counts as 0).
    """
    try:
        return body(args) or 0
    except PicoGPTError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\n{interrupted}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`... | head`): stop quietly
        sys.stdout = open(os.devnull, "w")  # so that Python's own flush at exit does not complain
        return 0


def clock(seconds):
    """A duration for progress lines: 'M:SS', or 'H:MM:SS' from an hour up."""
    seconds = int(max(seconds, 0))
    h, m, s = seconds // 3600, seconds // 60 % 60, seconds % 60
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
