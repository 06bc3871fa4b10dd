"""Scoring workloads at the GPT-2 124M shape (random weights), round robin in one process so drifts of a shared
host hit every runner alike; medians per runner and same-run ratios go to extra_info.

bench_score_forward: one forward over 1024 tokens returning every position's logits (what perplexity runs):
tinygpt cpu float32 / bfloat16 / bfloat16 with bf16 activations (`Model.logits`; the last rounds matmul inputs to
bf16 as transformers' bfloat16 does, and uses vdpbf16ps on AVX512_BF16 CPUs), `Model.score` (the same forward +
float64 log-softmax, ranks), transformers float32 / bfloat16 (`model(ids).logits`), llama.cpp F32 / F16 through llama-cpp-python
(`logits_all=True`), each peer when installed.

bench_perplexity: strided perplexity (context 1024, stride 512) of TINYGPT_BENCH_PPL_TOKENS random token ids
(default 16384; the issue's figure is ~100k): `Model.perplexity`, transformers' documented strided recipe
(docs: perplexity.md, `labels` with -100 for already-scored tokens), the same recipe with `logits_to_keep` (the LM
head over target rows only, as tinygpt's windows do; where transformers has it), and the same windows through
llama-cpp-python with a float64 log-softmax of the target rows. Every runner's perplexity goes to extra_info. The HF recipe scores
other windows (it drops each window's last row and the first token), so its value differs; the random weights give
perplexities near 1e20 (mean NLL ~46 nats), where small logit differences between runtimes show. For long files:
TINYGPT_BENCH_PPL_FAMILY=float32 or bfloat16 (that dtype family's runners only), TINYGPT_BENCH_WARMUP=0 (no untimed
first pass).

bench_perplexity_peak_rss: VmHWM of a fresh process running `Model.perplexity` on a converted (mmapped) model,
against that of a process that ran one forward of one window (weights + one window's activations) + 15%.
"""
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import tinygpt
from conftest import run_pedantic

T_FWD = 1024
CONTEXT, STRIDE = 1024, 512
PEERS = Path(__file__).resolve().parent.parent.parent / "shared" / "peers"
THREADS = int(os.environ.get("TINYGPT_NUM_THREADS", os.cpu_count()))


def n_ppl_tokens() -> int:
    return int(os.environ.get("TINYGPT_BENCH_PPL_TOKENS", "16384"))


def _ids(n, seed):
    return [int(x) for x in np.random.default_rng(seed).integers(0, 50000, n)]


def _gguf(model_dir, ftype):
    gguf = model_dir / f"gguf-{ftype}.gguf"
    if not gguf.is_file():
        subprocess.run([sys.executable, str(PEERS / "to_gguf.py"), str(model_dir), "--ftype", ftype], check=True,
                       capture_output=True)
    return gguf


def _peers_available():
    import importlib.util
    hf = importlib.util.find_spec("torch") is not None and importlib.util.find_spec("transformers") is not None
    ll = importlib.util.find_spec("llama_cpp") is not None and (PEERS / "to_gguf.py").is_file()
    return hf, ll


def _hf_model(path, dtype):
    import torch
    import transformers
    torch.set_num_threads(THREADS)
    return torch, transformers.GPT2LMHeadModel.from_pretrained(str(path), dtype=getattr(torch, dtype)).eval()


def _hf_keeps_logits() -> bool:
    import inspect
    import transformers
    return "logits_to_keep" in inspect.signature(transformers.GPT2LMHeadModel.forward).parameters


def _llama(model_dir, ftype, n_ctx):
    import llama_cpp
    return llama_cpp.Llama(str(_gguf(model_dir, ftype)), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                           n_threads=THREADS, n_threads_batch=THREADS, logits_all=True, verbose=False)


def _round_robin(benchmark, runners, rounds=None, warmup=True):
    times = {k: [] for k in runners}
    values = {}
    for k, f in runners.items() if warmup else ():  # warm-up pass (also records each runner's result)
        values[k] = f()

    def one_pass():
        for k, f in runners.items():
            time.sleep(0.3)  # let the previous runner's spinning worker threads go idle
            t = time.perf_counter()
            v = f()
            times[k].append(time.perf_counter() - t)
            values.setdefault(k, v)
            del v  # else freed inside the next runner's timing
    run_pedantic(benchmark, one_pass, rounds=rounds or int(os.environ.get("TINYGPT_BENCH_ROUNDS", "5")))
    return {k: float(np.median(v)) for k, v in times.items()}, values


