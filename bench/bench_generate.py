"""End-to-end GPT-2 generation at real shapes (random weights): batch 1, a 64-token prompt, 128 greedy new
tokens; prefill and decode tokens/s reported separately (extra_info), per backend x weight dtype x size; peak
RSS of a whole CLI run against weights + KV cache; and the peers in the same run when installed: Hugging Face
transformers (torch, CPU or GPU) and llama.cpp (llama-cpp-python, GGUF written by ../shared/peers/to_gguf.py).

bench_round_robin is the comparison to quote: every runner (tinygpt per backend and dtype, and each peer) is
loaded first, then each round runs every runner once, in turn, so slow drifts of a shared host hit all alike.
Greedy steps on the cpu backend screen the LM head (forward_argmax); "tinygpt cpu float32 full-head" is the same
model with the screen off (TINYGPT_GREEDY_SCREEN=0), i.e. the speed of a sampled step, which needs every logit.
"""
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import tinygpt
from conftest import backend_params, bench_sizes, run_pedantic

PROMPT = [int(x) for x in np.random.default_rng(0).integers(0, 50000, 64)]
N_NEW = 128
PEERS = Path(__file__).resolve().parent.parent.parent / "shared" / "peers"
DTYPES = ["float32", "float16", "bfloat16", "int8"]
_models: dict = {}


def load(model_dir, size, backend, dtype):
    key = (size, backend, dtype)
    if key not in _models:
        _models.clear()  # keep one model resident at a time
        _models[key] = tinygpt.load(model_dir(size), backend=backend, dtype=dtype)
    return _models[key]


@pytest.mark.parametrize("size", bench_sizes())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", backend_params())
def bench_generate(benchmark, model_dir, backend, dtype, size):
    if backend == "numpy" and dtype != "float32":
        pytest.skip("numpy computes in float32 only")
    if backend == "cuda" and dtype == "int8":
        pytest.skip("int8 weights are cpu-only")
    once, res = tinygpt_runner(load(model_dir, size, backend, dtype)), []
    run_pedantic(benchmark, lambda: res.append(once()))
    benchmark.extra_info.update(backend=backend, dtype=dtype, size=size, **medians(res[1:]),
                                threads=os.environ.get("TINYGPT_NUM_THREADS", "all cores"))


@pytest.mark.parametrize("T", [512])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("backend", backend_params(include_numpy=False))
def bench_prefill_long(benchmark, model_dir, backend, dtype, T):
    m = load(model_dir, "124M", backend, dtype)
    ids = np.random.default_rng(1).integers(0, 50000, T).astype(np.int32)
    run_pedantic(benchmark, lambda: m.backend.new_sequence().forward(ids))
    benchmark.extra_info.update(backend=backend, dtype=dtype, T=T,
                                prefill_tok_s=round(T / benchmark.stats.stats.median, 1))


_HWM = ("import re; print(int(re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)) * 1024)")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("backend", backend_params())
def bench_peak_rss(benchmark, model_dir, tmp_path_factory, backend, dtype):
    """Peak RSS (VmHWM: ru_maxrss would carry pytest's own peak across exec) of a whole process that loads a
    converted (memory-mapped) model and generates: must stay <= weights + KV cache + 15%, interpreter included."""
    if backend == "numpy" and dtype != "float32":
        pytest.skip("numpy computes in float32 only")
    from tinygpt.weights import load_checkpoint, save_tinygpt
    conv = tmp_path_factory.mktemp("rss") / f"gpt2-{dtype}"
    save_tinygpt(load_checkpoint(model_dir("124M")), conv, dtype)
    ck = load_checkpoint(conv)
    c = ck.config
    kv = 2 * c.n_layer * c.n_ctx * c.n_embd * 4  # the preallocated cache
    script = ("import tinygpt, sys; m = tinygpt.load(sys.argv[1], backend=sys.argv[2]); "
              "m.generate(list(range(64)), max_new_tokens=128, temperature=0, ignore_eos=True); " + _HWM)
    out = {}

    def run():
        r = subprocess.run([sys.executable, "-c", script, str(conv), backend], capture_output=True, text=True, check=True)
        out["rss"] = int(r.stdout.strip())
    run_pedantic(benchmark, run, rounds=1)
    base = subprocess.run([sys.executable, "-c", "import tinygpt, numpy; " + _HWM], capture_output=True, text=True,
                          check=True)
    interp = int(base.stdout.strip())
    budget = (ck.nbytes + kv) * 1.15
    benchmark.extra_info.update(backend=backend, dtype=dtype, peak_rss_mb=round(out["rss"] / 2**20, 1),
                                interpreter_mb=round(interp / 2**20, 1), weights_mb=round(ck.nbytes / 2**20, 1),
                                budget_mb=round(budget / 2**20, 1))
    assert interp < out["rss"] <= budget, f"peak RSS {out['rss'] / 2**20:.0f} MiB, budget {budget / 2**20:.0f} MiB"


# -- runners: () -> (prefill tok/s, decode tok/s, first tokens) ---------------------------------------
def tinygpt_runner(m):
    def once():
        r = m.generate_result(PROMPT, max_new_tokens=N_NEW, temperature=0, ignore_eos=True)
        return r.timings.prefill_tok_s, r.timings.decode_tok_s, r.tokens[:8]
    return once


