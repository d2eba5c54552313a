"""picogpt.download against a fake Hugging Face Hub on 127.0.0.1 (tests never touch the network).

The fake Hub answers like the real one: the resolve URL of model.safetensors is a 302 to a CDN
path carrying `X-Linked-Etag: "<sha256>"` and `X-Linked-Size`; the CDN honours Range requests
(206 + Content-Range); config.json is served directly. The checkpoint it serves has the exact
layout of openai-community/gpt2's file: no `transformer.` prefix, no `lm_head.weight`, and the
causal-mask buffers `h.N.attn.bias` / `h.N.attn.masked_bias`.
"""

import hashlib
import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import picogpt
from picogpt import download as command
from picogpt import hub as dl
from picogpt import safetensors
from picogpt.backend import PicoGPTError, asnumpy
from picogpt.config import HUB_MODELS

REPO = Path(__file__).resolve().parents[1]
IDS = np.array([[464, 3290, 318, 257, 1332, 13]])
PUBLISHED = dict(dl.KNOWN_CHECKPOINTS)  # before the autouse fixture empties it


# --- a checkpoint in the Hub's layout --------------------------------------------------------

def hub_checkpoint(model, folder):
    """Write `model` as openai-community/gpt2 stores it; return (weights bytes, config bytes)."""
    n, tensors = model.config.n_ctx, {}
    for k, a in model.params.items():
        tensors[k] = asnumpy(a)  # keys as in the Hub file: 'h.0.attn.c_attn.weight', no prefix
    for i in range(model.config.n_layer):  # the mask buffers the Hub file carries
        tensors[f"h.{i}.attn.bias"] = np.tril(np.ones((n, n), np.float32)).reshape(1, 1, n, n)
        tensors[f"h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
    path = Path(folder) / "hub.safetensors"
    safetensors.save(tensors, path, metadata={"format": "pt"})
    return path.read_bytes(), json.dumps(model.config.to_hf_dict(), indent=2).encode()


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    model = picogpt.init_model("gpt2-micro", device="cpu", seed=1)
    weights, config = hub_checkpoint(model, tmp_path_factory.mktemp("hub"))
    return model, weights, config


# --- the fake Hub ----------------------------------------------------------------------------

class FakeHub:
    """What the server serves, how it misbehaves, and what it was asked."""

    def __init__(self, weights, config):
        self.weights, self.config = weights, config
        self.sha = hashlib.sha256(weights).hexdigest()
        self.advertised_sha = self.sha
        self.cut_next = False      # send half of the next CDN body, then drop the connection
        self.ignore_range = False  # answer Range requests with 200 and the whole file
        self.requests = []         # (path, Range header or None)
        self.url = None


class HubHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest's output clean
        pass

    def do_GET(self):
        hub = self.server.hub
        hub.requests.append((self.path, self.headers.get("Range")))
        m = re.fullmatch(r"/openai-community/([^/]+)/resolve/main/([^/]+)", self.path)
        if m and m[1] in HUB_MODELS and m[2] == "model.safetensors":
            # The Hub's answer for an LFS file: a redirect to the CDN, the LFS sha256 in headers.
            self.send_response(302)
            self.send_header("Location", f"{hub.url}/cdn-lfs/{m[1]}/{hub.sha}")
            self.send_header("X-Linked-Etag", f'"{hub.advertised_sha}"')
            self.send_header("X-Linked-Size", str(len(hub.weights)))
            self.send_header("ETag", '"0123456789abcdef0123456789abcdef01234567"')  # a git sha1, not the file's
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif m and m[1] in HUB_MODELS and m[2] == "config.json":
            self._send(200, hub.config, {"Content-Type": "application/json"})
        elif self.path.startswith("/cdn-lfs/"):
            self._serve_range(hub)
        else:
            self._send(404, b"Entry not found", {"X-Error-Code": "EntryNotFound"})

    def _send(self, code, body, headers=()):
        self.send_response(code)
        for k, v in dict(headers).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _serve_range(self, hub):
        data, rng = hub.weights, self.headers.get("Range")
        start = int(re.fullmatch(r"bytes=(\d+)-", rng)[1]) if rng and not hub.ignore_range else 0
        if start >= len(data):
            self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
            return
        body = data[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if hub.cut_next:  # a dropped connection: half the promised bytes, then the socket closes
            hub.cut_next = False
            self.wfile.write(body[:len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def hub(source):
    _, weights, config = source
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HubHandler)
    server.daemon_threads = True
    server.hub = FakeHub(weights, config)
    server.hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    # A short poll interval: shutdown() waits for one poll, 0.5 s by default, on every test.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield server.hub
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No real hashes (the fake checkpoint is not OpenAI's), no inherited mirror or weights dir."""
    monkeypatch.setattr(dl, "KNOWN_CHECKPOINTS", {})
    monkeypatch.delenv("PICOGPT_HUB_URL", raising=False)
    monkeypatch.setenv("PICOGPT_WEIGHTS", str(tmp_path / "weights"))


def sha256_file(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def cdn_requests(hub):
    return [(p, r) for p, r in hub.requests if p.startswith("/cdn-lfs/")]


# --- (1) a clean download, then loading it ---------------------------------------------------

def test_clean_download_loads_and_matches_source_logits(hub, source, tmp_path, capsys):
    model, weights, config = source
    folder = dl.download("gpt2", tmp_path, base_url=hub.url)
    assert folder == tmp_path / "gpt2"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert sha256_file(folder / "model.safetensors") == hub.sha
    assert (folder / "config.json").read_bytes() == config
    # The redirect was followed, and the progress bar reported the file and ended its line.
    assert [p for p, _ in hub.requests][:2] == ["/openai-community/gpt2/resolve/main/model.safetensors",
                                                f"/cdn-lfs/gpt2/{hub.sha}"]
    err = capsys.readouterr().err
    assert "gpt2/model.safetensors" in err and "MB" in err and "100.0%" in err and err.endswith("\n")

    # Mask buffers skipped, attn.c_attn.bias kept: the logits are the source model's, exactly.
    loaded = picogpt.load_model(str(folder))
    np.testing.assert_array_equal(asnumpy(loaded.forward(IDS)), asnumpy(model.forward(IDS)))


def test_load_model_by_name_downloads_on_first_use(hub, source, tmp_path, monkeypatch):
    model, _, _ = source
    monkeypatch.setenv("PICOGPT_WEIGHTS", str(tmp_path / "w"))
    monkeypatch.setenv("PICOGPT_HUB_URL", hub.url)
    loaded = picogpt.load_model("gpt2")
    assert (tmp_path / "w" / "gpt2" / "model.safetensors").is_file()
    np.testing.assert_array_equal(asnumpy(loaded.forward(IDS)), asnumpy(model.forward(IDS)))
    n = len(hub.requests)
    picogpt.load_model("124M")  # the alias finds the same folder: no second download
    assert len(hub.requests) == n


def test_complete_files_are_skipped_and_force_downloads_again(hub, tmp_path):
    dl.download("gpt2", tmp_path, base_url=hub.url, progress=False)
    hub.requests.clear()
    dl.download("124M", tmp_path, base_url=hub.url, progress=False)
    assert hub.requests == []
    dl.download("gpt2", tmp_path, base_url=hub.url, progress=False, force=True)
    assert len(cdn_requests(hub)) == 1
    assert sha256_file(tmp_path / "gpt2" / "model.safetensors") == hub.sha


# --- (2) resume ------------------------------------------------------------------------------

def test_interrupted_download_resumes_with_range(hub, tmp_path):
    folder = tmp_path / "gpt2"
    part = folder / ".model.safetensors.part"
    hub.cut_next = True
    with pytest.raises(PicoGPTError, match="interrupted.*resume"):
        dl.download("gpt2", tmp_path, base_url=hub.url, progress=False)
    assert part.is_file() and 0 < part.stat().st_size < len(hub.weights)
    assert not (folder / "model.safetensors").exists()
    assert hub.weights.startswith(part.read_bytes())

    have = part.stat().st_size
    hub.requests.clear()
    dl.download("gpt2", tmp_path, base_url=hub.url, progress=False)
    assert cdn_requests(hub) == [(f"/cdn-lfs/gpt2/{hub.sha}", f"bytes={have}-")]
    assert sha256_file(folder / "model.safetensors") == hub.sha
    assert not part.exists()


def test_server_ignoring_range_starts_over(hub, tmp_path):
    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / ".model.safetensors.part").write_bytes(b"stale bytes from another file")
    hub.ignore_range = True
    dl.download("gpt2", tmp_path, base_url=hub.url, progress=False)
    assert sha256_file(folder / "model.safetensors") == hub.sha


def test_part_longer_than_the_file_is_discarded(hub, tmp_path):
    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / ".model.safetensors.part").write_bytes(hub.weights + b"extra")  # the server answers 416
    dl.download("gpt2", tmp_path, base_url=hub.url, progress=False)
    assert sha256_file(folder / "model.safetensors") == hub.sha


def test_a_whole_part_file_is_verified_and_kept_not_downloaded_again(hub, tmp_path):
    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / ".model.safetensors.part").write_bytes(hub.weights)  # stopped before the rename: 416
    dl.download("gpt2", tmp_path, base_url=hub.url, progress=False)
    assert sha256_file(folder / "model.safetensors") == hub.sha
    assert not (folder / ".model.safetensors.part").exists()
    weight_requests = [rng for path, rng in hub.requests if path.endswith("model.safetensors")]
    assert all(rng is not None for rng in weight_requests)  # only the Range probe, never a full GET


# --- (3) checksums ---------------------------------------------------------------------------

def test_checksum_mismatch_leaves_nothing_behind(hub, tmp_path):
    hub.advertised_sha = hashlib.sha256(b"some other file").hexdigest()
    with pytest.raises(PicoGPTError, match="checksum") as e:
        dl.download("gpt2", tmp_path, base_url=hub.url, progress=False)
    assert hub.advertised_sha in str(e.value) and hub.sha in str(e.value)
    assert "--base-url" in str(e.value)
    assert list((tmp_path / "gpt2").iterdir()) == []


def test_without_any_hash_it_says_so_and_checks_the_size(hub, tmp_path, capsys):
    hub.advertised_sha = ""  # only the git-sha1 ETag is left, which is not the file's sha256
    dl.download("gpt2", tmp_path, base_url=hub.url, progress=False)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no SHA-256" in err
    assert sha256_file(tmp_path / "gpt2" / "model.safetensors") == hub.sha


def test_published_hash_wins_over_the_header(hub, tmp_path, monkeypatch):
    hub.advertised_sha = "f" * 64  # a mirror announcing nonsense does not matter when we know better
    monkeypatch.setattr(dl, "KNOWN_CHECKPOINTS", {"gpt2": (hub.sha, len(hub.weights))})
    dl.download("gpt2", tmp_path, base_url=hub.url, progress=False)
    assert sha256_file(tmp_path / "gpt2" / "model.safetensors") == hub.sha
    monkeypatch.setattr(dl, "KNOWN_CHECKPOINTS", {"gpt2": ("0" * 64, len(hub.weights))})
    with pytest.raises(PicoGPTError, match="checksum"):
        dl.download("gpt2", tmp_path, base_url=hub.url, progress=False, force=True)
    # The earlier, verified file is untouched: a failed download never replaces a good one.
    assert sha256_file(tmp_path / "gpt2" / "model.safetensors") == hub.sha


def test_published_table_is_well_formed():
    # The autouse fixture hides the table from the other tests; check the vendored values here.
    assert set(PUBLISHED) <= set(HUB_MODELS) and "gpt2" in PUBLISHED
    for sha, size in PUBLISHED.values():
        assert re.fullmatch(r"[0-9a-f]{64}", sha) and size > 0
    assert PUBLISHED["gpt2"][1] == 548_105_171


# --- (4) HTTP and network errors -------------------------------------------------------------

def test_404_names_the_model_and_the_url(hub, tmp_path):
    base = hub.url + "/no-such-mirror"
    with pytest.raises(PicoGPTError) as e:
        dl.download("gpt2-medium", tmp_path, base_url=base, progress=False)
    msg = str(e.value)
    assert "gpt2-medium" in msg and f"{base}/openai-community/gpt2-medium/resolve/main/model.safetensors" in msg
    assert "not found" in msg and "--base-url" in msg


def test_connection_refused_is_one_clear_error(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(PicoGPTError, match=r"could not download http://127\.0\.0\.1.*PICOGPT_HUB_URL"):
        dl.download("gpt2", tmp_path, base_url=f"http://127.0.0.1:{port}", progress=False)


# --- (5) names -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["gpt3", "gpt2-micro", "", "GPT2"])
def test_unknown_name_fails_before_any_request(hub, tmp_path, name):
    with pytest.raises(PicoGPTError, match="gpt2, gpt2-medium, gpt2-large, gpt2-xl") as e:
        dl.download(name, tmp_path, base_url=hub.url)
    assert repr(name) in str(e.value)
    assert hub.requests == []
    assert list(tmp_path.iterdir()) == []


def test_aliases_land_in_the_canonical_folder(hub, tmp_path):
    assert dl.download("355M", tmp_path, base_url=hub.url, progress=False) == tmp_path / "gpt2-medium"


# --- (6) the command line --------------------------------------------------------------------

def run_cli(*args):
    env = {k: v for k, v in os.environ.items() if k not in ("PICOGPT_HUB_URL", "PICOGPT_WEIGHTS")}
    return subprocess.run([sys.executable, "-m", "picogpt.download", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


def test_cli_downloads(hub, tmp_path):
    # Through `-m` the published hashes are in force, so use a size without one: the Hub's header counts.
    name = next((n for n in reversed(HUB_MODELS) if n not in PUBLISHED), None)
    if name is None:
        pytest.skip("every size has a published hash, which the fake checkpoint cannot match")
    r = run_cli(name, "--dir", str(tmp_path), "--base-url", hub.url)
    assert r.returncode == 0, r.stderr
    assert sha256_file(tmp_path / name / "model.safetensors") == hub.sha
    assert "%" in r.stderr and "MB/s" in r.stderr


def test_cli_errors_are_one_line(hub, tmp_path):
    r = run_cli("gpt2", "--dir", str(tmp_path), "--base-url", hub.url + "/nowhere", "--quiet")
    assert r.returncode == 2
    assert r.stderr.startswith("error:") and "not found" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("gpt5", "--dir", str(tmp_path))
    assert r.returncode == 2 and r.stderr.startswith("error: unknown model 'gpt5'")
    # The published gpt2 hash catches a server handing out some other file.
    r = run_cli("gpt2", "--dir", str(tmp_path), "--base-url", hub.url, "--quiet")
    assert r.returncode == 2 and "checksum" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "gpt2" / "model.safetensors").exists()


def test_cli_help_lists_names_and_examples():
    r = run_cli("--help")
    assert r.returncode == 0
    for word in ("gpt2-medium", "1558M", "--base-url", "examples:", "PICOGPT_HUB_URL"):
        assert word in r.stdout


def test_main_in_process_reports_errors(capsys, tmp_path, monkeypatch):
    assert command.main(["nope", "--dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: unknown model 'nope'")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(command, "download", interrupted)
    assert command.main(["gpt2", "--dir", str(tmp_path)]) == 130
    assert "again to resume" in capsys.readouterr().err


# --- a corrupt or truncated checkpoint never gives a traceback -------------------------------

@pytest.mark.parametrize("damage", ["truncated", "garbage", "garbage-header"])
def test_corrupt_weights_are_a_clear_error(source, tmp_path, damage):
    _, weights, config = source
    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / "config.json").write_bytes(config)
    data = {"truncated": weights[:len(weights) // 2],
            "garbage": np.random.default_rng(0).bytes(4096),
            "garbage-header": (16).to_bytes(8, "little") + b"\xff" * 16 + b"\0" * 64}[damage]
    (folder / "model.safetensors").write_bytes(data)
    with pytest.raises(PicoGPTError, match="truncated or corrupt"):
        picogpt.load_model(str(folder))