def bench_score_forward(benchmark, model_dir, tmp_path_factory):
    d = model_dir("124M")
    ids = _ids(T_FWD, 1)
    runners = {}
    m32 = tinygpt.load(d, backend="cpu", dtype="float32")
    m16 = tinygpt.load(d, backend="cpu", dtype="bfloat16")
    m16a = tinygpt.load(d, backend="cpu", dtype="bfloat16", bf16_activations=True)
    runners["tinygpt cpu float32"] = lambda: m32.logits(ids)
    runners["tinygpt cpu bfloat16"] = lambda: m16.logits(ids)
    runners["tinygpt cpu bfloat16 bf16-activations"] = lambda: m16a.logits(ids)
    runners["tinygpt cpu float32 Model.score"] = lambda: m32.score(ids, context=T_FWD)
    hf, ll = _peers_available()
    if hf:
        for dt in ("float32", "bfloat16"):
            torch, h = _hf_model(d, dt)
            t_ids = torch.tensor([ids])

            def run(h=h, t_ids=t_ids, torch=torch):
                with torch.inference_mode():
                    return h(t_ids).logits
            runners[f"transformers cpu {dt}"] = run
    if ll:
        for ft in ("f32", "f16"):
            llm = _llama(d, ft, T_FWD)

            def run(llm=llm):
                llm.reset()
                llm.eval(ids)
                return llm.scores[:len(ids)]
            runners[f"llama.cpp {ft.upper()}"] = run
    med, _ = _round_robin(benchmark, runners)
    base = {k: v for k, v in med.items() if not k.startswith("tinygpt")}
    benchmark.extra_info.update(
        T=T_FWD, threads=THREADS,
        tok_s={k: round(T_FWD / v, 1) for k, v in med.items()},
        ratios={k: {p: round(pv / v, 3) for p, pv in base.items()} for k, v in med.items() if k.startswith("tinygpt")})


# -- perplexity runners: () -> perplexity -----------------------------------------------------------
def _hf_windows(seq_len):
    """The documented recipe's windows: (begin, end, trg_len), trg_len = the tokens not scored before."""
    prev_end = 0
    for begin in range(0, seq_len, STRIDE):
        end = min(begin + CONTEXT, seq_len)
        yield begin, end, end - prev_end
        prev_end = end
        if end == seq_len:
            break


def hf_strided(path, ids, dtype):
    """transformers' documented recipe (docs/source/en/perplexity.md), with its num_valid_tokens weighting."""
    torch, model = _hf_model(path, dtype)
    enc = torch.tensor([ids])

    def run():
        nll_sum, n_tokens = 0.0, 0
        with torch.inference_mode():
            for begin, end, trg_len in _hf_windows(enc.size(1)):
                input_ids = enc[:, begin:end]
                target_ids = input_ids.clone()
                target_ids[:, :-trg_len] = -100
                loss = model(input_ids, labels=target_ids).loss
                n_valid = int((target_ids != -100).sum()) - target_ids.size(0)
                nll_sum += float(loss) * n_valid
                n_tokens += n_valid
        return float(np.exp(nll_sum / n_tokens))
    return run


def hf_strided_kept(path, ids, dtype):
    """The documented recipe's windows, but the LM head only over the rows that predict a target
    (`logits_to_keep`, transformers >= 4.45): the same work tinygpt's perplexity does."""
    torch, model = _hf_model(path, dtype)
    enc = torch.tensor([ids])
    F = torch.nn.functional

    def run():
        nll_sum, n_tokens = 0.0, 0
        with torch.inference_mode():
            for begin, end, trg_len in _hf_windows(enc.size(1)):
                input_ids = enc[:, begin:end]
                keep = min(trg_len + 1, input_ids.size(1))  # rows end-keep .. end-1; the last predicts nothing
                logits = model(input_ids, logits_to_keep=keep).logits[0, :-1].float()
                targets = input_ids[0, input_ids.size(1) - keep + 1:]
                nll_sum += float(F.cross_entropy(logits, targets, reduction="sum"))
                n_tokens += targets.numel()
        return float(np.exp(nll_sum / n_tokens))
    return run


def llama_strided(model_dir, ids, ftype):
    """tinygpt's windows (prefix <|endoftext|>, targets only the not-yet-scored tokens) through llama.cpp."""
    from tinygpt.scoring import plan_windows
    llm = _llama(model_dir, ftype, CONTEXT)
    seq = [50256] + ids

    def run():
        nll = 0.0
        for b, e, s in plan_windows(len(seq), CONTEXT, STRIDE):
            llm.reset()
            llm.eval(seq[b:e])
            rows = np.asarray(llm.scores[s - b:e - b], np.float64)
            rows -= rows.max(1, keepdims=True)
            lp = rows - np.log(np.exp(rows).sum(1, keepdims=True))
            nll -= lp[np.arange(e - s), seq[s + 1:e + 1]].sum()
        return float(np.exp(nll / len(ids)))
    return run


