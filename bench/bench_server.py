"""Load on `tinygpt serve` over loopback: C concurrent streaming clients (default 16), 64-token prompts, 128 tokens
each (ignore_eos, seeded sampling), against one client alone on the same server in the same run.

Reports (extra_info, or printed when run as a script): aggregate generated tokens/s for C clients and for one,
their ratio, p50/p99 time to first token, median per-stream decode tokens/s, and the HTTP layer's cost on one stream:
its decode tokens/s against Model.stream in process on the same weights (same run, same threads).

The server is a separate process (`python -m tinygpt serve`), so the client threads do not share its GIL.
    pytest bench/bench_server.py --benchmark-only            (124M random weights; TINYGPT_BENCH_SIZES)
    python bench/bench_server.py -m MODEL [-t THREADS] [--clients 16] [--new 128] [--prompt-len 64]
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "python"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, model, threads=None, max_batch=16, dtype=None):
        self.port = _free_port()
        cmd = [sys.executable, "-m", "tinygpt", "serve", "-m", str(model), "--port", str(self.port),
               "--model-name", "bench", "--max-batch", str(max_batch)]
        if threads:
            cmd += ["-t", str(threads)]
        if dtype:
            cmd += ["--dtype", dtype]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent / "python"),
                                                            os.environ.get("PYTHONPATH", "")])}
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        t0 = time.monotonic()
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                c.request("GET", "/health")
                if c.getresponse().status == 200:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() - t0 > 120:
                self.close()
                raise RuntimeError("server did not start: " + self.proc.stderr.read().decode()[-2000:])
            time.sleep(0.2)

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def stream_once(port, prompt, n_new, seed):
    """One streamed completion: (time to first token, decode tokens/s after it, tokens, total s)."""
    body = json.dumps({"model": "bench", "prompt": prompt, "max_tokens": n_new, "seed": seed, "ignore_eos": True,
                       "stream": True, "stream_options": {"include_usage": True}})
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    c.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {r.read()[:300]!r}")
    t_first, tokens = None, 0
    for line in r:
        if line.startswith(b"data: [DONE]"):
            break
        if not line.startswith(b"data: "):
            continue
        ev = json.loads(line[6:])
        if t_first is None and any(ch["text"] for ch in ev["choices"]):
            t_first = time.perf_counter()
        if ev.get("usage"):
            tokens = ev["usage"]["completion_tokens"]
    t_end = time.perf_counter()
    c.close()
    decode = (tokens - 1) / (t_end - t_first) if tokens > 1 and t_end > t_first else 0.0
    return t_first - t0, decode, tokens, t_end - t0


def load_run(port, prompts, n_new, clients):
    out, lock = [], threading.Lock()

    def client(i):
        r = stream_once(port, prompts[i % len(prompts)], n_new, seed=i)
        with lock:
            out.append(r)
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ttft = np.array([r[0] for r in out])
    return {"clients": clients, "tokens": int(sum(r[2] for r in out)), "wall_s": round(wall, 3),
            "agg_tok_s": round(sum(r[2] for r in out) / wall, 1),
            "ttft_p50_ms": round(float(np.percentile(ttft, 50)) * 1e3, 1),
            "ttft_p99_ms": round(float(np.percentile(ttft, 99)) * 1e3, 1),
            "stream_decode_tok_s_median": round(float(np.median([r[1] for r in out])), 1)}


def in_process_decode(model, prompt_ids, n_new, seed=0):
    s = model.stream(prompt_ids, max_new_tokens=n_new, seed=seed, ignore_eos=True)
    for _ in s:
        pass
    return s.result.timings.decode_tok_s


def run(model_path, threads=None, clients=16, n_new=128, prompt_len=64, dtype=None, max_batch=16):
    import tinygpt
    rng = np.random.default_rng(0)
    prompts = [[int(x) for x in rng.integers(0, 50000, prompt_len)] for _ in range(clients)]
    srv = ServerProcess(model_path, threads, max_batch=max(max_batch, clients), dtype=dtype)
    try:
        stream_once(srv.port, prompts[0], 8, 0)  # warm-up
        one = load_run(srv.port, prompts, n_new, 1)
        many = load_run(srv.port, prompts, n_new, clients)
        one_again = load_run(srv.port, prompts, n_new, 1)
    finally:
        srv.close()
    # the reference runs after the server has exited, so both have the cores to themselves
    model = tinygpt.load(model_path, dtype=dtype, threads=threads)
    in_process_decode(model, prompts[0], 8)
    ref = float(np.median([in_process_decode(model, prompts[0], n_new, seed=i) for i in range(3)]))
    http_one = float(np.median([one["stream_decode_tok_s_median"], one_again["stream_decode_tok_s_median"]]))
    return {"one": one, "many": many, "one_again": one_again,
            "agg_ratio_many_vs_one": round(many["agg_tok_s"] / one["agg_tok_s"], 2),
            "in_process_decode_tok_s": round(ref, 1), "http_single_stream_decode_tok_s": round(http_one, 1),
            "http_overhead_pct": round(100 * (ref / http_one - 1), 1) if http_one else None}


def bench_server_load(benchmark, model_dir):
    from conftest import bench_sizes
    size = bench_sizes()[0]
    threads = int(os.environ["TINYGPT_NUM_THREADS"]) if os.environ.get("TINYGPT_NUM_THREADS") else None
    res = {}
    benchmark.pedantic(lambda: res.update(run(model_dir(size), threads)), rounds=1, iterations=1)
    benchmark.extra_info.update(size=size, threads=threads or "all cores", **{
        k: v for k, v in res.items() if not isinstance(v, dict)},
        **{f"{k}_{m}": v for k in ("one", "many") for m, v in res[k].items()})


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("-t", "--threads", type=int, default=None)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--prompt-len", type=int, default=64)
    a = ap.parse_args()
    print(json.dumps(run(a.model, a.threads, a.clients, a.new, a.prompt_len, a.dtype), indent=2))


if __name__ == "__main__":
    main()
