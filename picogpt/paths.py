"""Where picogpt keeps downloaded checkpoints.

Its own small module so that both the downloader and the checkpoint loader can ask for it
without importing each other.
"""

import os
from pathlib import Path


def weights_dir():
    """Where downloaded checkpoints live: $PICOGPT_WEIGHTS, else ./weights."""
    return Path(os.environ.get("PICOGPT_WEIGHTS", "weights"))
