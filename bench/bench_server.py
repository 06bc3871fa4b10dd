"""Load on `tinygpt serve` over loopback against llama-cpp-python's OpenAI server (`python -m llama_cpp.server`),
issue 12: C concurrent streaming clients (default 16) and one client alone, the same 64-token text prompts, 128
greedy tokens each (EOS off: tinygpt `ignore_eos`, llama.cpp a -100 logit bias on it), same threads, fp32 weights
(the same random weights, GGUF F32 for llama.cpp, written by bench_batch.gguf_file), one server at a time.

Reports (extra_info; printed as a summary, or as JSON when run as a script): aggregate completion tokens/s of each
server for C clients and for one, p50/p99 time to first token, median per-stream decode tokens/s, and the ratios
    agg_ratio_many_vs_one        tinygpt C clients / tinygpt 1 client                       (issue: >= 4)
    agg_ratio_vs_llamacpp        tinygpt C clients / llama.cpp server C clients              (issue: >= 3)
    http_overhead_pct            single-stream decode time through HTTP vs Model.stream     (issue: <= 10)
    http_overhead_vs_engine_pct  the same vs AsyncEngine.stream in process (the HTTP layer alone)
The in-process references run after both servers have exited, so every run has the cores to itself. Each server is
a separate process, so the client threads do not share its GIL. llama.cpp's server runs one request at a time; it is
started with interrupt_requests off (its default ends a running stream when another request waits) and logits_all
off (nothing here asks for prompt logprobs). A peer that is not installed is left out and named in extra_info.

    pytest bench/bench_server.py --benchmark-only            (124M random weights; figures: README "Benchmarks")
    python bench/bench_server.py -m MODEL [-t THREADS] [--clients 16] [--new 128] [--prompt-len 64]  (tinygpt only)
Env (besides conftest's TINYGPT_BENCH_SIZES, first size used): TINYGPT_NUM_THREADS (default: all CPUs, both
servers), TINYGPT_BENCH_NEW_TOKENS (default 128), TINYGPT_BENCH_CLIENTS (default 16); fewer only to check that it runs.
"""
from __future__ import annotations

import argparse
import asyncio
import http.client
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "python"))

N_NEW = int(os.environ.get("TINYGPT_BENCH_NEW_TOKENS", "128"))
CLIENTS = int(os.environ.get("TINYGPT_BENCH_CLIENTS", "16"))
PROMPT_LEN = 64
EOT = 50256


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A server command on a free loopback port (`{port}` in cmd), up once GET ready_path answers 200."""

    def __init__(self, cmd, ready_path="/health", env=None):
        self.port = _free_port()
        cmd = [str(c).replace("{port}", str(self.port)) for c in cmd]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        t0 = time.monotonic()
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                c.request("GET", ready_path)
                if c.getresponse().status == 200:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() - t0 > 300:
                self.close()
                raise RuntimeError(f"{cmd[:3]} did not start: " + self.proc.stderr.read().decode()[-2000:])
            time.sleep(0.2)

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def tinygpt_server(model, threads=None, max_batch=16, dtype=None) -> ServerProcess:
    cmd = [sys.executable, "-m", "tinygpt", "serve", "-m", str(model), "--port", "{port}", "--model-name", "bench",
           "--max-batch", str(max_batch)]
    if threads:
        cmd += ["-t", str(threads)]
    if dtype:
        cmd += ["--dtype", dtype]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent / "python"),
                                                        os.environ.get("PYTHONPATH", "")])}
    return ServerProcess(cmd, "/health", env)


def llamacpp_server(gguf, threads) -> ServerProcess:
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "bench",
           "--host", "127.0.0.1", "--port", "{port}", "--n_ctx", "1024", "--n_batch", "512",
           "--n_threads", str(threads), "--n_threads_batch", str(threads), "--logits_all", "False",
           "--interrupt_requests", "False", "--verbose", "False"]
    return ServerProcess(cmd, "/v1/models")


def tinygpt_body(prompt, n_new):
    return {"model": "bench", "prompt": prompt, "max_tokens": n_new, "temperature": 0, "ignore_eos": True,
            "stream_options": {"include_usage": True}}


def llamacpp_body(prompt, n_new):
    return {"model": "bench", "prompt": prompt, "max_tokens": n_new, "temperature": 0,
            "logit_bias": {str(EOT): -100.0}}


def stream_once(port, body):
    """One streamed completion: (time to first token, decode tokens/s after it, completion tokens, total s).
    Tokens: the usage chunk where the server sends one (tinygpt), else max_tokens when it finished for length."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    c.request("POST", "/v1/completions", body=json.dumps({**body, "stream": True}),
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {r.read()[:300]!r}")
    t_first, tokens, finish = None, None, None
    for line in r:
        if line.startswith(b"data: [DONE]"):
            break
        if not line.startswith(b"data: "):
            continue
        ev = json.loads(line[6:])
        if t_first is None and ev.get("choices"):
            t_first = time.perf_counter()
        for ch in ev.get("choices") or ():
            finish = ch.get("finish_reason") or finish
        if ev.get("usage"):
            tokens = ev["usage"]["completion_tokens"]
    t_end = time.perf_counter()
    c.close()
    if tokens is None:
        if finish != "length":
            raise RuntimeError(f"stream ended with finish_reason {finish!r} before max_tokens, no usage to count")
        tokens = body["max_tokens"]
    if t_first is None:
        raise RuntimeError("stream sent no token")
    decode = (tokens - 1) / (t_end - t_first) if tokens > 1 and t_end > t_first else 0.0
    return t_first - t0, decode, tokens, t_end - t0


