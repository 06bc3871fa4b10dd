"""Model names -> local paths. A local path always wins; otherwise a Hugging Face hub repo is fetched into
the standard HF cache by `huggingface_hub` (which owns the cache layout, the HTTP conventions and the
no-token-to-a-CDN rule).

Around it, tinygpt adds what a server fed by untrusted endpoints needs and the library does not do (checked
in tests/test_hub.py against a loopback server): server-supplied ETag and X-Repo-Commit headers and the
user's revision must be plain path components (huggingface_hub joins them into cache paths unchecked), a
redirect may only go to http(s), and one overall deadline bounds the whole fetch (huggingface_hub has only
per-read timeouts, which a server trickling bytes never trips).

Honours HF_HOME, HF_HUB_CACHE, HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE and TINYGPT_HUB_TIMEOUT. Never called
on import.
"""
from __future__ import annotations

import contextvars
import json
import os
import re
import threading
import time
from functools import partial
from pathlib import Path
from typing import Callable

from .errors import DownloadError, ModelNotFoundError, OfflineError, TinyGPTError

SHORT_NAMES = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "distilgpt2": "distilbert/distilgpt2",
}
_REPO_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")
# One cache path component from the server (ETag, commit) or the user (each '/'-part of a revision): starts
# with a letter, digit or '_' (so never '.', '..' or empty), no separators.
_COMPONENT_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+=-]{0,127}")
_TRUE = {"1", "on", "yes", "true"}
DEFAULT_TIMEOUT_S = 3600.0  # whole fetch (config, vocabulary, weights); gpt2-xl is 6.4 GB
Progress = Callable[[str, int, int], None]  # (filename, bytes done, bytes total or 0)


def env_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def cache_root(cache_dir: str | Path | None = None) -> Path:
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def check_revision(revision: str) -> str:
    """A branch, tag or commit; each '/'-part a plain path component (it becomes refs/<revision> in the cache)."""
    if not isinstance(revision, str) or not all(_COMPONENT_RE.fullmatch(p) for p in revision.split("/")):
        raise ModelNotFoundError(f"revision {revision!r} is not a valid branch, tag or commit name")
    return revision


def timeout_s(timeout: float | None = None) -> float:
    if timeout is None:
        raw = os.environ.get("TINYGPT_HUB_TIMEOUT", "")
        try:
            timeout = float(raw) if raw.strip() else DEFAULT_TIMEOUT_S
        except ValueError:
            raise DownloadError(f"TINYGPT_HUB_TIMEOUT={raw!r} is not a number of seconds") from None
    if not (timeout > 0):  # also NaN
        raise DownloadError(f"hub timeout must be a positive number of seconds, got {timeout!r}")
    return float(timeout)


def resolve_model(spec: str, *, offline: bool | None = None, cache_dir=None, revision: str = "main",
                  progress: Progress | None = None, vocab_only: bool = False,
                  timeout: float | None = None) -> Path:
    """A local path as is; else the hub snapshot directory (config, vocabulary and weights, or with
    vocab_only just vocab.json + merges.txt). `timeout` bounds the whole fetch (default TINYGPT_HUB_TIMEOUT
    or 3600 s)."""
    p = Path(spec).expanduser()
    if p.exists():
        return p
    repo = SHORT_NAMES.get(spec, spec)
    if not _REPO_RE.fullmatch(repo) or spec.startswith((".", "/", "~")):
        raise ModelNotFoundError(
            f"{spec!r} is neither an existing path nor a hub model name (try gpt2, gpt2-medium, gpt2-large, "
            "gpt2-xl, distilgpt2 or org/name)")
    offline = env_offline() if offline is None else offline
    return snapshot(repo, revision=revision, cache_dir=cache_dir, offline=offline, progress=progress,
                    vocab_only=vocab_only, timeout=timeout)


_VOCAB = ("vocab.json", "merges.txt")
_WEIGHT_CHOICES = ("model.safetensors", "model.safetensors.index.json")  # in order of preference
_MAX_INDEX_BYTES = 16 << 20


def snapshot(repo: str, *, revision="main", cache_dir=None, offline=False, progress=None, vocab_only=False,
             timeout: float | None = None) -> Path:
    """Fetch config, vocabulary and weights of `repo` into the cache; returns the snapshot directory."""
    check_revision(revision)
    kw = dict(revision=revision, cache_dir=cache_root(cache_dir), offline=offline, progress=progress)
    with _guarded(time.monotonic() + timeout_s(timeout)):
        try:
            got = [_fetch(repo, name, **kw) for name in (_VOCAB if vocab_only else ("config.json",) + _VOCAB)]
        except FileNotFoundError as e:
            raise ModelNotFoundError(f"{repo}: the repo has no {e.args[0]}; is it a GPT-2 model?") from None
        if vocab_only:
            return got[0].parent
        cfg = got[0]
        for name in _WEIGHT_CHOICES:
            try:
                got = _fetch(repo, name, **kw)
            except FileNotFoundError:
                continue
            if name.endswith(".index.json"):
                for shard in _shards(got):
                    _fetch(repo, shard, **kw)
            return cfg.parent
    raise ModelNotFoundError(f"{repo}: has no model.safetensors (tinygpt does not download pytorch_model.bin; "
                             "download it yourself and pass the directory)")


def _shards(index: Path) -> list[str]:
    try:
        if index.stat().st_size > _MAX_INDEX_BYTES:
            raise ValueError("too large")
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
        raise DownloadError(f"{index}: corrupt shard index ({e})") from None
    for s in shards:  # hf_hub_download refuses paths that leave the snapshot; plain names are all we expect
        if not isinstance(s, str) or not _COMPONENT_RE.fullmatch(s):
            raise DownloadError(f"{index}: shard name {s!r} is not a plain file name")
    return shards


