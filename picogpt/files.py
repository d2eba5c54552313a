"""Writing files so that nobody ever sees half of one, and saying why a read or a write failed."""

import contextlib
import errno
import json
import os
from pathlib import Path

from .errors import PicoGPTError


@contextlib.contextmanager
def atomic_open(path, mode="wb"):
    """Open a temporary file beside `path`; on success flush it to disk and rename it into place.

    A rename within one folder is atomic, so a reader (or a crash) sees the old file or the
    new one, never a mixture. On an exception the temporary file is removed.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise PicoGPTError(f"cannot write {path}: the folder {path.parent.resolve()} does not exist.")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # disk full, read-only folder, a folder where the file should be...
        raise PicoGPTError(f"cannot write {path} ({e.strerror or e}): {advice(e)}.") from None
    finally:
        if tmp.exists():
            tmp.unlink()


# What to do about a failed write depends on why it failed: "free some space" helps only a full disk.
_ADVICE = {
    errno.ENOSPC: "free some disk space or choose a folder on another disk",
    errno.EDQUOT: "your disk quota is used up: free some space or choose a folder on another disk",
    errno.EROFS: "that file system is read-only: choose a folder on a writable disk",
    errno.EACCES: "you may not write there: choose a folder you own",
    errno.EPERM: "you may not write there: choose a folder you own",
    errno.EISDIR: "a folder of that name is in the way: choose another name or remove that folder",
    errno.ENOTDIR: "part of that path is a file, not a folder: choose another path",
    errno.EEXIST: "a file of that name is in the way: choose another name or remove that file",
    errno.EBUSY: "the file or device is busy (in use by another program): try again or choose another folder",
    errno.ENAMETOOLONG: "the name is too long: choose a shorter path",
}


def advice(error):
    """What the user can do about an OSError met while writing: a few words, chosen by its errno."""
    return _ADVICE.get(error.errno, "choose another folder")


def make_folder(path, what="output folder"):
    """Create the folder `path` (and its parents) if needed; any failure -> one PicoGPTError."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PicoGPTError(f"the {what} {path} is a file, not a folder: choose another path or remove that file.")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PicoGPTError(f"cannot create the {what} {path} ({e.strerror or e}): {advice(e)}.") from None
    return path


def read_text(path, what="text file"):
    """A UTF-8 file's text; a missing, unreadable or undecodable file is one sentence naming it.

    what: the kind of file expected, for the message when there is none ("text file", "JSONL file")."""
    path = Path(path)
    if not path.is_file():
        raise PicoGPTError(f"no {what} at {path}.")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise PicoGPTError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}).") from None
    except OSError as e:
        raise PicoGPTError(f"cannot read {path} ({e.strerror or e}).") from None


def write_json(path, obj):
    """Atomically write `obj` as indented JSON."""
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
