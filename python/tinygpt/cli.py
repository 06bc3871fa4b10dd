"""The `tinygpt` command: generate, convert, info, tokenize, serve. The only module that prints.

Expected errors print one line on stderr and exit 1; usage errors exit 2 (argparse).
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import time

from . import dtypes
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


_DTYPE_HELP = "; ".join(f"{d} ({', '.join(a for a, t in dtypes.ALIASES.items() if t == d)})" for d in dtypes.NAMES)


def _dtype(s: str) -> str:
    """vLLM's, llama.cpp's and PyTorch's short names for a dtype (dtypes.ALIASES), as tinygpt's canonical one."""
    try:
        return dtypes.get(s).name
    except TinyGPTError:
        raise argparse.ArgumentTypeError(f"unknown dtype {s!r}; write one of {_DTYPE_HELP}") from None


def _logit_bias(s: str) -> tuple[int, float]:
    """llama.cpp's TOKEN_ID(+|-)BIAS (15043+1, 15043-inf), also TOKEN_ID=BIAS."""
    import re
    m = re.fullmatch(r"\s*(\d+)\s*(?:=\s*([-+]?)|([-+]))\s*(inf|[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*", s)
    if not m:
        raise argparse.ArgumentTypeError(f"expected TOKEN_ID+BIAS, TOKEN_ID-BIAS or TOKEN_ID=BIAS (15043+1, "
                                         f"15043-inf), got {s!r}")
    sign = m.group(2) or m.group(3) or "+"
    return int(m.group(1)), float(sign + m.group(4))