class _Progress:
    """The slice of tqdm's interface huggingface_hub drives, forwarding to our callback (and never printing)."""

    def __init__(self, callback: Progress | None, filename: str, *, total=None, initial: int = 0, **_):
        self._cb, self.desc, self.total, self.n = callback, filename, total, initial

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._cb:
            self._cb(self.desc, self.n, self.total or 0)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def _fetch(repo, filename, *, revision, cache_dir, offline, progress) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)
    where = endpoint()
    try:
        return Path(hf_hub_download(repo, filename, revision=revision, cache_dir=str(cache_dir),
                                    local_files_only=offline, endpoint=where,
                                    tqdm_class=partial(_Progress, progress, filename)))
    except TinyGPTError:
        raise
    except LocalEntryNotFoundError:  # a subclass of EntryNotFoundError: test it first
        if offline:
            raise OfflineError(f"{repo}/{filename} is not in the cache {cache_dir} and downloads are off "
                               "(HF_HUB_OFFLINE); pass a local path or go online") from None
        raise DownloadError(f"{repo}/{filename}: not cached and cannot reach {where} (or it answered with an "
                            "error); check the network, set HF_ENDPOINT, or pass a local path") from None
    except (GatedRepoError, RepositoryNotFoundError) as e:  # the hub answers 401 for a missing or private repo
        raise ModelNotFoundError(f"{repo}: not found on {where}, or it is private or gated (set HF_TOKEN): "
                                 f"{_first_line(e)}") from None
    except RevisionNotFoundError:
        raise ModelNotFoundError(f"{repo}: revision {revision!r} not found on {where}") from None
    except EntryNotFoundError:
        raise FileNotFoundError(filename) from None
    except Exception as e:  # noqa: BLE001 - any other failure of the download is a DownloadError
        raise DownloadError(f"{repo}/{filename}: download failed: {type(e).__name__}: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


# -- checks on huggingface_hub's HTTP client ---------------------------------------------------------------
# Installed once as event hooks on huggingface_hub's shared httpx client; active only inside snapshot()
# (a context variable), so other users of huggingface_hub in the process see no change.
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("tinygpt_hub_deadline", default=None)
_HOOK_LOCK = threading.Lock()


class _guarded:
    def __init__(self, deadline: float):
        self._deadline = deadline

    def __enter__(self):
        _install_hooks()
        self._token = _DEADLINE.set(self._deadline)

    def __exit__(self, *exc):
        _DEADLINE.reset(self._token)


def _install_hooks() -> None:
    """Our hooks on the shared client, and on every client huggingface_hub makes later (it replaces the
    client after a connection error). Wraps whatever factory is set, so a user's own factory is kept."""
    from huggingface_hub.utils import _http, get_session
    with _HOOK_LOCK:
        factory = getattr(_http, "_GLOBAL_CLIENT_FACTORY", _http.default_client_factory)
        if not getattr(factory, "_tinygpt_hooks", False):
            def hooked(inner=factory):
                return _add_hooks(inner())
            hooked._tinygpt_hooks = True
            _http.set_client_factory(hooked)
        _add_hooks(get_session())


def _add_hooks(client):
    hooks = client.event_hooks
    if _on_request not in hooks["request"]:
        hooks["request"].append(_on_request)
    if _on_response not in hooks["response"]:
        hooks["response"].append(_on_response)
    client.event_hooks = hooks
    return client


def _remaining() -> float | None:
    deadline = _DEADLINE.get()
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise DownloadError("the hub download ran past its deadline (TINYGPT_HUB_TIMEOUT; a slow or stalled "
                            "server); try again or raise the limit")
    return left


def _on_request(request) -> None:
    left = _remaining()
    if left is None:
        return
    if request.url.scheme not in ("http", "https"):
        raise DownloadError(f"refusing a {request.url.scheme}: URL from the hub ({request.url})")
    # per-phase timeouts no longer than what is left of the whole
    t = dict(request.extensions.get("timeout") or {})
    request.extensions["timeout"] = {k: min(v, left) if v is not None else left
                                     for k, v in {"connect": None, "read": None, "write": None, "pool": None,
                                                  **t}.items()}


def _on_response(response) -> None:
    if _remaining() is None:
        return
    h = response.headers
    # huggingface_hub takes the file's commit and ETag from the hub's HEAD answers; a CDN's own ETag on the GET
    # (base64 may hold '/') names no path, so a plain ETag is checked on HEAD answers only
    names = ("X-Repo-Commit", "X-Linked-Etag") + (("ETag",) if response.request.method == "HEAD" else ())
    for name in names:
        v = h.get(name)
        if v is None:
            continue
        norm = v.lstrip("W/").strip('"') if name != "X-Repo-Commit" else v  # as huggingface_hub normalizes
        if not _COMPONENT_RE.fullmatch(norm):
            raise DownloadError(f"the hub answered {response.request.url} with an unsafe {name} header "
                                f"{v[:80]!r}; refusing it (it would become a cache path)")
    loc = h.get("Location")
    if loc is not None and response.is_redirect:
        target = response.request.url.join(loc)
        if target.scheme not in ("http", "https"):
            raise DownloadError(f"the hub redirected to a {target.scheme}: URL; only http and https are followed")
    response.stream = _deadline_stream(response.stream)


def _deadline_stream(inner):
    """The response body, checked against the overall deadline after each chunk."""
    try:  # huggingface_hub >= 1.0 speaks httpx (renamed httpx2 in 2.x)
        from httpx2 import SyncByteStream
    except ImportError:
        from httpx import SyncByteStream

    class DeadlineStream(SyncByteStream):
        def __iter__(self):
            for chunk in inner:
                _remaining()
                yield chunk

        def close(self) -> None:
            inner.close()

    return DeadlineStream()
