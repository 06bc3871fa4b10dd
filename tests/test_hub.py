"""The built-in downloader against a loopback HTTP server that behaves like the hub's /resolve/ endpoint
(redirects, X-Repo-Commit, ETag / X-Linked-Etag, X-Linked-Size), writing the standard HF cache layout."""
import hashlib
import http.server
import threading
from pathlib import Path

import pytest

import tinygpt
from tinygpt import hub

COMMIT = "a" * 40


class Hub(http.server.BaseHTTPRequestHandler):
    files: dict = {}
    auth_required = False
    seen_auth: list = []
    truncate = False

    def log_message(self, *a):
        pass

    def _answer(self, body_wanted):
        Hub.seen_auth.append(self.headers.get("Authorization"))
        if Hub.auth_required and self.headers.get("Authorization") != "Bearer secret":
            self.send_response(401)
            self.end_headers()
            return
        parts = self.path.strip("/").split("/")
        if parts[0] == "blobs":
            data = Hub.files[parts[1]]
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body_wanted:
                self.wfile.write(data[: len(data) // 2] if Hub.truncate else data)
            return
        # /{org}/{name}/resolve/{rev}/{file}
        org, name, _, rev, fname = parts[:5]
        if f"{org}/{name}" != "tiny/gpt2":
            self.send_response(404)
            self.send_header("X-Error-Code", "RepoNotFound")
            self.end_headers()
            return
        if fname not in Hub.files:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.end_headers()
            return
        data = Hub.files[fname]
        sha = hashlib.sha256(data).hexdigest()
        self.send_response(302)
        self.send_header("Location", f"/blobs/{fname}")
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("X-Linked-Etag", f'"{sha}"')
        self.send_header("X-Linked-Size", str(len(data)))
        self.end_headers()

    def do_HEAD(self):
        self._answer(False)

    def do_GET(self):
        self._answer(True)


@pytest.fixture
def server(tiny_dir, monkeypatch, tmp_path):
    Hub.files = {p.name: p.read_bytes() for p in Path(tiny_dir).iterdir() if p.is_file()}
    Hub.auth_required, Hub.truncate, Hub.seen_auth = False, False, []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{srv.server_address[1]}")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TINYGPT_BUILTIN_DOWNLOADER", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield srv
    srv.shutdown()


def test_download_layout_and_reuse(server, tmp_path, tiny_dir):
    got = []
    m = tinygpt.load("tiny/gpt2", backend="numpy", progress=lambda f, d, t: got.append((f, d, t)))
    ref = tinygpt.load(tiny_dir, backend="numpy")
    assert m.generate("Hi", max_new_tokens=8, temperature=0) == ref.generate("Hi", max_new_tokens=8, temperature=0)
    rd = tmp_path / "cache" / "models--tiny--gpt2"
    assert (rd / "refs" / "main").read_text() == COMMIT
    snap = rd / "snapshots" / COMMIT / "model.safetensors"
    assert snap.is_symlink() and snap.resolve().parent == (rd / "blobs").resolve()
    assert any(f == "model.safetensors" and d == t for f, d, t in got)
    assert not list((rd / "blobs").glob("*.incomplete"))
    # offline now works from the cache, via argument or env
    assert hub.resolve_model("tiny/gpt2", offline=True) == snap.parent
    server.shutdown()  # unreachable hub (connection refused): the cache is served
    server.server_close()
    assert hub.resolve_model("tiny/gpt2") == snap.parent


def test_offline_without_cache(server, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(tinygpt.OfflineError, match="not in the cache"):
        tinygpt.load("tiny/gpt2")


def test_unknown_repo(server):
    with pytest.raises(tinygpt.ModelNotFoundError, match="not found"):
        tinygpt.load("nobody/nothing")


def test_token_sent(server, monkeypatch):
    Hub.auth_required = True
    with pytest.raises(tinygpt.ModelNotFoundError, match="HF_TOKEN"):
        tinygpt.load("tiny/gpt2")
    monkeypatch.setenv("HF_TOKEN", "secret")
    tinygpt.load("tiny/gpt2", backend="numpy")
    assert "Bearer secret" in Hub.seen_auth


def test_truncated_download(server, tmp_path):
    Hub.truncate = True
    with pytest.raises(tinygpt.DownloadError, match="expected"):
        tinygpt.load("tiny/gpt2")
    assert not list((tmp_path / "cache").rglob("*.incomplete"))


def test_unreachable(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("TINYGPT_BUILTIN_DOWNLOADER", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(tinygpt.DownloadError, match="cannot reach"):
        tinygpt.load("gpt2")


def test_short_names_and_cache_root(monkeypatch, tmp_path):
    assert hub.SHORT_NAMES["gpt2"] == "openai-community/gpt2"
    assert hub.SHORT_NAMES["distilgpt2"] == "distilbert/distilgpt2"
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    assert hub.cache_root() == tmp_path / "hub"
    with pytest.raises(tinygpt.ModelNotFoundError):
        hub.resolve_model("definitely not a model")


def test_tokenize_fetches_only_the_vocabulary(server, tmp_path):
    d = hub.resolve_model("tiny/gpt2", vocab_only=True)
    assert sorted(p.name for p in d.iterdir()) == ["merges.txt", "vocab.json"]