def bench_perplexity(benchmark, model_dir):
    d = model_dir("124M")
    n = n_ppl_tokens()
    ids = _ids(n, 2)
    runners, info = {}, {}
    # TINYGPT_BENCH_PPL_FAMILY=float32 or bfloat16: only that dtype family's runners (long files);
    # TINYGPT_BENCH_WARMUP=0: no untimed first pass (each runner's first timed run gives its perplexity)
    fam = os.environ.get("TINYGPT_BENCH_PPL_FAMILY", "all")
    fp32, bf16 = fam in ("all", "float32"), fam in ("all", "bfloat16")
    for dt, act16 in (("float32", False), ("bfloat16", False), ("bfloat16", True)):
        if not (fp32 if dt == "float32" else bf16):
            continue
        m = tinygpt.load(d, backend="cpu", dtype=dt, bf16_activations=act16)
        name = f"tinygpt cpu {dt}" + (" bf16-activations" if act16 else "")
        runners[name] = lambda m=m: m.perplexity(ids, context=CONTEXT, stride=STRIDE).perplexity
    hf, ll = _peers_available()
    for dt, ft, on in (("float32", "f32", fp32), ("bfloat16", "f16", bf16)):
        if hf and on:
            runners[f"transformers cpu {dt} (documented recipe)"] = hf_strided(d, ids, dt)
            if _hf_keeps_logits():
                runners[f"transformers cpu {dt} (logits_to_keep)"] = hf_strided_kept(d, ids, dt)
        if ll and on:
            runners[f"llama.cpp {ft.upper()} (logits_all, same windows)"] = llama_strided(d, ids, ft)
    med, ppl = _round_robin(benchmark, runners, rounds=int(os.environ.get("TINYGPT_BENCH_ROUNDS", "3")),
                            warmup=os.environ.get("TINYGPT_BENCH_WARMUP", "1") != "0")
    base = {k: v for k, v in med.items() if not k.startswith("tinygpt")}
    info.update(tokens=n, context=CONTEXT, stride=STRIDE, threads=THREADS,
                tok_s={k: round(n / v, 1) for k, v in med.items()}, perplexity=ppl,
                ratios={k: {p: round(pv / v, 3) for p, pv in base.items()} for k, v in med.items()
                        if k.startswith("tinygpt")})
    benchmark.extra_info.update(info)


_SCRIPT = """
import re, sys, numpy as np, tinygpt
m = tinygpt.load(sys.argv[1], backend="cpu")
ids = [int(x) for x in np.random.default_rng(2).integers(0, 50000, int(sys.argv[3]))]
if sys.argv[2] == "forward":
    m.logits(ids[:1024])
else:
    m.perplexity(ids, context=1024, stride=512)
print(int(re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)) * 1024)
"""


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def bench_perplexity_peak_rss(benchmark, model_dir, tmp_path_factory, dtype):
    """Peak RSS of perplexity over many windows against a process that ran one forward of one window (weights +
    that window's activations and logits, as the backend allocates them) + 15%."""
    from tinygpt.weights import load_checkpoint, save_tinygpt
    conv = tmp_path_factory.mktemp("rss") / f"gpt2-{dtype}"
    save_tinygpt(load_checkpoint(model_dir("124M")), conv, dtype)
    ck = load_checkpoint(conv)
    n = max(4096, min(n_ppl_tokens(), 16384))
    out = {}

    def peak(mode):
        r = subprocess.run([sys.executable, "-c", _SCRIPT, str(conv), mode, str(n)], capture_output=True, text=True,
                           check=True)
        return int(r.stdout.strip())

    def run():
        out["ppl"] = peak("perplexity")
    run_pedantic(benchmark, run, rounds=1)
    one = peak("forward")
    budget = one * 1.15
    benchmark.extra_info.update(dtype=dtype, tokens=n, peak_rss_mb=round(out["ppl"] / 2**20, 1),
                                one_window_forward_mb=round(one / 2**20, 1), weights_mb=round(ck.nbytes / 2**20, 1),
                                budget_mb=round(budget / 2**20, 1))
    assert out["ppl"] <= budget, f"peak RSS {out['ppl'] / 2**20:.0f} MiB, budget {budget / 2**20:.0f} MiB"