def _add_model_args(p):
    p.add_argument("-m", "--model", default="gpt2",
                   help="hub name (gpt2, gpt2-medium, gpt2-large, gpt2-xl, distilgpt2, org/name) or a local "
                        "path (HF directory, or a tinygpt file/directory from `tinygpt convert`); default gpt2")
    p.add_argument("--backend", default=None, choices=["auto", "numpy", "cpu", "cuda"],
                   help="auto = cuda if a GPU is present, else cpu (C++/OpenMP), else numpy; default: "
                        "TINYGPT_BACKEND, else auto")
    p.add_argument("--dtype", type=_dtype, default=None, metavar="DTYPE",
                   help=f"convert weight matrices at load (default: as stored): {_DTYPE_HELP}; int8 is per-row "
                        "symmetric, cpu backend only; numpy computes in float32")
    p.add_argument("--bf16-activations", action="store_true",
                   help="with --dtype bfloat16 on the cpu backend: round matmul inputs to bf16 and use the CPU's "
                        "bf16 dot product (AVX512_BF16) where present; faster prefill/scoring, not float32-exact")
    p.add_argument("-t", "--threads", type=int, default=None,
                   help="CPU threads for the cpu backend (default: TINYGPT_NUM_THREADS, else OMP_NUM_THREADS, "
                        "else one per physical core this process may use)")
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
    g.add_argument("-p", "--prompt", dest="prompt_opt", default=None, metavar="TEXT",
                   help="the prompt, as an option (llama.cpp)")
    g.add_argument("-f", "--file", default=None, metavar="FILE",
                   help="prompts from FILE: a one-line file is one prompt (llama.cpp's -f; the text streams to "
                        "stdout); several lines are one prompt each, and FILE.jsonl holds one JSON object per line "
                        "({\"prompt\": ..., plus any option}): these run as one batch and print JSONL, one result "
                        "per line")
    g.add_argument("--prompt-file", default=None, metavar="FILE",
                   help="the whole of FILE is one prompt (a multi-line prompt), one trailing newline dropped")
    _add_model_args(g)
    g.add_argument("-n", "--max-new-tokens", "--n-predict", "--predict", "--max-tokens", type=int, default=128,
                   dest="max_new_tokens", metavar="N",
                   help="tokens to generate (default 128); -1 = until <|endoftext|> or the context is full (with "
                        "--context-overflow slide: at most one context's worth)")
    g.add_argument("--temperature", "--temp", type=float, default=1.0, help="0 = greedy; default 1.0")
    g.add_argument("--greedy", action="store_true", help="same as --temperature 0")
    g.add_argument("--top-k", type=int, default=0, help="keep the K most likely tokens (0 or -1 = off, default)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1] (1 = off, default)")
    g.add_argument("--min-p", type=float, default=0.0,
                   help="drop tokens less likely than P times the most likely one (0 = off, default; llama.cpp's "
                        "default is 0.05)")
    g.add_argument("--typical", "--typical-p", type=float, default=1.0, dest="typical_p", metavar="P",
                   help="locally typical sampling mass in (0, 1] (1 = off, default)")
    g.add_argument("--repeat-penalty", "--repetition-penalty", type=float, default=1.0, dest="repeat_penalty",
                   help="CTRL/HF repetition penalty on the last --repeat-last-n tokens (1 = off, default)")
    g.add_argument("--repeat-last-n", type=int, default=-1, metavar="N",
                   help="tokens the repetition penalty looks back on: -1 = prompt and output (HF, default), 0 = "
                        "none, N = last N (llama.cpp's default is 64)")
    g.add_argument("--presence-penalty", type=float, default=0.0,
                   help="OpenAI: subtract from the logit of every token already generated, in [-2, 2] (0 = off)")
    g.add_argument("--frequency-penalty", type=float, default=0.0,
                   help="OpenAI: subtract F x (times the token was generated) from its logit, in [-2, 2] (0 = off)")
    g.add_argument("--logit-bias", type=_logit_bias, action="append", default=[], metavar="ID(+|-)BIAS",
                   help="add BIAS to token ID's logit, e.g. 15043+1 or 50256-inf (ban); repeatable")
    g.add_argument("-s", "--seed", type=int, default=None,
                   help="random seed (same seed, same text); default or -1: random")
    g.add_argument("--stop", action="append", default=[], metavar="STR",
                   help="stop when STR is generated (not printed); repeatable")
    g.add_argument("--ignore-eos", action="store_true", help="keep going past <|endoftext|>")
    g.add_argument("--allow-special", action="store_true",
                   help="a literal <|endoftext|> in the prompt is the special token 50256 (default: plain text)")
    g.add_argument("--context-overflow", choices=["error", "slide"], default="error",
                   help="prompt + new tokens beyond the context: error (default) or slide (drop the oldest "
                        "quarter of the window and re-read the rest)")
    g.add_argument("--no-stream", action="store_true", help="print the text once at the end")
    g.add_argument("--timings", action="store_true", help="print prefill and decode tokens/s to stderr")
    g.add_argument("-v", "--verbose", action="store_true",
                   help="print model, backend, dtype, seed and the sampling settings to stderr")
    g.epilog = ("Sampling order (transformers'): logit bias -> repetition penalty -> presence/frequency penalties -> "
                "temperature -> top-k -> top-p -> min-p -> typical -> sample. llama.cpp applies temperature last, "
                "so the same flags can keep a different set of tokens there.")

    c = sub.add_parser("convert", help="write a checkpoint in tinygpt's memory-mappable safetensors layout",
                       description="Convert SRC (hub name, HF directory or tinygpt file) to DST: a .safetensors "
                                   "file, or a directory that gets model.safetensors. The vocabulary is copied beside it.")
    c.add_argument("src")
    c.add_argument("dst")
    c.add_argument("--dtype", type=_dtype, default=None, metavar="DTYPE",
                   help=f"matrix dtype to store (default: as in SRC): {_DTYPE_HELP}")
    c.add_argument("--offline", action="store_true", default=None, help="never download")
    c.add_argument("--cache-dir", default=None)

    i = sub.add_parser("info", help="version, backends (with reasons when unavailable), build facts; "
                                    "with -m, the model's config")
    i.add_argument("-m", "--model", default=None, help="also describe this model (local path or cached hub name)")
    i.add_argument("--json", action="store_true", help="machine-readable output")

    t = sub.add_parser("tokenize", help="print GPT-2 token ids of TEXT (or decode ids)")
    t.add_argument("text", nargs="?", default=None,
                   help="text; '-' or omitted with piped stdin reads stdin (every byte of it, newlines included)")
    t.add_argument("-m", "--model", default=None, help="take the vocabulary from this model (default: gpt2)")
    t.add_argument("--decode", action="store_true",
                   help="TEXT is token ids: a JSON list ([464, 3290]) or numbers separated by spaces or commas; "
                        "print the text")
    t.add_argument("--allow-special", action="store_true", help="map a literal <|endoftext|> to id 50256")
    t.add_argument("--offline", action="store_true", default=None)

    pp = sub.add_parser("perplexity", help="strided perplexity of text files (nll, bits per byte, KL vs a base)",
                        description="Score every token of each FILE once, with as much left context as the window "
                                    "allows: windows of CONTEXT tokens advance by STRIDE; only not-yet-scored "
                                    "tokens are targets. Several files are scored independently and summed.")
    _add_model_args(pp)
    pp.add_argument("-f", "--file", dest="files", action="extend", nargs="+", required=True, metavar="FILE",
                    help="UTF-8 text file ('-' = stdin); repeatable")
    pp.add_argument("--context", type=int, default=None, help="window length in tokens (default: the model's n_ctx)")
    pp.add_argument("--stride", type=int, default=None,
                    help="new tokens scored per window, 1..context (default context // 2); the least left context "
                         "of a token after the first window is context - stride + 1")
    pp.add_argument("--no-eot-prefix", action="store_true",
                    help="do not condition the first token on <|endoftext|> (it is then not scored)")
    pp.add_argument("--kl-base", default=None, metavar="MODEL_OR_DTYPE",
                    help="compare against a base: a dtype (float32, float16, bfloat16, int8: this model loaded so) "
                         "or another model; adds mean KL(base || model), delta perplexity, top-1 agreement")
    pp.add_argument("--shard", default=None, metavar="I/N",
                    help="score only the I-th (0-based) of N runs of each file's windows; the N results add up to "
                         "the unsharded one (add the JSON sums)")
    pp.add_argument("--json", action="store_true", help="print one JSON object (per file and total)")
    pp.add_argument("-q", "--quiet", action="store_true", help="no progress bar (it is drawn only on a terminal)")

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


