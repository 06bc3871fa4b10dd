"""The hub path (huggingface_hub + tinygpt's checks) against loopback servers only: a hub that answers
/resolve/ like huggingface.co (X-Repo-Commit, X-Linked-Etag, X-Linked-Size, a redirect to a CDN on another
origin), and hostile variants of it. Nothing here contacts a non-loopback address."""
import hashlib
import http.server
import socket
import threading
import time
from pathlib import Path

import pytest

import tinygpt
from tinygpt import hub

COMMIT = "a" * 40


class Hub(http.server.BaseHTTPRequestHandler):
    files: dict = {}
    cdn = ""  # base URL of the CDN server
    auth_required = False
    seen_auth: list = []   # Authorization headers the hub got
    cdn_auth: list = []    # ... and the CDN got (must stay empty of tokens)
    truncate = False
    commit = COMMIT
    etag = None            # override X-Linked-Etag
    location = None        # override the redirect target
    trickle = False

    def log_message(self, *a):
        pass

    def _answer(self, body_wanted):
        parts = self.path.strip("/").split("/")
        if parts[0] == "blobs":  # the CDN
            Hub.cdn_auth.append(self.headers.get("Authorization"))
            data = Hub.files[parts[1]]
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("ETag", '"Cj+w/4Ru=="')  # a CDN's base64 ETag: names no cache path, must pass
            self.end_headers()
            if not body_wanted:
                return
            if Hub.trickle:
                for b in data:
                    self.wfile.write(bytes([b]))
                    self.wfile.flush()
                    time.sleep(0.05)
            else:
                self.wfile.write(data[: len(data) // 2] if Hub.truncate else data)
            return
        Hub.seen_auth.append(self.headers.get("Authorization"))
        if len(parts) < 5 or parts[2] != "resolve":
            self.send_response(404)
            self.end_headers()
            return
        if Hub.auth_required and self.headers.get("Authorization") != "Bearer secret":
            self.send_response(401)
            self.send_header("X-Error-Code", "RepoNotFound")
            self.end_headers()
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
            self.send_header("X-Repo-Commit", Hub.commit)
            self.end_headers()
            return
        data = Hub.files[fname]
        self.send_response(302)
        self.send_header("Location", Hub.location or f"{Hub.cdn}/blobs/{fname}")
        self.send_header("X-Repo-Commit", Hub.commit)
        self.send_header("X-Linked-Etag", Hub.etag or f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("X-Linked-Size", str(len(data)))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_HEAD(self):
        self._answer(False)

    def do_GET(self):
        self._answer(True)


def _serve(handler):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


@pytest.fixture
def server(tiny_dir, monkeypatch, tmp_path):
    Hub.files = {p.name: p.read_bytes() for p in Path(tiny_dir).iterdir() if p.is_file()}
    Hub.auth_required, Hub.truncate, Hub.trickle, Hub.seen_auth, Hub.cdn_auth = False, False, False, [], []
    Hub.commit, Hub.etag, Hub.location = COMMIT, None, None
    srv, cdn = _serve(Hub), _serve(Hub)  # two origins: the hub and its CDN
    Hub.cdn = f"http://127.0.0.1:{cdn.server_address[1]}"
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{srv.server_address[1]}")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("TINYGPT_HUB_TIMEOUT", raising=False)
    _quiet_hub_client(monkeypatch, f"http://127.0.0.1:{srv.server_address[1]}")
    yield srv
    for s in (srv, cdn):
        s.shutdown()
        s.server_close()


def _quiet_hub_client(monkeypatch, url):
    """huggingface_hub reads HF_ENDPOINT and the telemetry switch at import; its user-agent code may fetch
    {import-time ENDPOINT}/api/agent-harnesses, which is not loopback if something imported it earlier."""
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)


def _outside_cache(tmp_path):
    """Files written under tmp_path but outside the cache."""
    cache = tmp_path / "cache"
    return [p for p in tmp_path.rglob("*") if p.is_file() and cache not in p.parents]


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


def test_token_sent_to_the_hub_never_to_another_host(server, monkeypatch):
    Hub.auth_required = True
    with pytest.raises(tinygpt.ModelNotFoundError, match="HF_TOKEN"):
        tinygpt.load("tiny/gpt2")
    monkeypatch.setenv("HF_TOKEN", "secret")
    tinygpt.load("tiny/gpt2", backend="numpy")
    assert "Bearer secret" in Hub.seen_auth
    assert Hub.cdn_auth and not any(Hub.cdn_auth), "the token was sent to the redirect's host"


def test_truncated_download(server, tmp_path):
    Hub.truncate = True
    with pytest.raises(tinygpt.DownloadError, match="expected"):
        tinygpt.load("tiny/gpt2")
    assert not list((tmp_path / "cache").rglob("*.incomplete"))


def test_unreachable(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    _quiet_hub_client(monkeypatch, "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    # huggingface_hub retries a refused connection with backoff (~23 s, then "cannot reach"); the deadline
    # cuts that short here
    monkeypatch.setenv("TINYGPT_HUB_TIMEOUT", "2")
    t0 = time.monotonic()
    with pytest.raises(tinygpt.DownloadError, match="deadline"):
        tinygpt.load("gpt2")
    assert time.monotonic() - t0 < 10


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


# -- hostile hubs -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("etag", ['"../../../../evil"', '"/tmp/evil"', 'W/"../evil"', '"..\\evil"'])
def test_etag_path_traversal_refused(server, tmp_path, etag):
    Hub.etag = etag
    with pytest.raises(tinygpt.DownloadError, match="unsafe"):
        hub.resolve_model("tiny/gpt2", vocab_only=True)
    assert not _outside_cache(tmp_path)
    assert not list((tmp_path / "cache").rglob("*evil*"))


@pytest.mark.parametrize("commit", ["../../../evil", "..", "a/../../evil"])
def test_commit_path_traversal_refused(server, tmp_path, commit):
    Hub.commit = commit
    with pytest.raises(tinygpt.DownloadError, match="unsafe"):
        hub.resolve_model("tiny/gpt2", vocab_only=True)
    assert not _outside_cache(tmp_path)
    assert not list((tmp_path / "cache").rglob("*evil*"))


@pytest.mark.parametrize("rev", ["../../../evil", "..", "/abs", "a//b", "a/../../b", "", "x\0y"])
def test_revision_path_traversal_refused(server, tmp_path, rev):
    with pytest.raises(tinygpt.ModelNotFoundError, match="revision"):
        hub.resolve_model("tiny/gpt2", revision=rev)
    assert not (tmp_path / "cache").exists()


def test_good_revisions_accepted():
    for rev in ("main", "v1.0", "refs/pr/1", COMMIT, "feature_x-2"):
        assert hub.check_revision(rev) == rev


def test_file_redirect_refused(server, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("do not copy me")
    Hub.location = secret.as_uri()
    with pytest.raises(tinygpt.DownloadError, match="file"):
        hub.resolve_model("tiny/gpt2", vocab_only=True)
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and b"do not copy" in p.read_bytes()]


def test_garbage_status_line(monkeypatch, tmp_path):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    stop = threading.Event()

    def answer():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                c, _ = srv.accept()
            except OSError:
                continue
            c.recv(65536)
            c.sendall(b"HTTP/1.1 two hundred OK\r\n\0\0garbage\r\n\r\n")
            c.close()

    threading.Thread(target=answer, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{srv.getsockname()[1]}")
    _quiet_hub_client(monkeypatch, f"http://127.0.0.1:{srv.getsockname()[1]}")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    try:
        with pytest.raises(tinygpt.DownloadError):
            hub.resolve_model("tiny/gpt2", vocab_only=True)
    finally:
        stop.set()
        srv.close()


def test_trickling_server_hits_the_deadline(server, monkeypatch, tmp_path):
    Hub.trickle = True  # 20 bytes/s: never trips a per-read timeout, would take minutes for the vocabulary
    monkeypatch.setenv("TINYGPT_HUB_TIMEOUT", "1.5")
    t0 = time.monotonic()
    with pytest.raises(tinygpt.DownloadError, match="deadline"):
        hub.resolve_model("tiny/gpt2", vocab_only=True)
    assert time.monotonic() - t0 < 10
    assert not _outside_cache(tmp_path)


def test_bad_timeout_setting(server, monkeypatch):
    monkeypatch.setenv("TINYGPT_HUB_TIMEOUT", "soon")
    with pytest.raises(tinygpt.DownloadError, match="TINYGPT_HUB_TIMEOUT"):
        hub.resolve_model("tiny/gpt2", vocab_only=True)
    with pytest.raises(tinygpt.DownloadError, match="positive"):
        hub.resolve_model("tiny/gpt2", vocab_only=True, timeout=float("nan"))


def test_no_hooks_outside_tinygpt(server):
    """The checks sit on huggingface_hub's shared client but act only inside tinygpt's own fetches."""
    import httpx2
    hub.resolve_model("tiny/gpt2", vocab_only=True)
    assert hub._DEADLINE.get() is None
    r = httpx2.Response(200, headers={"ETag": '"../x"'}, request=httpx2.Request("HEAD", "http://127.0.0.1/"))
    hub._on_response(r)  # outside a tinygpt fetch: no effect
    with hub._guarded(time.monotonic() + 60), pytest.raises(tinygpt.DownloadError, match="unsafe"):
        hub._on_response(r)
