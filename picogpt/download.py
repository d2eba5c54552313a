"""`python -m picogpt.download`: download OpenAI's GPT-2 checkpoints from the Hugging Face Hub.

    python -m picogpt.download gpt2              # -> weights/gpt2/{config.json, model.safetensors}

The work (streamed, resumable, checked, atomic) is done by picogpt/hub.py; this is its command.
"""

import argparse
import sys

from .cli import run_command
from .config import hub_model_names
from .hub import DEFAULT_BASE_URL, download, hub_name


# --- the command line -----------------------------------------------------------------------

def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m picogpt.download",
        description="Download OpenAI's GPT-2 checkpoints (config.json + model.safetensors) from the\n"
                    "Hugging Face Hub into DIR/NAME/. An interrupted download resumes where it stopped;\n"
                    "model.safetensors is checked against its SHA-256 before it is put in place.",
        epilog="models:\n"
               "  gpt2 (124M), gpt2-medium (355M), gpt2-large (774M), gpt2-xl (1558M)\n"
               "\n"
               "examples:\n"
               "  python -m picogpt.download gpt2\n"
               "  python -m picogpt.download 355M 774M --dir /data/weights\n"
               "  python -m picogpt.download gpt2 --base-url https://hf-mirror.com\n"
               "  PICOGPT_HUB_URL=https://hf-mirror.com python -m picogpt.download gpt2-xl --quiet",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="+", metavar="NAME", help=f"model to download: {hub_model_names()}")
    p.add_argument("--dir", default=None, metavar="DIR",
                   help="where model folders go (default: $PICOGPT_WEIGHTS, else ./weights)")
    p.add_argument("--base-url", default=None, metavar="URL",
                   help=f"the Hub or a mirror of it (default: $PICOGPT_HUB_URL, else {DEFAULT_BASE_URL})")
    p.add_argument("--force", action="store_true", help="download again even if the files are already there")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv=None):
    return run_command(_download_command, build_parser().parse_args(argv),
                       interrupted="interrupted: run the same command again to resume the download.")


def _download_command(args):
    names = [hub_name(n) for n in args.names]  # every name checked before any download
    for name in names:
        folder = download(name, args.dir, args.base_url, progress=not args.quiet, force=args.force)
        if not args.quiet:
            print(f"{name}: {folder}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