def load_run(port, bodies, clients):
    """`clients` threads, client i streams bodies[i % len(bodies)] once; aggregate = all tokens / wall time."""
    out, errors, lock = [], [], threading.Lock()

    def client(i):
        try:
            r = stream_once(port, bodies[i % len(bodies)])
        except Exception as e:  # noqa: BLE001 -- re-raised below, in the caller's thread
            with lock:
                errors.append(e)
            return
        with lock:
            out.append(r)
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    ttft = np.array([r[0] for r in out])
    return {"clients": clients, "tokens": int(sum(r[2] for r in out)), "wall_s": round(wall, 3),
            "agg_tok_s": round(sum(r[2] for r in out) / wall, 1),
            "ttft_p50_ms": round(float(np.percentile(ttft, 50)) * 1e3, 1),
            "ttft_p99_ms": round(float(np.percentile(ttft, 99)) * 1e3, 1),
            "stream_decode_tok_s_median": round(float(np.median([r[1] for r in out])), 1)}


def text_prompts(tokenizer, count, length, seed=0):
    """`count` texts of exactly `length` GPT-2 tokens each, " word" tokens drawn at random: llama-cpp-python's
    server takes text only, and each " word" is one pre-tokenizer piece, so both servers see the same ids."""
    words = [i for i in range(EOT) if re.fullmatch(r" [a-z]{3,}", tokenizer.decode([i]))]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        text = "".join(tokenizer.decode([int(i)]) for i in rng.choice(words, length))
        if len(tokenizer.encode(text)) != length:
            raise RuntimeError(f"prompt is not {length} tokens: {text!r}")
        out.append(text)
    return out


def _rate(t_first, tokens) -> float:
    """Decode tokens/s as the HTTP client measures it: the tokens after the first over the time after it."""
    return (tokens - 1) / (time.perf_counter() - t_first)


def in_process_decode(model, prompt, n_new, runs=3):
    """Decode tokens/s of Model.stream in process, timed like the HTTP client (first piece to last), median of
    `runs` after a warm-up."""
    rates = []
    for _ in range(runs + 1):
        t_first, st = None, model.stream(prompt, max_new_tokens=n_new, temperature=0, ignore_eos=True)
        for _ in st:  # text pieces; a piece may wait for the bytes of a split character, as on the server
            t_first = t_first or time.perf_counter()
        rates.append(_rate(t_first, len(st.result.tokens)))
    return float(np.median(rates[1:]))


def engine_decode(model, prompt, n_new, runs=3):
    """The same through AsyncEngine.stream in process: the HTTP layer's cost is the difference to this."""
    from tinygpt.engine import AsyncEngine

    async def go():
        eng = AsyncEngine(model, max_batch=1)
        rates = []
        try:
            for _ in range(runs + 1):
                t_first, tokens = None, 0
                async for p in eng.stream(prompt, max_new_tokens=n_new, temperature=0, ignore_eos=True):
                    t_first = t_first or time.perf_counter()
                    tokens += len(p.tokens)
                rates.append(_rate(t_first, tokens))
        finally:
            await eng.aclose()
        return float(np.median(rates[1:]))
    return asyncio.run(go())


