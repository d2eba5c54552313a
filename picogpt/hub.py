"""Fetching OpenAI's GPT-2 checkpoints from the Hugging Face Hub (or a mirror of it): the library.

The command is `python -m picogpt.download` (picogpt/download.py); `load_model("gpt2")` calls
`download` here on first use.

Each model is two files of `openai-community/<name>`: `config.json` (small) and
`model.safetensors` (0.5 to 6.4 GB). The big one is fetched with care:

- **Streamed.** The body arrives in 1 MiB chunks and goes straight to disk, so memory stays
  small whatever the model size. The Hub answers the file's URL with a redirect to a CDN;
  requests follows it.
- **Resumable.** Bytes land in `.model.safetensors.part` beside the final file. If that part
  file is already there, the request asks for the rest only (`Range: bytes=<size>-`); a server
  that answers 206 sends the rest, one that answers 200 ignored the range and we start over.
  Ctrl-C or a dropped connection leaves the part file for the next run.
- **Checked.** The SHA-256 is computed while the bytes stream past (a resumed download hashes
  the part it already has first). The expected value comes from the table below when we know
  it, else from the Hub's `X-Linked-Etag` header (the LFS object's sha256). A mismatch deletes
  the part file and says so: a corrupt checkpoint never reaches the loader.
- **Atomic.** Only a complete, verified file is renamed into place (`os.replace`, atomic within
  one folder), so `model.safetensors` either is whole or is not there.

The base URL is $PICOGPT_HUB_URL, else https://huggingface.co; any server with the Hub's URL
layout works (e.g. https://hf-mirror.com).
"""

import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import requests

from .cli import clock
from .config import HUB_MODELS, canonical_name, hub_model_names
from .errors import PicoGPTError
from .files import advice, atomic_open
from .paths import weights_dir

DEFAULT_BASE_URL = "https://huggingface.co"
HUB_ORG = "openai-community"
FILES = ("model.safetensors", "config.json")
CHUNK = 1 << 20            # 1 MiB: large enough to stream fast, small enough to resume finely
TIMEOUT = (15, 60)         # (connect, read) seconds: a stalled server fails instead of hanging
MIRROR_HINT = "or use a mirror with --base-url / PICOGPT_HUB_URL (e.g. https://hf-mirror.com)"

# Published SHA-256 and size of model.safetensors, used before any header (a header only says
# what the server *claims*). Only values found in a source are listed:
#   gpt2: the LFS object of openai-community/gpt2 at revision 607a30d783dfa663caf39e06633721c8d4cfcd7e
#   (the Hub's file page, and the blob name in a huggingface_hub cache, which is the LFS sha256).
# The other sizes fall back to the Hub's X-Linked-Etag header.
KNOWN_CHECKPOINTS = {
    "gpt2": ("248dfc3911869ec493c76e65bf2fcf7f615828b0254c12b473182f0f81d3a707", 548_105_171),
}

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def hub_name(name):
    """'124M' -> 'gpt2'; a name without released weights -> PicoGPTError."""
    canon = canonical_name(str(name))
    if canon not in HUB_MODELS:
        raise PicoGPTError(f"unknown model {name!r}: the downloadable GPT-2 checkpoints are {hub_model_names()}.")
    return canon


def file_url(base_url, name, filename):
    return f"{base_url.rstrip('/')}/{HUB_ORG}/{name}/resolve/main/{filename}"


def download(name, dest_root=None, base_url=None, progress=True, force=False):
    """Fetch `openai-community/<name>` into `{dest_root}/{name}/` and return that folder.

    name: gpt2, gpt2-medium, gpt2-large, gpt2-xl, or 124M / 355M / 774M / 1558M.
    dest_root: default $PICOGPT_WEIGHTS, else ./weights. base_url: default $PICOGPT_HUB_URL,
    else https://huggingface.co. Complete files are kept unless force=True; an interrupted
    download resumes.
    """
    name = hub_name(name)
    if dest_root is None:
        dest_root = weights_dir()
    base_url = check_base_url(base_url or os.environ.get("PICOGPT_HUB_URL") or DEFAULT_BASE_URL)
    folder = Path(dest_root) / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PicoGPTError(f"cannot create {folder} ({e.strerror}): {advice(e)} (--dir or PICOGPT_WEIGHTS).") from None
    with requests.Session() as session:
        session.headers["User-Agent"] = "picogpt"
        # The weights first: if they fail, the folder holds no config.json that looks complete
        # (and picogpt.weights does not take a folder without one for a checkpoint).
        _fetch_weights(session, name, base_url, folder, progress, force)
        _fetch_config(session, name, base_url, folder, force)
    return folder


