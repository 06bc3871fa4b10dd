"""Batched decode (issue 10): 8 sequences with different 32-96-token prompts, 128 new greedy tokens each, aggregate
decode tokens/s, at real GPT-2 shapes (random weights), against the peers' own batched decode in the same run.

bench_batch_round_robin loads every runner first, then each pass runs each runner once in turn (same 8 prompts):
  tinygpt cpu float32 / bfloat16 batched      Model.generate_result(list of 8 prompts): one forward per step
  tinygpt cpu bfloat16 bf16-activations       the same with activations rounded to bf16 (vdpbf16ps on AVX512_BF16
    batched                                   CPUs), as llama.cpp's F16 rounds them to f16
  tinygpt cpu float32 one-at-a-time           the 8 prompts in 8 calls, head screen off (TINYGPT_GREEDY_SCREEN=0):
                                              the single-sequence full-head decode issue 10 takes as the baseline
  llama.cpp F32 / F16 batched [split-KV]      one llama_decode per step carrying one token of each of the 8
                                              sequence ids (llama-cpp-python's low-level API; context made with
                                              llama_init_from_model and n_seq_max, which the Llama class cannot set),
                                              with a unified KV cache and with one KV stream per sequence
  transformers cpu float32 generate           GPT2LMHeadModel.generate on the 8 prompts left-padded, greedy
Greedy tokens of both batched tinygpt runners must equal their one-at-a-time runs (asserted on every pass).
bench_batch_scaling runs B = 1, 2, 4, 8, 16 for tinygpt fp32/bf16 and llama.cpp F32/F16 (both KV modes) the same
way, and measures the host's fp32 GEMM peak (NumPy/OpenBLAS sgemm in a subprocess) in the same run, so report.py
can say where the step turns compute-bound.

Decode time is the wall time of the 127 steps after the prompt's forward, token choice included (transformers:
from its first to its last logits-processor call, which leaves out its last token choice). Aggregate decode tok/s =
all sequences' decode tokens / that time; per-sequence tok/s = aggregate / B (one-at-a-time: its own rate).
Peers that are not installed are left out and named in extra_info["skipped"] with the reason.
Run: pytest bench/bench_batch.py --benchmark-only --benchmark-json=batch.json; python bench/report.py batch.json
Env (besides conftest's): TINYGPT_BENCH_NEW_TOKENS (default 128; fewer only to check that the bench runs).
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import tinygpt
from tinygpt import backends
from conftest import ROUNDS, run_pedantic
from conftest import bench_sizes as sizes  # a bench_* name would be collected as a bench

N_NEW = int(os.environ.get("TINYGPT_BENCH_NEW_TOKENS", "128"))  # fewer only to check that the bench runs
B_MAIN = 8
SCALING_B = (1, 2, 4, 8, 16)
PEERS = Path(__file__).resolve().parent.parent.parent / "shared" / "peers"
PAD = 50256  # transformers' pad id for the left padding (GPT-2 has none; the attention mask hides it)
THREADS = int(os.environ.get("TINYGPT_NUM_THREADS") or os.cpu_count())


def prompts(B: int) -> list[list[int]]:
    """B prompts of lengths spread evenly over 32..96 (one 64-token prompt for B = 1), fixed random tokens."""
    lens = [64] if B == 1 else [32 + (64 * i) // (B - 1) for i in range(B)]
    return [[int(x) for x in np.random.default_rng(1000 * B + i).integers(0, 50000, n)] for i, n in enumerate(lens)]


def decode_flop(cfg, prompt_lens) -> float:
    """Multiply-adds x 2 of the decode steps: every matrix once per token (LM head included) plus attention's
    QK^T and PV over the cached positions; layer norms, GELU and softmax left out (under 1%)."""
    C, L = cfg.n_embd, cfg.n_layer
    per_token = 2 * (L * (3 * C * C + C * C + 2 * C * cfg.d_ff) + C * cfg.n_vocab)
    attn = sum(4 * L * C * (n + k) for n in prompt_lens for k in range(1, N_NEW))  # step k sees n + k positions
    return per_token * len(prompt_lens) * (N_NEW - 1) + attn


# -- runners: prompts -> dict(prefill_s, decode_s, decode_tokens, per_seq_tok_s, tokens) ------------------------
def _run(prefill_s, decode_s, decode_tokens, tokens, concurrent=True):
    agg = decode_tokens / decode_s
    return dict(prefill_s=prefill_s, decode_s=decode_s, decode_tokens=decode_tokens, agg_tok_s=agg,
                per_seq_tok_s=agg / len(tokens) if concurrent else agg, tokens=tokens)


def tinygpt_batched(m):
    def run(ps):
        res = m.generate_result(ps, max_new_tokens=N_NEW, temperature=0, ignore_eos=True)
        assert len({r.timings.decode_steps for r in res}) == 1, "sequences of one batch decoded unequal step counts"
        return _run(max(r.timings.prefill_s for r in res), max(r.timings.decode_s for r in res),
                    sum(r.timings.decode_steps for r in res), [r.tokens for r in res])
    return run


def tinygpt_one_at_a_time(m):
    def run(ps):
        res = [m.generate_result(p, max_new_tokens=N_NEW, temperature=0, ignore_eos=True) for p in ps]
        return _run(sum(r.timings.prefill_s for r in res), sum(r.timings.decode_s for r in res),
                    sum(r.timings.decode_steps for r in res), [r.tokens for r in res], concurrent=False)
    return run


def load_tinygpt(d, dtype, screen=None, bf16_activations=False):
    if screen is None:
        return tinygpt.load(d, backend="cpu", dtype=dtype, bf16_activations=bf16_activations)
    old = os.environ.get("TINYGPT_GREEDY_SCREEN")
    os.environ["TINYGPT_GREEDY_SCREEN"] = screen  # read when the backend is made
    try:
        return tinygpt.load(d, backend="cpu", dtype=dtype)
    finally:
        if old is None:
            del os.environ["TINYGPT_GREEDY_SCREEN"]
        else:
            os.environ["TINYGPT_GREEDY_SCREEN"] = old


def transformers_generate(path):
    import torch
    import transformers
    torch.set_num_threads(THREADS)
    m = transformers.GPT2LMHeadModel.from_pretrained(str(path), dtype=torch.float32).eval()
    m.generation_config.eos_token_id = None  # decode all 128 tokens, as the other runners (ignore_eos)
    m.generation_config.pad_token_id = PAD

    class Clock(transformers.LogitsProcessor):  # called once per forward, right after it: the step's timestamp
        def __call__(self, input_ids, scores):
            stamps.append(time.perf_counter())
            return scores
    stamps: list[float] = []

    def run(ps):
        n = max(len(p) for p in ps)
        ids = torch.tensor([[PAD] * (n - len(p)) + p for p in ps])
        mask = torch.tensor([[0] * (n - len(p)) + [1] * len(p) for p in ps])
        stamps.clear()
        with torch.inference_mode():
            t0 = time.perf_counter()
            out = m.generate(ids, attention_mask=mask, max_new_tokens=N_NEW, min_new_tokens=0, do_sample=False,
                             logits_processor=transformers.LogitsProcessorList([Clock()]))
        assert len(stamps) == N_NEW and out.shape[1] == n + N_NEW
        return _run(stamps[0] - t0, stamps[-1] - stamps[0], len(ps) * (N_NEW - 1), out[:, n:].tolist())
    return run


def gguf_file(model_dir: Path, ftype: str) -> Path:
    f = model_dir / f"gguf-{ftype}.gguf"
    if not f.is_file():
        subprocess.run([sys.executable, str(PEERS / "to_gguf.py"), str(model_dir), "--ftype", ftype], check=True,
                       capture_output=True)
    return f


class LlamaModel:
    """One GGUF loaded once; its contexts (LlamaBatched) share the weights."""

    def __init__(self, gguf: Path):
        import llama_cpp as L
        self.L = L
        L.llama_backend_init()
        self.model = L.llama_model_load_from_file(str(gguf).encode(), L.llama_model_default_params())
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {gguf}")
        self.contexts: list[LlamaBatched] = []

    def close(self):
        for c in self.contexts:
            c.close()
        self.L.llama_model_free(self.model)


class LlamaBatched:
    """llama.cpp's multi-sequence decode: a context with n_seq_max sequences, the prompts prefilled in one
    llama_decode, then one llama_decode per step with one row per sequence, each asking for its logits; argmax in
    NumPy over llama_get_logits_ith. kv_unified=True is what llama.cpp's batched example and
    ../shared/peers/llama_batched.py use (one KV buffer: every row's attention spans all sequences' cells, masked);
    False gives each sequence its own KV stream, which llama.h advises when the sequences share no prefix, as here.
    Both run, so the comparison is against whichever is faster on the host."""

    def __init__(self, lm: LlamaModel, n_seq_max: int, kv_unified: bool):
        L = self.L = lm.L
        cp = L.llama_context_default_params()
        n_ctx = -(-n_seq_max * (96 + N_NEW) // 256) * 256  # split KV: each sequence gets n_ctx / n_seq_max cells
        self.n_rows = max(sum(len(p) for p in prompts(b)) for b in SCALING_B + (B_MAIN,))
        cp.n_ctx, cp.n_batch, cp.n_ubatch = n_ctx, self.n_rows, self.n_rows
        cp.n_seq_max, cp.kv_unified = n_seq_max, kv_unified
        cp.n_threads = cp.n_threads_batch = THREADS
        self.ctx = L.llama_init_from_model(lm.model, cp)
        if not self.ctx:
            raise RuntimeError("llama_init_from_model failed")
        self.n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(lm.model))
        self.batch = L.llama_batch_init(self.n_rows, 0, n_seq_max)
        self.info = dict(n_ctx=n_ctx, n_seq_max=n_seq_max, kv_unified=kv_unified, threads=THREADS,
                         flash_attn_type=cp.flash_attn_type)
        lm.contexts.append(self)

    def _decode(self, rows):  # rows: (token, pos, seq id, wants logits)
        b, L = self.batch, self.L
        b.n_tokens = len(rows)
        for i, (t, p, s, w) in enumerate(rows):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = t, p, 1, w
            b.seq_id[i][0] = s
        rc = L.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc} ({len(rows)} rows)")

    def _argmax(self, i):
        return int(np.argmax(np.ctypeslib.as_array(self.L.llama_get_logits_ith(self.ctx, i), shape=(self.n_vocab,))))

    def __call__(self, ps):
        L = self.L
        L.llama_memory_clear(L.llama_get_memory(self.ctx), True)
        rows, last = [], []
        for s, p in enumerate(ps):
            rows += [(t, j, s, j == len(p) - 1) for j, t in enumerate(p)]
            last.append(len(rows) - 1)
        t0 = time.perf_counter()
        self._decode(rows)
        toks = [self._argmax(i) for i in last]
        t1 = time.perf_counter()
        out, pos = [[t] for t in toks], [len(p) for p in ps]
        for _ in range(N_NEW - 1):
            self._decode([(toks[s], pos[s], s, True) for s in range(len(ps))])
            toks = [self._argmax(s) for s in range(len(ps))]
            pos = [q + 1 for q in pos]
            for s, t in enumerate(toks):
                out[s].append(t)
        t2 = time.perf_counter()
        return _run(t1 - t0, t2 - t1, len(ps) * (N_NEW - 1), out)

    def close(self):
        self.L.llama_batch_free(self.batch)
        self.L.llama_free(self.ctx)


def llama_runners(d, n_seq_max, skipped, models: list) -> dict:
    """{name: runner} for F32 and F16, unified and split KV; the loaded models are appended to `models` (close
    them when done)."""
    if not importlib.util.find_spec("llama_cpp"):
        skipped["llama.cpp"] = "peer not installed: pip install llama-cpp-python (README: Benchmarks)"
        return {}
    if not (PEERS / "to_gguf.py").is_file():
        skipped["llama.cpp"] = f"GGUF writer {PEERS / 'to_gguf.py'} not found beside the checkout"
        return {}
    if not importlib.util.find_spec("gguf"):
        skipped["llama.cpp"] = "the GGUF writer needs the gguf package: pip install gguf"
        return {}
    out = {}
    for f in ("f32", "f16"):
        lm = LlamaModel(gguf_file(d, f))
        models.append(lm)
        out[f"llama.cpp {f.upper()}"] = LlamaBatched(lm, n_seq_max, kv_unified=True)
        out[f"llama.cpp {f.upper()} split-KV"] = LlamaBatched(lm, n_seq_max, kv_unified=False)
    return out


# -- the GEMM ceiling, in a subprocess so that OpenBLAS picks its own kernel ------------------------------------
_GEMM = r"""
import json, sys, time
import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits
m, n, k, reps, threads = map(int, sys.argv[1:])
rng = np.random.default_rng(0)
a, b = rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32)
with threadpool_limits(threads, user_api="blas"):
    a @ b
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter(); a @ b; ts.append(time.perf_counter() - t0)
    blas = [{k: d.get(k) for k in ("internal_api", "architecture", "version", "num_threads")}
            for d in threadpool_info() if d.get("user_api") == "blas"]