_MAX_INPUT = 64 << 20  # bytes read from a prompt file or stdin: far beyond any context, and bounded


def _read_text(path: str | None) -> str:
    """A file's text (None or '-': stdin's), at most _MAX_INPUT bytes, decoded as UTF-8."""
    what = "stdin" if path in (None, "-") else f"prompt file {path!r}"
    try:
        if path in (None, "-"):
            data = sys.stdin.buffer.read(_MAX_INPUT + 1)
        else:
            with open(path, "rb") as f:
                data = f.read(_MAX_INPUT + 1)
    except OSError as e:
        raise TinyGPTError(f"cannot read {what}: {e.strerror or e}") from None
    if len(data) > _MAX_INPUT:
        raise TinyGPTError(f"{what} is larger than {_MAX_INPUT >> 20} MiB; a GPT-2 context is 1024 tokens")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TinyGPTError(f"{what} is not UTF-8 text (byte {e.start})") from None


def _batch_requests(a) -> list | None:
    """-f FILE as a batch: [(prompt, per-prompt options)], or None when FILE is one prompt."""
    if a.file is None:
        return None
    text = _read_text(a.file)
    if a.file.endswith(".jsonl"):
        reqs = []
        for no, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise TinyGPTError(f"{a.file}:{no}: not JSON ({e})") from None
            if isinstance(obj, str):
                obj = {"prompt": obj}
            if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), (str, list)):
                raise TinyGPTError(f"{a.file}:{no}: expected a string or an object with a \"prompt\" string or ids")
            reqs.append((obj.pop("prompt"), obj))
        return reqs
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return [(ln, {}) for ln in lines] if len(lines) > 1 else None


def _prompt(a) -> str:
    given = [x for x in (a.prompt, a.prompt_opt, a.file, a.prompt_file) if x is not None]
    if len(given) > 1:
        raise TinyGPTError("give the prompt once: PROMPT, -p TEXT, -f FILE or --prompt-file FILE")
    if a.file is not None or a.prompt_file is not None:
        text = _read_text(a.file if a.file is not None else a.prompt_file)
        return text[:-1] if text.endswith("\n") else text  # as llama.cpp's -f: editors end files with one
    prompt = a.prompt if a.prompt is not None else a.prompt_opt
    if prompt == "-" or (prompt is None and not sys.stdin.isatty()):
        prompt = _read_text("-")
    return prompt or ""


def _generate_batch(a, model, batch, opts) -> int:
    """Every prompt of the file in one batch; one JSON line per sequence, in file order."""
    reqs = [(p, {**opts, **o}) for p, o in batch]
    run = model.run_batch(reqs)
    for _ in run:
        pass
    i = 0
    for p_index, (_, o) in enumerate(reqs):
        for j in range(o.get("n", 1)):
            r = run.results[i]
            sys.stdout.write(json.dumps({"index": p_index, "sample": j, "text": r.text, "tokens": r.tokens,
                                         "finish_reason": r.finish_reason, "seed": r.seed}, ensure_ascii=False) + "\n")
            i += 1
    sys.stdout.flush()
    if a.timings:
        steps = max(r.timings.decode_steps for r in run.results) if run.results else 0
        secs = max(r.timings.decode_s for r in run.results) if run.results else 0.0
        toks = sum(r.timings.decode_steps for r in run.results)
        print(f"batch: {len(run.results)} sequences, {steps} steps, decode {toks} tokens in {secs * 1e3:.1f} ms "
              f"({toks / secs if secs else 0.0:.1f} tok/s aggregate) [{model.backend_name}, {model.dtype}]",
              file=sys.stderr)
    return 0