def check_base_url(url):
    """The Hub's address (or a mirror's) must be an http(s) URL with a host: say so before any request."""
    parts = urlparse(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise PicoGPTError(f"{url!r} is not a web address: give --base-url / PICOGPT_HUB_URL like {DEFAULT_BASE_URL} "
                           "(with http:// or https://).")
    return url


# --- HTTP ---------------------------------------------------------------------------------

def _get(session, url, name, headers=None):
    """GET with streaming, redirects and a timeout; network trouble -> one clear PicoGPTError."""
    try:
        r = session.get(url, headers=headers, stream=True, timeout=TIMEOUT, allow_redirects=True)
    except requests.exceptions.RequestException as e:
        raise PicoGPTError(f"could not download {url} ({_reason(e)}): check your connection and try again, {MIRROR_HINT}.") from None
    # The Hub answers a missing repository with 401 + X-Error-Code, a missing file with 404.
    if r.status_code == 404 or (r.status_code >= 400 and r.headers.get("X-Error-Code") in ("RepositoryNotFound", "EntryNotFound")):
        r.close()
        raise PicoGPTError(f"model {name!r} not found at {url}: check the model name or --base-url.")
    if r.status_code >= 400 and r.status_code != 416:  # 416: our Range was past the end; the caller restarts
        r.close()
        raise PicoGPTError(f"downloading {url} failed with HTTP {r.status_code} {r.reason}: try again later, {MIRROR_HINT}.")
    return r


def _reason(e):
    """A few words for a requests exception (its str() is a paragraph of urllib3 internals)."""
    if isinstance(e, requests.exceptions.Timeout):
        return "the server did not answer in time"
    if isinstance(e, requests.exceptions.SSLError):
        return "the TLS/SSL handshake failed"
    if isinstance(e, requests.exceptions.ChunkedEncodingError):
        return "the connection was cut mid-file"
    if isinstance(e, requests.exceptions.ConnectionError):
        return "could not connect or the connection dropped"
    if isinstance(e, requests.exceptions.TooManyRedirects):
        return "too many redirects"
    return type(e).__name__


def _linked_headers(r):
    """(sha256 or None, size or None) announced by the Hub for the file behind `r`.

    The Hub's first answer (the 302 to the CDN, now in r.history) carries X-Linked-Etag and
    X-Linked-Size; a CDN's own ETag is often an MD5, which the 64-hex check rejects.
    """
    chain = list(r.history) + [r]
    tags = (_etag_sha256(resp.headers.get(key, "")) for key in ("X-Linked-Etag", "ETag") for resp in chain)
    sizes = (resp.headers.get("X-Linked-Size", "") for resp in chain)
    return next((t for t in tags if t), None), next((int(n) for n in sizes if n.isdigit()), None)


def _etag_sha256(tag):
    """'W/"<64 hex>"' or '"<64 hex>"' -> the hex digest; anything else (an MD5, a git sha1) -> None."""
    tag = tag.strip()
    tag = (tag[2:] if tag.startswith("W/") else tag).strip('"').lower()
    return tag if _SHA256.match(tag) else None


def _body_total(r):
    """The full file size from a 206's Content-Range ('bytes a-b/total') or a 200's length."""
    if r.status_code == 206:
        total = r.headers.get("Content-Range", "").rpartition("/")[2]
        return int(total) if total.isdigit() else None
    length = r.headers.get("Content-Length", "")
    return int(length) if length.isdigit() else None


# --- the two files --------------------------------------------------------------------------

def _fetch_config(session, name, base_url, folder, force):
    """config.json is tiny and not an LFS file (no published hash): fetch, parse, write atomically."""
    path = folder / "config.json"
    if path.is_file() and not force:
        return
    url = file_url(base_url, name, "config.json")
    with _get(session, url, name) as r:
        try:
            body = r.content
        except requests.exceptions.RequestException as e:
            raise PicoGPTError(f"could not download {url} ({_reason(e)}): try again, {MIRROR_HINT}.") from None
    try:
        json.loads(body)
    except ValueError:  # a login page or a captive portal answers 200 with HTML
        raise PicoGPTError(f"{url} did not return a JSON config: check --base-url (is it a Hugging Face mirror?).") from None
    with atomic_open(path, "wb") as f:
        f.write(body)


def _fetch_weights(session, name, base_url, folder, progress, force):
    final = folder / "model.safetensors"
    part = folder / ".model.safetensors.part"
    known_sha, known_size = KNOWN_CHECKPOINTS.get(name, (None, None))
    if final.is_file() and not force:
        if known_size is None or final.stat().st_size == known_size:
            return
        print(f"{final} has {final.stat().st_size} bytes, not the published {known_size}: downloading it again.", file=sys.stderr)
    if force and part.exists():
        part.unlink()
    url = file_url(base_url, name, "model.safetensors")
    for _ in range(2):  # a second pass only after a 416 (a part file longer than the file)
        have = part.stat().st_size if part.exists() else 0
        headers = {"Accept-Encoding": "identity"}  # byte offsets must be offsets in the file itself
        if have:
            headers["Range"] = f"bytes={have}-"
        r = _get(session, url, name, headers)
        if r.status_code == 416:
            # "Range not satisfiable": the part is already whole (a run stopped between the last
            # byte and the rename) or longer than the file. Keep a whole one, restart otherwise.
            r.close()
            total = _range_total(r) or known_size
            if total is not None and have == total:
                sha = known_sha or _linked_headers(r)[0]
                _verify(part, _hash_file(part), sha, total, total, name, url)
                os.replace(part, final)
                return
            part.unlink(missing_ok=True)
            continue
        with r:
            sha, size = _linked_headers(r)
            server_size = size or _body_total(r)      # what this server says the whole file is
            expected_sha = known_sha or sha
            expected_size = known_size or server_size  # what the file must be
            if expected_sha is None:
                print(f"note: no SHA-256 is known for {name}'s model.safetensors, so it is not verified (size only).", file=sys.stderr)
            if r.status_code != 206:
                have = 0  # the server ignored the Range: start over
            digest = _stream_to_part(r, part, have, server_size or expected_size, url, progress, f"{name}/{final.name}")
        _verify(part, digest, expected_sha, expected_size, server_size, name, url)
        os.replace(part, final)
        return
    raise PicoGPTError(f"{url} refused to resume twice: delete {part} and try again.")


def _range_total(r):
    """The file size from a 416's `Content-Range: bytes */SIZE`, or None."""
    m = re.fullmatch(r"bytes \*/(\d+)", r.headers.get("Content-Range", "").strip())
    return int(m.group(1)) if m else None


def _hash_file(path):
    """A sha256 object fed with the bytes already in `path`."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest


def _stream_to_part(r, part, have, total, url, progress, label):
    """Append (or write, when have == 0) the body of `r` to `part`; return the running sha256."""
    digest = _hash_file(part) if have else hashlib.sha256()  # bytes we have count towards the checksum
    bar = Progress(label, total, have, enabled=progress)
    try:
        with open(part, "ab" if have else "wb") as f:
            for chunk in r.iter_content(CHUNK):
                f.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
            f.flush()
            os.fsync(f.fileno())
    except requests.exceptions.RequestException as e:
        raise PicoGPTError(f"the download of {url} was interrupted ({_reason(e)}) after {bar.done / 1e6:.1f} MB: "
                           f"run the same command again to resume, {MIRROR_HINT}.") from None
    except OSError as e:
        raise PicoGPTError(f"cannot write {part} ({e.strerror}): {advice(e)} (--dir or PICOGPT_WEIGHTS).") from None
    finally:
        bar.close()
    return digest


def _verify(part, digest, expected_sha, expected_size, server_size, name, url):
    """Check the finished part file; a bad one is deleted so the next run starts clean."""
    size = part.stat().st_size
    if server_size is not None and size < server_size:
        # The server closed the stream early without an error: keep the bytes, resume next time.
        raise PicoGPTError(f"the download of {url} stopped at {size} of {server_size} bytes: run the same command again to resume.")
    got = digest.hexdigest()
    if expected_sha is not None and got != expected_sha:
        part.unlink()
        raise PicoGPTError(f"the checksum of {name}'s model.safetensors did not match (expected sha256 {expected_sha}, "
                           f"got {got}), so the download was deleted: try again, or check the mirror (--base-url / PICOGPT_HUB_URL).")
    if expected_size is not None and size != expected_size:
        part.unlink()
        raise PicoGPTError(f"{name}'s model.safetensors has {size} bytes, expected {expected_size}, so the download was deleted: "
                           f"try again, or check the mirror (--base-url / PICOGPT_HUB_URL).")


# --- the progress bar -----------------------------------------------------------------------

class Progress:
    """One line on stderr: name, MB done / total, percent, speed, ETA; redrawn with '\\r'."""

    INTERVAL = 0.1  # seconds between redraws: smooth to the eye, cheap for the terminal

    def __init__(self, label, total, done=0, enabled=True):
        self.label, self.total, self.done, self.enabled = label, total, done, enabled
        self.start_done, self.t0, self.last = done, time.monotonic(), 0.0

    def update(self, n):
        self.done += n
        now = time.monotonic()
        if self.enabled and now - self.last >= self.INTERVAL:
            self.last = now
            self._draw(now)

    def close(self):
        if self.enabled:
            self._draw(time.monotonic())
            sys.stderr.write("\n")
            sys.stderr.flush()

    def _draw(self, now):
        # Speed counts only this session's bytes, so a resumed download does not look instant.
        speed = (self.done - self.start_done) / max(now - self.t0, 1e-6)
        line = f"{self.label}  {self.done / 1e6:.1f}"
        if self.total:
            eta = (self.total - self.done) / speed if speed > 0 else 0
            line += f"/{self.total / 1e6:.1f} MB  {100 * self.done / self.total:5.1f}%  {speed / 1e6:.1f} MB/s  ETA {clock(eta)}"
        else:
            line += f" MB  {speed / 1e6:.1f} MB/s"
        sys.stderr.write("\r" + line.ljust(78))
        sys.stderr.flush()