def transformers_runner(path, device, dtype):
    import torch
    import transformers
    if device == "cpu":
        torch.set_num_threads(int(os.environ.get("TINYGPT_NUM_THREADS", os.cpu_count())))
    m = transformers.GPT2LMHeadModel.from_pretrained(str(path), dtype=getattr(torch, dtype)).to(device).eval()
    ids = torch.tensor([PROMPT], device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def once():
        with torch.inference_mode():
            sync()
            t0 = time.perf_counter()
            out = m(ids, use_cache=True)
            tok = out.logits[:, -1].argmax(-1, keepdim=True)
            sync()
            t1 = time.perf_counter()
            past, toks = out.past_key_values, [int(tok)]
            for _ in range(N_NEW - 1):
                out = m(tok, past_key_values=past, use_cache=True)
                past, tok = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
                toks.append(int(tok))
            sync()
            t2 = time.perf_counter()
        return 64 / (t1 - t0), (N_NEW - 1) / (t2 - t1), toks[:8]
    return once


def llamacpp_runner(model_dir, ftype):
    import llama_cpp
    if not (PEERS / "to_gguf.py").is_file():
        pytest.skip("GGUF writer ../shared/peers/to_gguf.py not found beside the checkout")
    gguf = model_dir / f"gguf-{ftype}.gguf"
    if not gguf.is_file():
        subprocess.run([sys.executable, str(PEERS / "to_gguf.py"), str(model_dir), "--ftype", ftype], check=True,
                       capture_output=True)
    threads = int(os.environ.get("TINYGPT_NUM_THREADS", os.cpu_count()))
    llm = llama_cpp.Llama(str(gguf), n_ctx=1024, n_threads=threads, n_threads_batch=threads, n_batch=512,
                          verbose=False)

    def last():  # logits of the last evaluated position (llama.cpp keeps only that row without logits_all)
        return int(np.argmax(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))))

    def once():
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(PROMPT)
        tok = last()
        t1 = time.perf_counter()
        toks = [tok]
        for _ in range(N_NEW - 1):
            llm.eval([tok])
            tok = last()
            toks.append(tok)
        t2 = time.perf_counter()
        return 64 / (t1 - t0), (N_NEW - 1) / (t2 - t1), toks[:8]
    return once


def medians(res):
    return dict(prefill_tok_s=round(float(np.median([x[0] for x in res])), 1),
                decode_tok_s=round(float(np.median([x[1] for x in res])), 1), first_tokens=res[0][2])


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def bench_peer_transformers(benchmark, model_dir, device, dtype):
    torch = pytest.importorskip("torch", reason="peer not installed: pip install torch transformers")
    pytest.importorskip("transformers", reason="peer not installed: pip install transformers")
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    if device == "cpu" and dtype != "float32":
        pytest.skip("transformers on CPU is benchmarked in float32")
    once, res = transformers_runner(model_dir("124M"), device, dtype), []
    run_pedantic(benchmark, lambda: res.append(once()))
    benchmark.extra_info.update(peer="transformers", device=device, dtype=dtype, size="124M", **medians(res[1:]))


@pytest.mark.parametrize("ftype", ["f32", "f16", "q8_0"])
def bench_peer_llamacpp(benchmark, model_dir, ftype):
    pytest.importorskip("llama_cpp", reason="peer not installed: pip install llama-cpp-python")
    once, res = llamacpp_runner(model_dir("124M"), ftype), []
    run_pedantic(benchmark, lambda: res.append(once()))
    benchmark.extra_info.update(peer="llama.cpp", ftype=ftype, size="124M",
                                threads=int(os.environ.get("TINYGPT_NUM_THREADS", os.cpu_count())), **medians(res[1:]))


def bench_round_robin(benchmark, model_dir):
    """All runners interleaved, ROUNDS passes after one warm-up pass; medians per runner in extra_info."""
    import importlib.util
    d = model_dir("124M")
    runners = {}
    for backend in tinygpt.available_backends():
        for dtype in (["float32"] if backend == "numpy" else [t for t in DTYPES if backend == "cpu" or t != "int8"]):
            runners[f"tinygpt {backend} {dtype}"] = tinygpt_runner(tinygpt.load(d, backend=backend, dtype=dtype))
            if backend == "cpu" and dtype == "float32":  # greedy reading the whole head, as a sampled step does
                os.environ["TINYGPT_GREEDY_SCREEN"] = "0"
                try:
                    runners["tinygpt cpu float32 full-head"] = tinygpt_runner(tinygpt.load(d, backend=backend, dtype=dtype))
                finally:
                    del os.environ["TINYGPT_GREEDY_SCREEN"]
    if importlib.util.find_spec("torch") and importlib.util.find_spec("transformers"):
        runners["transformers cpu float32"] = transformers_runner(d, "cpu", "float32")
    if importlib.util.find_spec("llama_cpp") and (PEERS / "to_gguf.py").is_file():
        for ftype in ("f32", "f16", "q8_0"):
            runners[f"llama.cpp {ftype.upper()}"] = llamacpp_runner(d, ftype)
    results = {name: [] for name in runners}

    def one_pass(keep):
        for name, once in runners.items():
            time.sleep(0.3)  # let the previous runner's spinning worker threads go idle
            r = once()
            if keep:
                results[name].append(r)
    one_pass(False)
    run_pedantic(benchmark, lambda: one_pass(True), rounds=int(os.environ.get("TINYGPT_BENCH_ROUNDS", "5")))
    benchmark.extra_info.update(round_robin={name: medians(res) for name, res in results.items()},
                                threads=os.environ.get("TINYGPT_NUM_THREADS", "all cores"))