def _cmd_generate(a) -> int:
    from .model import load
    batch = _batch_requests(a)
    prompt = "" if batch is not None else _prompt(a)
    if batch is not None and any(x is not None for x in (a.prompt, a.prompt_opt, a.prompt_file)):
        raise TinyGPTError("give the prompt once: PROMPT, -p TEXT, -f FILE or --prompt-file FILE")
    if "<|endoftext|>" in prompt and not a.allow_special:
        print("tinygpt: note: <|endoftext|> in the prompt is plain text; --allow-special makes it token 50256",
              file=sys.stderr)
    progress = _progress_printer() if sys.stderr.isatty() else None
    model = load(a.model, a.backend, dtype=a.dtype, threads=a.threads, offline=a.offline, cache_dir=a.cache_dir,
                 revision=a.revision, progress=progress, bf16_activations=a.bf16_activations)
    bias = {}
    for tok, b in a.logit_bias:
        bias[tok] = bias.get(tok, 0.0) + b  # repeated: they add up
    opts = dict(max_new_tokens=a.max_new_tokens, temperature=0.0 if a.greedy else a.temperature, top_k=a.top_k,
                top_p=a.top_p, min_p=a.min_p, typical_p=a.typical_p, repeat_penalty=a.repeat_penalty,
                repeat_last_n=a.repeat_last_n, presence_penalty=a.presence_penalty,
                frequency_penalty=a.frequency_penalty, logit_bias=bias, seed=a.seed, stop=a.stop,
                ignore_eos=a.ignore_eos, context_overflow=a.context_overflow,
                allowed_special="all" if a.allow_special else ())
    if batch is not None:
        return _generate_batch(a, model, batch, opts)
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
        shown = {k: v for k, v in opts.items() if k != "seed" and (k not in ("stop", "logit_bias") or v)}
        print("sampling: " + ", ".join(f"{k}={v}" for k, v in shown.items()), file=sys.stderr)
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
        from .gpt2 import weight_shapes
        from .weights import load_checkpoint
        ck = load_checkpoint(resolve_model(a.model, offline=True))
        info["model"] = {"path": str(ck.path), "format": ck.source, "dtype": ck.dtype, **ck.config.to_dict(),
                         "parameters": int(sum(ck.tensors[n].size for n in weight_shapes(ck.config))),
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
    text = a.text
    if text == "-" or (text is None and not sys.stdin.isatty()):
        text = _read_text("-")
    elif text is None:
        raise TinyGPTError("give TEXT, or '-' (or a pipe) to read stdin")
    if a.decode:
        ids = _parse_ids(text)
        try:
            out = tok.decode(ids)
        except ValueError as e:
            raise TinyGPTError(str(e)) from None
        print(out)  # outside the try: an unencodable output is main's UnicodeEncodeError, not a decode error
    else:
        ids = tok.encode(text, allowed_special="all" if a.allow_special else ())
        print(" ".join(map(str, ids)))
    return 0


def _parse_ids(text: str) -> list[int]:
    """Token ids as Python/JSON prints them ([464, 3290]; llama-tokenize --ids; {"tokens": [...]}) or separated
    by spaces or commas."""
    bad = TinyGPTError("--decode expects token ids: a JSON list like [464, 3290] or integers separated by spaces "
                       f"or commas, got {text.strip()[:40]!r}")
    s = text.strip()
    if s[:1] in "[{" and s:
        try:
            v = json.loads(s)
        except ValueError:
            raise bad from None
        v = v.get("tokens") if isinstance(v, dict) else v
        if not isinstance(v, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
            raise bad
        return v
    try:
        return [int(x) for x in s.replace(",", " ").split()]
    except ValueError:
        raise bad from None


def _cmd_perplexity(a) -> int:
    from .model import load
    from .scoring import check_window
    shard = None
    if a.shard is not None:
        parts = a.shard.split("/")
        if len(parts) != 2 or not all(p.isdigit() for p in parts) or not int(parts[0]) < int(parts[1]):
            raise TinyGPTError(f"--shard expects I/N with 0 <= I < N, got {a.shard!r}")
        shard = (int(parts[0]), int(parts[1]))
    texts = [(f, _read_text(f)) for f in a.files]  # read (and reject) every file before loading a model
    for f, text in texts:
        if not text:
            raise TinyGPTError(f"{f} is empty: nothing to score")
    tty = sys.stderr.isatty() and not a.quiet
    model = load(a.model, a.backend, dtype=a.dtype, threads=a.threads, offline=a.offline, cache_dir=a.cache_dir,
                 revision=a.revision, progress=_progress_printer() if tty else None,
                 bf16_activations=a.bf16_activations)
    check_window(model, a.context, a.stride)
    base = None
    if a.kl_base is not None:
        if a.kl_base.lower() in dtypes.NAMES or a.kl_base.lower() in dtypes.ALIASES:
            base = load(a.model, a.backend, dtype=_dtype(a.kl_base), threads=a.threads, offline=a.offline,
                        cache_dir=a.cache_dir, revision=a.revision)
        else:
            base = load(a.kl_base, a.backend, threads=a.threads, offline=a.offline, cache_dir=a.cache_dir)
    results = []
    for name, text in texts:
        bar = None
        if tty:
            last = [0.0]

            def bar(done, total, name=name):
                now = time.monotonic()
                if now - last[0] < 0.2 and done != total:
                    return
                last[0] = now
                pct = 100.0 * done / total
                sys.stderr.write(f"\r{name[-28:]:<28} [{'#' * int(pct / 4):<25}] {pct:5.1f}% of {total} tokens")
                if done == total:
                    sys.stderr.write("\n")
                sys.stderr.flush()
        results.append(model.perplexity(text, stride=a.stride, context=a.context, prefix_eot=not a.no_eot_prefix,
                                        kl_base=base, shard=shard, progress=bar))
    total = sum(results)
    context, stride = check_window(model, a.context, a.stride)
    if a.json:
        print(json.dumps({"model": a.model, "dtype": model.dtype, "backend": model.backend_name, "context": context,
                          "stride": stride, "prefix_eot": not a.no_eot_prefix, "kl_base": a.kl_base, "shard": shard,
                          "files": [dict(file=n, **r.to_dict()) for (n, _), r in zip(texts, results)],
                          "total": total.to_dict()}, indent=2))
        return 0
    rows = list(zip([n for n, _ in texts], results)) + ([("total", total)] if len(results) > 1 else [])
    for name, r in rows:
        line = (f"{name}: perplexity {r.perplexity:.4f} +/- {r.perplexity_stderr:.4f}, bits/byte "
                f"{r.bits_per_byte:.4f}, nll_sum {r.nll_sum:.6f} over {r.n_tokens} tokens ({r.n_bytes} bytes), "
                f"{r.tokens_per_s:.1f} tok/s")
        if r.kl_sum is not None:
            line += (f"; vs {a.kl_base}: mean KL {r.kl_mean:.6g}, delta perplexity {r.delta_perplexity:+.4f}, "
                     f"top-1 agreement {100 * r.top1_agreement:.2f}%")
        print(line)
    print(f"[{model.backend_name}, {model.dtype}, context {context}, stride {stride}]", file=sys.stderr)
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
                 revision=a.revision, progress=progress, bf16_activations=a.bf16_activations)
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
    if sys.stderr is None:  # `2>&-`: nowhere to report anything
        sys.stderr = open(os.devnull, "w")
    args = build_parser().parse_args(argv)
    # huggingface_hub logs its retries as warnings on stderr; the CLI reports one line per failure instead
    os.environ.setdefault("HF_HUB_VERBOSITY", "error")
    try:
        if sys.stdout is None:  # `>&-`
            raise TinyGPTError("standard output is closed; redirect it to a file or /dev/null instead")
        return {"generate": _cmd_generate, "convert": _cmd_convert, "info": _cmd_info,
                "tokenize": _cmd_tokenize, "perplexity": _cmd_perplexity, "serve": _cmd_serve}[args.cmd](args)
    except TinyGPTError as e:
        _error(str(e))
        return 1
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `| head`: the reader has what it wanted
        _silence_stdout()
        return 0
    except UnicodeEncodeError as e:
        enc = getattr(sys.stdout, "encoding", None) or e.encoding
        _silence_stdout()
        _error(f"the output encoding ({enc}) cannot represent the text; use a UTF-8 locale or set "
               "PYTHONIOENCODING=utf-8")
        return 1
    except OSError as e:
        if e.errno in (errno.EBADF, errno.EPIPE, errno.ENOSPC, errno.EIO) and e.filename is None:
            _silence_stdout()  # the write to stdout failed (closed, full disk, gone terminal)
            _error(f"cannot write the output: {e.strerror or e}")
            return 1
        raise


def _error(msg: str) -> None:
    line = "tinygpt: error: " + " ".join(str(msg).split())  # one line, whatever the message holds
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def _silence_stdout() -> None:
    """Point fd 1 at /dev/null so the interpreter's final flush of a broken stdout prints no traceback."""
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, 1)
        os.close(fd)
    except OSError:
        pass


if __name__ == "__main__":
    raise SystemExit(main())
