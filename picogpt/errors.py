"""The one exception picogpt raises for a mistake the user can fix.

It lives alone so that every module (the tokenizer, the BPE, files, config, ...) can raise it
without depending on anything else; the commands catch it (picogpt.cli.run_command), print its
message as one sentence and exit with status 2.
"""


class PicoGPTError(Exception):
    """A mistake the user can fix. Commands print its message as one sentence and exit 2."""