def run(model_path, threads=None, clients=CLIENTS, n_new=N_NEW, prompt_len=PROMPT_LEN, dtype=None, gguf=None):
    """The whole comparison; gguf=None leaves llama.cpp's server out."""
    import tinygpt
    model = tinygpt.load(model_path, dtype=dtype, threads=threads)
    # separate prompts for the warm-up and the one-client runs: llama.cpp's server reuses the cached prefix of its
    # previous prompt, so no measured request may repeat the one before it
    warm, solo, *prompts = text_prompts(model.tokenizer, clients + 2, prompt_len)
    res = {"clients": clients, "new_tokens": n_new, "prompt_tokens": prompt_len}
    del model  # the in-process runs reload after the servers, so no server competes with this process' memory

    srv = tinygpt_server(model_path, threads, max_batch=max(16, clients), dtype=dtype)
    try:
        stream_once(srv.port, tinygpt_body(warm, 8))
        res["one"] = load_run(srv.port, [tinygpt_body(solo, n_new)], 1)
        res["many"] = load_run(srv.port, [tinygpt_body(p, n_new) for p in prompts], clients)
        res["one_again"] = load_run(srv.port, [tinygpt_body(solo, n_new)], 1)
    finally:
        srv.close()
    if gguf is not None:
        srv = llamacpp_server(gguf, threads or os.cpu_count())
        try:
            stream_once(srv.port, llamacpp_body(warm, 8))
            res["llamacpp_one"] = load_run(srv.port, [llamacpp_body(solo, n_new)], 1)
            res["llamacpp_many"] = load_run(srv.port, [llamacpp_body(p, n_new) for p in prompts], clients)
        finally:
            srv.close()

    model = tinygpt.load(model_path, dtype=dtype, threads=threads)
    ids = model.tokenizer.encode(solo)
    ref, eng = in_process_decode(model, ids, n_new), engine_decode(model, ids, n_new)
    http_one = float(np.median([res["one"]["stream_decode_tok_s_median"],
                                res["one_again"]["stream_decode_tok_s_median"]]))
    res.update(agg_ratio_many_vs_one=round(res["many"]["agg_tok_s"] / res["one"]["agg_tok_s"], 2),
               in_process_decode_tok_s=round(ref, 1), engine_decode_tok_s=round(eng, 1),
               http_single_stream_decode_tok_s=round(http_one, 1),
               http_overhead_pct=round(100 * (ref / http_one - 1), 1) if http_one else None,
               http_overhead_vs_engine_pct=round(100 * (eng / http_one - 1), 1) if http_one else None)
    if gguf is not None:
        res["agg_ratio_vs_llamacpp"] = round(res["many"]["agg_tok_s"] / res["llamacpp_many"]["agg_tok_s"], 2)
        res["llamacpp_agg_ratio_many_vs_one"] = round(
            res["llamacpp_many"]["agg_tok_s"] / res["llamacpp_one"]["agg_tok_s"], 2)
    return res


def llamacpp_missing() -> str | None:
    """Why llama.cpp's server cannot run here, or None."""
    for mod in ("llama_cpp", "sse_starlette", "starlette_context", "pydantic_settings", "fastapi", "uvicorn"):
        if not importlib.util.find_spec(mod):
            return f"llama-cpp-python's server is not installed ({mod} missing): pip install '.[bench]'"
    from bench_batch import PEERS
    if not (PEERS / "to_gguf.py").is_file():
        return f"GGUF writer {PEERS / 'to_gguf.py'} not found beside the checkout"
    if not importlib.util.find_spec("gguf") or not importlib.util.find_spec("safetensors"):
        return "the GGUF writer needs the gguf and safetensors packages: pip install '.[bench]'"
    return None


def summary(res) -> str:
    lines = [f"server load: {res['clients']} clients x {res['new_tokens']} greedy tokens, "
             f"{res['prompt_tokens']}-token prompts"]
    for key, name in (("one", "tinygpt 1 client"), ("many", f"tinygpt {res['clients']} clients"),
                      ("llamacpp_one", "llama.cpp server 1 client"),
                      ("llamacpp_many", f"llama.cpp server {res['clients']} clients")):
        if key in res:
            r = res[key]
            lines.append(f"  {name:<30} {r['agg_tok_s']:>8} tok/s aggregate, TTFT p50 {r['ttft_p50_ms']} ms "
                         f"p99 {r['ttft_p99_ms']} ms, per-stream decode {r['stream_decode_tok_s_median']} tok/s")
    lines.append(f"  tinygpt {res['clients']} clients / 1 client: {res['agg_ratio_many_vs_one']} (target >= 4)")
    lines.append(f"  tinygpt / llama.cpp server, {res['clients']} clients: "
                 f"{res.get('agg_ratio_vs_llamacpp', 'not run: ' + str(res.get('llamacpp_skipped')))} (target >= 3)")
    lines.append(f"  HTTP overhead on one stream's decode: {res['http_overhead_pct']}% vs Model.stream "
                 f"(target <= 10), {res['http_overhead_vs_engine_pct']}% vs AsyncEngine.stream")
    return "\n".join(lines)


def bench_server_load(benchmark, model_dir, capsys):
    from bench_batch import gguf_file
    from conftest import bench_sizes
    size = bench_sizes()[0]
    threads = int(os.environ.get("TINYGPT_NUM_THREADS") or os.cpu_count())  # both servers get the same count
    d = model_dir(size)
    why = llamacpp_missing()
    gguf = gguf_file(d, "f32") if why is None else None
    res = {}
    benchmark.pedantic(lambda: res.update(run(d, threads, gguf=gguf)), rounds=1, iterations=1)
    if why:
        res["llamacpp_skipped"] = why
    benchmark.extra_info.update(size=size, threads=threads, **{
        k: v for k, v in res.items() if not isinstance(v, dict)},
        **{f"{k}_{m}": v for k, r in res.items() if isinstance(r, dict) for m, v in r.items()})
    with capsys.disabled():
        print("\n" + summary(res))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("-t", "--threads", type=int, default=None)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--clients", type=int, default=CLIENTS)
    ap.add_argument("--new", type=int, default=N_NEW)
    ap.add_argument("--prompt-len", type=int, default=PROMPT_LEN)
    a = ap.parse_args()
    print(json.dumps(run(a.model, a.threads, a.clients, a.new, a.prompt_len, a.dtype), indent=2))


if __name__ == "__main__":
    main()
