"""The `tinygpt` command: generate, convert, info, tokenize, serve. The only module that prints.

Expected errors print one line on stderr and exit 1; usage errors exit 2 (argparse).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from .errors import TinyGPTError


def _progress_printer():
    last = [0.0]

    def show(name, done, total):
        now = time.monotonic()
        if now - last[0] < 0.2 and done != total:
            return
        last[0] = now
        if total:
            pct = 100.0 * done / total
            bar = "#" * int(pct / 4)
            sys.stderr.write(f"\r{name:<28} [{bar:<25}] {pct:5.1f}% of {total / 1e6:.1f} MB")
        else:
            sys.stderr.write(f"\r{name:<28} {done / 1e6:.1f} MB")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()
    return show


def _add_model_args(p):
    p.add_argument("-m", "--model", default="gpt2",
                   help="hub name (gpt2, gpt2-medium, gpt2-large, gpt2-xl, distilgpt2, org/name) or a local "
                        "path (HF directory, or a tinygpt file/directory from `tinygpt convert`); default gpt2")
    p.add_argument("--backend", default=None, choices=["auto", "numpy", "cpu", "cuda"],
                   help="auto = cuda if a GPU is present, else cpu (C++/OpenMP), else numpy; default: "
                        "TINYGPT_BACKEND, else auto")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16", "int8"], default=None,
                   help="convert weight matrices at load (default: as stored); int8 is per-row symmetric, cpu "
                        "backend only; numpy computes in float32")
    p.add_argument("-t", "--threads", type=int, default=None,
                   help="CPU threads for the cpu backend (default: TINYGPT_NUM_THREADS or all cores)")
    p.add_argument("--offline", action="store_true", default=None,
                   help="never download (also: HF_HUB_OFFLINE=1); use the cache or a local path")
    p.add_argument("--cache-dir", default=None, help="hub cache (default: HF_HUB_CACHE, HF_HOME/hub, ~/.cache/huggingface/hub)")
    p.add_argument("--revision", default="main", help="hub revision (branch, tag or commit); default main")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="tinygpt", description="Small, fast, exact GPT-2 inference.")
    ap.add_argument("--version", action="version", version=f"tinygpt {_version()}")
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND")
    sub.required = True

    g = sub.add_parser("generate", help="generate text from a prompt (streams to stdout)",
                       description="Generate a continuation of PROMPT. Only the generated text goes to stdout.")
    g.add_argument("prompt", nargs="?", default=None, help="prompt text; '-' or omitted with piped stdin reads stdin; "
                                                            "empty starts from <|endoftext|>")
    _add_model_args(g)
    g.add_argument("-n", "--max-new-tokens", type=int, default=128, help="tokens to generate (default 128)")
    g.add_argument("--temperature", "--temp", type=float, default=1.0, help="0 = greedy; default 1.0")
    g.add_argument("--greedy", action="store_true", help="same as --temperature 0")
    g.add_argument("--top-k", type=int, default=0, help="keep the K most likely tokens (0 = off, default)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1] (1 = off, default)")
    g.add_argument("--repeat-penalty", type=float, default=1.0,
                   help="CTRL/HF repetition penalty over prompt and output (1 = off, default)")
    g.add_argument("--seed", type=int, default=None, help="random seed (same seed, same text); default random")
    g.add_argument("--stop", action="append", default=[], metavar="STR",
                   help="stop when STR is generated (not printed); repeatable")
    g.add_argument("--ignore-eos", action="store_true", help="keep going past <|endoftext|>")
    g.add_argument("--context-overflow", choices=["error", "slide"], default="error",
                   help="prompt + new tokens beyond the context: error (default) or slide (drop the oldest "
                        "quarter of the window and re-read the rest)")
    g.add_argument("--no-stream", action="store_true", help="print the text once at the end")
    g.add_argument("--timings", action="store_true", help="print prefill and decode tokens/s to stderr")
    g.add_argument("-v", "--verbose", action="store_true", help="print model, backend and seed to stderr")

    c = sub.add_parser("convert", help="write a checkpoint in tinygpt's memory-mappable safetensors layout",
                       description="Convert SRC (hub name, HF directory or tinygpt file) to DST: a .safetensors "
                                   "file, or a directory that gets model.safetensors. The vocabulary is copied beside it.")
    c.add_argument("src")
    c.add_argument("dst")
    c.add_argument("--dtype", choices=["float32", "float16", "bfloat16", "int8"], default=None,
                   help="matrix dtype to store (default: as in SRC)")
    c.add_argument("--offline", action="store_true", default=None, help="never download")
    c.add_argument("--cache-dir", default=None)

    i = sub.add_parser("info", help="version, backends (with reasons when unavailable), build facts; "
                                    "with -m, the model's config")
    i.add_argument("-m", "--model", default=None, help="also describe this model (local path or cached hub name)")
    i.add_argument("--json", action="store_true", help="machine-readable output")

    t = sub.add_parser("tokenize", help="print GPT-2 token ids of TEXT (or decode ids)")
    t.add_argument("text")
    t.add_argument("-m", "--model", default=None, help="take the vocabulary from this model (default: gpt2)")
    t.add_argument("--decode", action="store_true", help="TEXT is space- or comma-separated ids; print the text")
    t.add_argument("--allow-special", action="store_true", help="map a literal <|endoftext|> to id 50256")
    t.add_argument("--offline", action="store_true", default=None)

    s = sub.add_parser("serve", help="OpenAI-compatible completions server (needs tinygpt[serve])",
                       description="Serve MODEL over HTTP: /v1/completions (OpenAI Completions API, SSE streaming), "
                                   "/v1/models, /health, /metrics, /tokenize, /detokenize. Requests share one "
                                   "batched engine. SIGTERM finishes in-flight requests, then exits 0.")
    _add_model_args(s)
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000, help="default 8000")
    s.add_argument("--api-key", default=os.environ.get("TINYGPT_API_KEY"),
                   help="require 'Authorization: Bearer KEY' (default: TINYGPT_API_KEY, else no key)")
    s.add_argument("--model-name", default=None, help="model id clients send (default: the -m value)")
    s.add_argument("--max-batch", type=int, default=16, help="sequences per forward step (default 16)")
    s.add_argument("--max-queue", type=int, default=64, help="requests waiting beyond that get 429 (default 64)")
    s.add_argument("--grace", type=float, default=30.0, help="seconds SIGTERM waits for in-flight requests")
    return ap


def _version() -> str:
    from . import __version__
    return __version__


def _cmd_generate(a) -> int:
    from .model import load
    prompt = a.prompt
    if prompt == "-" or (prompt is None and not sys.stdin.isatty()):
        prompt = sys.stdin.read()
    prompt = prompt or ""
    progress = _progress_printer() if sys.stderr.isatty() else None
    model = load(a.model, a.backend, dtype=a.dtype, threads=a.threads, offline=a.offline, cache_dir=a.cache_dir,
                 revision=a.revision, progress=progress)
    opts = dict(max_new_tokens=a.max_new_tokens, temperature=0.0 if a.greedy else a.temperature, top_k=a.top_k,
                top_p=a.top_p, repeat_penalty=a.repeat_penalty, seed=a.seed, stop=a.stop, ignore_eos=a.ignore_eos,
                context_overflow=a.context_overflow)
    stream = model.stream(prompt, **opts)
    out = sys.stdout
    if a.no_stream:
        out.write("".join(stream))
    else:
        for piece in stream:
            out.write(piece)
            out.flush()
    out.write("\n")
    out.flush()
    r = stream.result
    if a.verbose:
        print(f"model: {a.model} {model!r}; seed: {r.seed}; finish: {r.finish_reason}", file=sys.stderr)
    if a.timings:
        tm = r.timings
        print(f"prefill: {tm.prompt_tokens} tokens in {tm.prefill_s * 1e3:.1f} ms ({tm.prefill_tok_s:.1f} tok/s); "
              f"decode: {tm.decode_steps} steps in {tm.decode_s * 1e3:.1f} ms ({tm.decode_tok_s:.1f} tok/s) "
              f"[{model.backend_name}, {model.dtype}]", file=sys.stderr)
    return 0


def _cmd_convert(a) -> int:
    from .hub import resolve_model
    from .weights import load_checkpoint, save_tinygpt
    progress = _progress_printer() if sys.stderr.isatty() else None
    src = resolve_model(a.src, offline=a.offline, cache_dir=a.cache_dir, progress=progress)
    ck = load_checkpoint(src)
    path = save_tinygpt(ck, a.dst, a.dtype)
    print(f"wrote {path} ({os.path.getsize(path) / 1e6:.1f} MB, {a.dtype or ck.dtype})", file=sys.stderr)
    return 0


def _cmd_info(a) -> int:
    from . import backends
    from .hub import cache_root
    info = {"version": _version(), "python": sys.version.split()[0], "backends": {}, "hub_cache": str(cache_root())}
    for name, (ok, why) in backends.status().items():
        info["backends"][name] = {"available": ok, "detail": why}
    try:
        from . import _cpu
        info["cpu_build"] = _cpu.build_info()
    except ImportError:
        pass
    try:
        from . import _cuda
        info["cuda_build"] = _cuda.build_info()
    except ImportError:
        pass
    if a.model:
        from .hub import resolve_model
        from .weights import expected_shapes, load_checkpoint
        ck = load_checkpoint(resolve_model(a.model, offline=True))
        info["model"] = {"path": str(ck.path), "format": ck.source, "dtype": ck.dtype, **ck.config.to_dict(),
                         "parameters": int(sum(ck.tensors[n].size for n in expected_shapes(ck.config))),
                         "bytes": ck.nbytes}
    if a.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"tinygpt {info['version']} (Python {info['python']})")
    print("backends:")
    for name, b in info["backends"].items():
        print(f"  {name:<6} {'yes' if b['available'] else 'no ':<4} {b['detail']}")
    for key in ("cpu_build", "cuda_build"):
        if key in info:
            print(f"{key.replace('_', ' ')}: " + ", ".join(f"{k}={v}" for k, v in info[key].items()))
    print(f"hub cache: {info['hub_cache']}")
    if "model" in info:
        print("model: " + ", ".join(f"{k}={v}" for k, v in info["model"].items()))
    return 0


def _cmd_tokenize(a) -> int:
    from .hub import resolve_model
    from .tokenizer import Tokenizer
    path = resolve_model(a.model or "gpt2", offline=a.offline, vocab_only=True)
    tok = Tokenizer.from_dir(path if path.is_dir() else path.parent)
    if a.decode:
        try:
            ids = [int(x) for x in a.text.replace(",", " ").split()]
        except ValueError:
            raise TinyGPTError("--decode expects integers separated by spaces or commas") from None
        print(tok.decode(ids))
    else:
        ids = tok.encode(a.text, allowed_special="all" if a.allow_special else ())
        print(" ".join(map(str, ids)))
    return 0


def _cmd_serve(a) -> int:
    try:
        import uvicorn  # noqa: F401

        from . import server
    except ImportError as e:
        raise TinyGPTError(f"serve needs the serve extra: pip install 'tinygpt[serve]' ({e})") from None
    import signal

    from .model import load
    for name in ("max_batch", "max_queue", "port"):
        if getattr(a, name) < 1:
            raise TinyGPTError(f"--{name.replace('_', '-')} must be >= 1")
    if not a.grace >= 0:
        raise TinyGPTError("--grace must be >= 0 seconds")
    progress = _progress_printer() if sys.stderr.isatty() else None
    model = load(a.model, a.backend, dtype=a.dtype, threads=a.threads, offline=a.offline, cache_dir=a.cache_dir,
                 revision=a.revision, progress=progress)
    app = server.create_app(model, model_id=a.model_name or a.model, api_key=a.api_key, max_batch=a.max_batch,
                            max_queue=a.max_queue, grace_s=a.grace)
    srv = server.Server(app, host=a.host, port=a.port, grace_s=a.grace)
    # uvicorn re-raises the signal that stopped it under the previous handler: make that a no-op so a graceful
    # SIGTERM ends with status 0
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    if a.api_key is None and a.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"tinygpt: warning: listening on {a.host} without --api-key: anyone who can reach it may use it",
              file=sys.stderr)
    print(f"tinygpt: serving {a.model} ({model.backend_name}, {model.dtype}) on http://{a.host}:{a.port}/v1",
          file=sys.stderr, flush=True)
    srv.run()
    return 0 if srv.started else 1


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"generate": _cmd_generate, "convert": _cmd_convert, "info": _cmd_info,
                "tokenize": _cmd_tokenize, "serve": _cmd_serve}[args.cmd](args)
    except TinyGPTError as e:
        print(f"tinygpt: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
