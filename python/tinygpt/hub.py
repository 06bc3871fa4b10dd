"""Model names -> local paths. A local path always wins; otherwise a Hugging Face hub repo is fetched into
the standard HF cache (huggingface_hub when installed, else the small downloader below, same layout).

Honours HF_HOME, HF_HUB_CACHE, HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE. Never called on import.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable

from .errors import DownloadError, ModelNotFoundError, OfflineError

SHORT_NAMES = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "distilgpt2": "distilbert/distilgpt2",
}
_REPO_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")
_TRUE = {"1", "on", "yes", "true"}
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


def resolve_model(spec: str, *, offline: bool | None = None, cache_dir=None, revision: str = "main",
                  progress: Progress | None = None, vocab_only: bool = False) -> Path:
    """A local path as is; else the hub snapshot directory (config, vocabulary and weights, or with
    vocab_only just vocab.json + merges.txt)."""
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
                    vocab_only=vocab_only)


_VOCAB = ("vocab.json", "merges.txt")
_WEIGHT_CHOICES = ("model.safetensors", "model.safetensors.index.json")  # in order of preference


def snapshot(repo: str, *, revision="main", cache_dir=None, offline=False, progress=None, vocab_only=False) -> Path:
    """Fetch config, vocabulary and weights of `repo` into the cache; returns the snapshot directory."""
    fetch = _hf_hub_fetch if _has_hf_hub() else _builtin_fetch
    kw = dict(revision=revision, cache_dir=cache_root(cache_dir), offline=offline, progress=progress)
    try:
        got = [fetch(repo, name, **kw) for name in (_VOCAB if vocab_only else ("config.json",) + _VOCAB)]
    except FileNotFoundError as e:
        raise ModelNotFoundError(f"{repo}: the repo has no {e.args[0]}; is it a GPT-2 model?") from None
    if vocab_only:
        return got[0].parent
    cfg = got[0]
    for name in _WEIGHT_CHOICES:
        try:
            got = fetch(repo, name, **kw)
        except FileNotFoundError:
            continue
        if name.endswith(".index.json"):
            import json
            for shard in sorted(set(json.loads(got.read_text())["weight_map"].values())):
                fetch(repo, shard, **kw)
        return cfg.parent
    raise ModelNotFoundError(f"{repo}: has no model.safetensors (tinygpt does not download pytorch_model.bin; "
                             "download it yourself and pass the directory)")


def _has_hf_hub() -> bool:
    if os.environ.get("TINYGPT_BUILTIN_DOWNLOADER"):
        return False
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        return False
    return True


def _hf_hub_fetch(repo, filename, *, revision, cache_dir, offline, progress) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError
    try:
        return Path(hf_hub_download(repo, filename, revision=revision, cache_dir=str(cache_dir),
                                    local_files_only=offline))
    except LocalEntryNotFoundError:  # a subclass of EntryNotFoundError in recent huggingface_hub: test it first
        if offline:
            raise OfflineError(f"{repo}/{filename} is not in the cache {cache_dir} and downloads are off "
                               "(HF_HUB_OFFLINE); pass a local path or go online") from None
        raise DownloadError(f"{repo}/{filename}: not cached and the hub is unreachable; check the network, "
                            "set HF_ENDPOINT, or pass a local path") from None
    except EntryNotFoundError:
        raise FileNotFoundError(filename) from None
    except RepositoryNotFoundError:
        raise ModelNotFoundError(f"{repo}: no such model on the hub (or it is private: set HF_TOKEN)") from None
    except Exception as e:
        raise DownloadError(f"{repo}/{filename}: download failed: {e}") from None


# -- built-in downloader ------------------------------------------------------------------------------
def _repo_dir(cache_dir: Path, repo: str) -> Path:
    return cache_dir / ("models--" + repo.replace("/", "--"))


def _cached(rd: Path, revision: str, filename: str) -> Path | None:
    commit = revision
    ref = rd / "refs" / revision
    if ref.is_file():
        commit = ref.read_text().strip()
    f = rd / "snapshots" / commit / filename
    return f if f.is_file() else None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a, **k):
        return None


def _request(url: str, method: str = "GET") -> urllib.request.Request:
    req = urllib.request.Request(url, method=method, headers={"User-Agent": "tinygpt"})
    if os.environ.get("HF_TOKEN"):
        req.add_header("Authorization", f"Bearer {os.environ['HF_TOKEN']}")
    return req


def _builtin_fetch(repo, filename, *, revision, cache_dir, offline, progress) -> Path:
    rd = _repo_dir(Path(cache_dir), repo)
    if offline:
        hit = _cached(rd, revision, filename)
        if hit is None:
            raise OfflineError(f"{repo}/{filename} is not in the cache {cache_dir} and downloads are off "
                               "(HF_HUB_OFFLINE); pass a local path or go online")
        return hit
    url = f"{endpoint()}/{repo}/resolve/{urllib.parse.quote(revision, safe='')}/{filename}"
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        try:
            head = opener.open(_request(url, "HEAD"), timeout=30)
        except urllib.error.HTTPError as e:
            if e.code not in (301, 302, 303, 307, 308):
                raise
            head = e  # a redirect answer carries the metadata headers we need
        h = head.headers
    except urllib.error.HTTPError as e:
        hit = None
        if e.code == 404:
            if filename in _WEIGHT_CHOICES or e.headers.get("X-Error-Code") == "EntryNotFound":
                raise FileNotFoundError(filename) from None
            raise ModelNotFoundError(f"{repo}: {filename} not found on {endpoint()} (unknown model name?)") from None
        if e.code in (401, 403):
            raise ModelNotFoundError(f"{repo}: access denied (HTTP {e.code}); it may be gated or private: "
                                     "set HF_TOKEN") from None
        raise DownloadError(f"{url}: HTTP {e.code}") from None
    except (urllib.error.URLError, OSError) as e:
        hit = _cached(rd, revision, filename)
        if hit is not None:  # offline-tolerant, like huggingface_hub: serve the cache when the hub is unreachable
            return hit
        raise DownloadError(f"cannot reach {endpoint()} ({getattr(e, 'reason', e)}); check the network, set "
                            "HF_ENDPOINT, or pass a local path") from None
    commit = h.get("X-Repo-Commit") or revision
    etag = (h.get("X-Linked-Etag") or h.get("ETag") or "").strip('"').removeprefix("W/").strip('"')
    size = h.get("X-Linked-Size") or h.get("Content-Length")
    size = int(size) if size and size.isdigit() else 0
    if not etag:
        raise DownloadError(f"{url}: the server sent no ETag; cannot place the file in the cache")
    location = h.get("Location")
    blob = rd / "blobs" / etag
    if not blob.is_file():
        blob.parent.mkdir(parents=True, exist_ok=True)
        _download(urllib.parse.urljoin(url, location) if location else url, blob, filename, size, etag, progress)
    snap = rd / "snapshots" / commit / filename
    snap.parent.mkdir(parents=True, exist_ok=True)
    if revision != commit:
        (rd / "refs").mkdir(parents=True, exist_ok=True)
        (rd / "refs" / revision).write_text(commit)
    if not snap.exists():
        try:
            snap.symlink_to(os.path.relpath(blob, snap.parent))
        except OSError:
            shutil.copyfile(blob, snap)
    return snap


def _download(url: str, blob: Path, filename: str, size: int, etag: str, progress) -> None:
    tmp = blob.with_name(blob.name + ".incomplete")
    sha = hashlib.sha256()
    done = 0
    try:
        with urllib.request.urlopen(_request(url), timeout=60) as r, open(tmp, "wb") as f:
            total = size or int(r.headers.get("Content-Length") or 0)
            while True:
                chunk = r.read(1 << 20)
                if not chunk:
                    break
                f.write(chunk)
                sha.update(chunk)
                done += len(chunk)
                if progress:
                    progress(filename, done, total)
    except (urllib.error.URLError, OSError) as e:
        tmp.unlink(missing_ok=True)
        raise DownloadError(f"{filename}: download failed ({getattr(e, 'reason', e)})") from None
    if size and done != size:
        tmp.unlink(missing_ok=True)
        raise DownloadError(f"{filename}: got {done} bytes, expected {size}; try again")
    if re.fullmatch(r"[0-9a-f]{64}", etag) and sha.hexdigest() != etag:
        tmp.unlink(missing_ok=True)
        raise DownloadError(f"{filename}: sha256 mismatch (expected {etag}, got {sha.hexdigest()}); try again")
    os.replace(tmp, blob)