flop = 2 * m * n * k
print(json.dumps(dict(n=n, shape=[m, n, k], best_s=min(ts), gflop_s=flop / min(ts) / 1e9,
                      gflop_s_median=flop / sorted(ts)[reps // 2] / 1e9, blas=blas)))
"""


def gemm_peak(n=2048, reps=7, shape=None, threads=None) -> dict:
    """fp32 GEMM peak of this host (best of reps, n x n x n sgemm via NumPy, or shape = (M, N, K): [M, K] @ [K, N])
    at the bench's thread count (or threads). OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are removed for the subprocess:
    set (as on these hosts), they pin OpenBLAS to its Haswell kernel at half the AVX-512 speed; `blas` says which
    kernel ran."""
    if not importlib.util.find_spec("threadpoolctl"):
        return dict(error="threadpoolctl not installed: pip install threadpoolctl")
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    m, n, k = shape or (n, n, n)
    r = subprocess.run([sys.executable, "-c", _GEMM, str(m), str(n), str(k), str(reps), str(threads or THREADS)],
                       env=env, capture_output=True, text=True)
    if r.returncode != 0:
        return dict(error=r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}")
    return json.loads(r.stdout)


# -- benches ------------------------------------------------------------------------------------------------------
def _median(xs):
    return float(np.median(xs))


def _settle():
    time.sleep(0.3)  # let the previous runner's spinning worker threads go idle


@pytest.mark.parametrize("size", sizes())
def bench_batch_round_robin(benchmark, model_dir, size):
    if not backends.status()["cpu"][0]:
        pytest.skip(f"cpu backend unavailable: {backends.status()['cpu'][1]}")
    d, ps, skipped = model_dir(size), prompts(B_MAIN), {}
    fp32, bf16 = load_tinygpt(d, "float32"), load_tinygpt(d, "bfloat16")
    bf16a = load_tinygpt(d, "bfloat16", bf16_activations=True)
    solo = "tinygpt cpu float32 one-at-a-time"
    runners = {"tinygpt cpu float32 batched": tinygpt_batched(fp32),
               "tinygpt cpu bfloat16 batched": tinygpt_batched(bf16),
               "tinygpt cpu bfloat16 bf16-activations batched": tinygpt_batched(bf16a),
               solo: tinygpt_one_at_a_time(load_tinygpt(d, "float32", screen="0"))}
    llama_models: list = []
    llama = llama_runners(d, B_MAIN, skipped, llama_models)
    runners.update({f"{k} batched": v for k, v in llama.items()})
    hf = "transformers cpu float32 generate"
    if importlib.util.find_spec("torch") and importlib.util.find_spec("transformers"):
        runners[hf] = transformers_generate(d)
    else:
        skipped["transformers"] = "peer not installed: pip install torch transformers"
    # bf16 one at a time, untimed: the references the bf16 batched tokens must equal
    bf16_solo = tinygpt_one_at_a_time(bf16)(ps)["tokens"]
    bf16a_solo = tinygpt_one_at_a_time(bf16a)(ps)["tokens"]
    runs = {name: [] for name in runners}

    def one_pass(keep):
        for name, run in runners.items():
            _settle()
            r = run(ps)
            if keep:
                runs[name].append(r)
        if keep:
            assert runs["tinygpt cpu float32 batched"][-1]["tokens"] == runs[solo][-1]["tokens"], \
                "fp32 batched greedy tokens differ from the same prompts run one at a time"
            assert runs["tinygpt cpu bfloat16 batched"][-1]["tokens"] == bf16_solo, \
                "bf16 batched greedy tokens differ from the same prompts run one at a time"
            assert runs["tinygpt cpu bfloat16 bf16-activations batched"][-1]["tokens"] == bf16a_solo, \
                "bf16-activation batched greedy tokens differ from the same prompts run one at a time"
    try:
        one_pass(False)
        run_pedantic(benchmark, lambda: one_pass(True), rounds=ROUNDS)
    finally:
        for lm in llama_models:
            lm.close()
    ck = fp32.checkpoint.config
    flop = decode_flop(ck, [len(p) for p in ps])
    refs = [solo] + [n for n in runners if n.startswith("llama.cpp")] + ([hf] if hf in runners else [])
    table = {}
    for name, rs in runs.items():
        table[name] = dict(
            agg_decode_tok_s=round(_median([r["agg_tok_s"] for r in rs]), 1),
            per_seq_tok_s=round(_median([r["per_seq_tok_s"] for r in rs]), 1),
            prefill_ms=round(_median([r["prefill_s"] for r in rs]) * 1e3, 1),
            gflop_s=round(_median([flop / r["decode_s"] for r in rs]) / 1e9, 1),
            agg_all=[round(r["agg_tok_s"], 1) for r in rs],
            # same-pass ratios against each reference, median over passes
            ratios={ref: round(_median([a["agg_tok_s"] / b["agg_tok_s"] for a, b in zip(rs, runs[ref])]), 2)
                    for ref in refs if ref != name})
    ref_tokens = runs[solo][0]["tokens"]
    benchmark.extra_info.update(
        batched=dict(B=B_MAIN, n_new=N_NEW, size=size, prompt_lens=[len(p) for p in ps], threads=THREADS,
                     refs=refs, runners=table, skipped=skipped, passes=ROUNDS,
                     tokens_equal_one_at_a_time={"tinygpt cpu float32 batched": True,
                                                 "tinygpt cpu bfloat16 batched": True,
                                                 "tinygpt cpu bfloat16 bf16-activations batched": True},  # asserted
                     # peers compute in another order: sequences whose 128 greedy tokens equal tinygpt fp32's
                     same_tokens_as_tinygpt_fp32={n: sum(a == b for a, b in zip(rs[0]["tokens"], ref_tokens))
                                                  for n, rs in runs.items() if not n.startswith("tinygpt")},
                     llama={k: v.info for k, v in llama.items()}))


@pytest.mark.parametrize("size", sizes())
def bench_batch_scaling(benchmark, model_dir, size):
    if not backends.status()["cpu"][0]:
        pytest.skip(f"cpu backend unavailable: {backends.status()['cpu'][1]}")
    d, skipped = model_dir(size), {}
    peak_before = gemm_peak()
    fp32, bf16 = load_tinygpt(d, "float32"), load_tinygpt(d, "bfloat16")
    runners = {"tinygpt cpu float32": tinygpt_batched(fp32), "tinygpt cpu bfloat16": tinygpt_batched(bf16)}
    llama_models: list = []
    runners.update(llama_runners(d, max(SCALING_B), skipped, llama_models))
    runs = {(name, B): [] for name in runners for B in SCALING_B}

    def one_pass(keep):
        for B in SCALING_B:
            ps = prompts(B)
            for name, run in runners.items():
                _settle()
                r = run(ps)
                if keep:
                    runs[name, B].append(r)
    try:
        one_pass(False)
        run_pedantic(benchmark, lambda: one_pass(True), rounds=ROUNDS)
    finally:
        for lm in llama_models:
            lm.close()
    peak_after = gemm_peak()
    cfg = fp32.checkpoint.config
    flop = {B: decode_flop(cfg, [len(p) for p in prompts(B)]) for B in SCALING_B}
    curves = {}
    for name in runners:
        med = lambda key, B: _median([r[key] for r in runs[name, B]])  # noqa: E731
        curves[name] = dict(
            agg_decode_tok_s=[round(med("agg_tok_s", B), 1) for B in SCALING_B],
            per_seq_tok_s=[round(med("per_seq_tok_s", B), 1) for B in SCALING_B],
            step_ms=[round(med("decode_s", B) / (N_NEW - 1) * 1e3, 2) for B in SCALING_B],
            gflop_s=[round(_median([flop[B] / r["decode_s"] for r in runs[name, B]]) / 1e9, 1) for B in SCALING_B])
    peaks = [p["gflop_s"] for p in (peak_before, peak_after) if "gflop_s" in p]
    benchmark.extra_info.update(scaling=dict(
        B=list(SCALING_B), n_new=N_NEW, size=size, threads=THREADS, passes=ROUNDS, runners=curves, skipped=skipped,
        gemm_peak_gflop_s=round(max(peaks), 1) if peaks else None, gemm=[peak_before, peak_after],
        openblas_env_of_this_process={k: os.environ.get(k, "unset")
                                      for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}))
