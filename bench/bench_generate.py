"""End-to-end GPT-2 generation at real shapes (random weights): batch 1, a 64-token prompt, 128 greedy new
tokens; prefill and decode tokens/s reported separately (extra_info), per backend x weight dtype x size; peak
RSS of a whole CLI run against weights + KV cache; and the peers in the same run when installed: Hugging Face
transformers (torch, CPU or GPU) and llama.cpp (llama-cpp-python, GGUF written by ../shared/peers/to_gguf.py).
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


def record(benchmark, results, **info):
    pre = float(np.median([r.timings.prefill_tok_s for r in results]))
    dec = float(np.median([r.timings.decode_tok_s for r in results]))
    benchmark.extra_info.update(prefill_tok_s=round(pre, 1), decode_tok_s=round(dec, 1),
                                prefill_ms=round(64 / pre * 1e3, 2), new_tokens=N_NEW,
                                first_tokens=results[0].tokens[:8], **info)


@pytest.mark.parametrize("size", bench_sizes())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", backend_params())
def bench_generate(benchmark, model_dir, backend, dtype, size):
    if backend == "numpy" and dtype != "float32":
        pytest.skip("numpy computes in float32 only")
    if backend == "cuda" and dtype == "int8":
        pytest.skip("int8 weights are cpu-only")
    m = load(model_dir, size, backend, dtype)
    results = []
    run_pedantic(benchmark, lambda: results.append(
        m.generate_result(PROMPT, max_new_tokens=N_NEW, temperature=0, ignore_eos=True)))
    record(benchmark, results[1:], backend=backend, dtype=dtype, size=size,
           threads=os.environ.get("TINYGPT_NUM_THREADS", "all cores"))


@pytest.mark.parametrize("T", [512])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("backend", backend_params(include_numpy=False))
def bench_prefill_long(benchmark, model_dir, backend, dtype, T):
    m = load(model_dir, "124M", backend, dtype)
    ids = np.random.default_rng(1).integers(0, 50000, T).astype(np.int32)
    run_pedantic(benchmark, lambda: m.backend.new_session().forward(ids))
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


# -- peers -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def bench_peer_transformers(benchmark, model_dir, device, dtype):
    torch = pytest.importorskip("torch", reason="peer not installed: pip install torch transformers")
    transformers = pytest.importorskip("transformers", reason="peer not installed: pip install transformers")
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    if device == "cpu" and dtype != "float32":
        pytest.skip("transformers on CPU is benchmarked in float32")
    if device == "cpu":
        torch.set_num_threads(int(os.environ.get("TINYGPT_NUM_THREADS", os.cpu_count())))
    size = "124M"
    m = transformers.GPT2LMHeadModel.from_pretrained(str(model_dir(size)), dtype=getattr(torch, dtype)).to(device).eval()
    ids = torch.tensor([PROMPT], device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    res = []

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
        res.append((64 / (t1 - t0), (N_NEW - 1) / (t2 - t1), toks[:8]))
    run_pedantic(benchmark, once)
    r = res[1:]
    benchmark.extra_info.update(peer="transformers", device=device, dtype=dtype, size=size,
                                prefill_tok_s=round(float(np.median([x[0] for x in r])), 1),
                                decode_tok_s=round(float(np.median([x[1] for x in r])), 1), first_tokens=r[0][2])


@pytest.mark.parametrize("ftype", ["f32", "f16", "q8_0"])
def bench_peer_llamacpp(benchmark, model_dir, ftype):
    llama_cpp = pytest.importorskip("llama_cpp", reason="peer not installed: pip install llama-cpp-python")
    if not (PEERS / "to_gguf.py").is_file():
        pytest.skip("GGUF writer ../shared/peers/to_gguf.py not found beside the checkout")
    d = model_dir("124M")
    gguf = d / f"gguf-{ftype}.gguf"
    if not gguf.is_file():
        subprocess.run([sys.executable, str(PEERS / "to_gguf.py"), str(d), "--ftype", ftype], check=True,
                       capture_output=True)
    threads = int(os.environ.get("TINYGPT_NUM_THREADS", os.cpu_count()))
    llm = llama_cpp.Llama(str(gguf), n_ctx=1024, n_threads=threads, n_threads_batch=threads, n_batch=512,
                          verbose=False)
    res = []

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
        res.append((64 / (t1 - t0), (N_NEW - 1) / (t2 - t1), toks[:8]))
    run_pedantic(benchmark, once)
    r = res[1:]
    benchmark.extra_info.update(peer="llama.cpp", ftype=ftype, size="124M", threads=threads,
                                prefill_tok_s=round(float(np.median([x[0] for x in r])), 1),
                                decode_tok_s=round(float(np.median([x[1] for x in r])), 1), first_tokens=r[0][2])
