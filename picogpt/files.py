"""Writing files so that nobody ever sees half of one."""

import contextlib
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
        raise PicoGPTError(f"cannot write {path} ({e.strerror or e}): free some space or choose another folder.") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path, obj):
    """Atomically write `obj` as indented JSON."""
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
