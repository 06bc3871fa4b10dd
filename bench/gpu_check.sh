#!/usr/bin/env bash
# Builds, tests and benchmarks everything GPU-related in one call (run from the repository root on a machine
# with an NVIDIA GPU, nvcc, and python3 with numpy, pybind11, scikit-build-core, pytest, pytest-benchmark,
# hypothesis, regex, tiktoken, torch, transformers). The GPT-2 vocabulary comes with the tree (tests/data/gpt2).
# Every step runs even when an earlier one failed (except those that need the build); each step's status is kept,
# a summary is printed at the end, and the exit status is non-zero if any step failed.
# Writes under $OUT (default ./gpu-out): gpu_check.log (everything printed), build.log, bench.json,
# RESULTS-gpu.md, summary.txt -- few files, because the GPU machine returns at most 8.
#   TINYGPT_CUDA_ARCHS (default 90) limits the build to the local GPU; TINYGPT_BENCH_SIZES picks model sizes;
#   TINYGPT_STEP_TIMEOUT (seconds, default 900) bounds each step; TINYGPT_SKIP_BENCH=1 stops after the tests;
#   TINYGPT_GPU_SANITIZER=0 runs the kernel tests without compute-sanitizer even where it works.
set -uo pipefail
PY=${PY:-python3}
OUT=${OUT:-$PWD/gpu-out}
STEP_TIMEOUT=${TINYGPT_STEP_TIMEOUT:-900}
mkdir -p "$OUT"
: >"$OUT/gpu_check.log"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
TEE_PID=$!
SITE=$(mktemp -d)
trap 'rm -rf "$SITE"' EXIT
export PYTHONUNBUFFERED=1
KERNEL_TESTS="tests/test_matmul.py tests/test_attention.py tests/test_layernorm.py tests/test_gelu.py
              tests/test_embedding.py tests/test_cuda_kernels.py"
SANITIZE=""  # the memcheck prefix of the kernel tests, when compute-sanitizer works here
export PY OUT SITE KERNEL_TESTS SANITIZE

NAMES=() STATUS=()
# step NAME FUNCTION: runs FUNCTION (exported, in a child bash) under the step timeout, which kills its whole
# process group; prints and records its status (0 ok, 124 timed out).
step() {
    local name=$1 t0=$SECONDS rc
    shift
    echo "== $name"
    timeout "$STEP_TIMEOUT" bash -uo pipefail -c '"$@"' _ "$@"
    rc=$?
    NAMES+=("$name") STATUS+=("$rc")
    if [ "$rc" = 0 ]; then echo "== $name: ok ($((SECONDS - t0)) s)"
    elif [ "$rc" = 124 ]; then echo "== $name: TIMED OUT after ${STEP_TIMEOUT} s"
    else echo "== $name: FAILED (exit $rc, $((SECONDS - t0)) s)"; fi
    return "$rc"
}
skip() { NAMES+=("$1") STATUS+=("skipped: $2"); echo "== $1: SKIPPED ($2)"; }

device() {
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv &&
        nvidia-smi | head -5 && (command -v nvcc >/dev/null && nvcc --version | tail -2 || echo "nvcc: not on PATH")
}
build() {
    # the whole log to build.log (a failed build must be readable); its tail on screen
    TINYGPT_CUDA=ON CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=${TINYGPT_CUDA_ARCHS:-90}" \
        $PY -m pip install --no-build-isolation --no-deps --no-index -v --target "$SITE" . >"$OUT/build.log" 2>&1
    local rc=$?
    tail -20 "$OUT/build.log"
    return "$rc"
}
cuda_imports() {
    $PY -m tinygpt info &&
        $PY -c "import tinygpt, sys; sys.exit(0 if 'cuda' in tinygpt.available_backends() else 'cuda backend unavailable')"
}
vocab() {  # fail fast here rather than as an ERROR in every model test
    $PY -c "import sys; sys.path.insert(0, 'tests'); from tiny_model import vocab_dir; print(vocab_dir())"
}
# compute-sanitizer refuses gVisor's device ("Device not supported"); probe it on one tiny kernel first.
sanitizer_probe() {
    if [ "${TINYGPT_GPU_SANITIZER:-auto}" = 0 ]; then echo "compute-sanitizer: off (TINYGPT_GPU_SANITIZER=0)"; return 1; fi
    if ! command -v compute-sanitizer >/dev/null; then echo "compute-sanitizer: not on PATH"; return 1; fi
    compute-sanitizer --tool memcheck --error-exitcode 97 $PY -c \
        "import numpy as np; from tinygpt import _cuda; x = np.ones(64, np.float32); _cuda.gelu(x.copy(), x)"
}
kernel_tests() {  # own process, first: a faulting kernel leaves a sticky error that would fail every later test
    # shellcheck disable=SC2086
    $SANITIZE $PY -m pytest $KERNEL_TESTS -k cuda -rA -q -p no:cacheprovider --maxfail=10
}
racecheck() {
    # the kernels that share memory between threads, a few shapes each (racecheck is slow; the tiles are the same
    # at every size): GEMM tiles, decode attention (1 to 32 chunks), LayerNorm-GEMV, argmax
    compute-sanitizer --tool racecheck --error-exitcode 97 $PY -m pytest tests/test_matmul.py tests/test_attention.py \
        tests/test_cuda_kernels.py -q -p no:cacheprovider --maxfail=3 -k "cuda and (large_k or 64-96-25 or 7-65-129 \
        or 1-1023-12 or 1-95-2 or 1-31-2 or 2304-768-float16 or argmax_device or reuse_scratch) and not accum"
}
model_tests() {
    CI=1 $PY -m pytest tests -rA -q -p no:cacheprovider -k "not test_threads_share" --maxfail=50
}
thread_test() { $PY -m pytest tests -rA -q -p no:cacheprovider -k "test_threads_share and cuda"; }
avx512() {
    grep -m1 "model name" /proc/cpuinfo
    $PY -m pytest tests -q -p no:cacheprovider -k avx512 2>&1 | tail -3
}
bandwidth() {
    $PY - <<'PYEOF'
import torch
x = torch.empty(2**30, dtype=torch.uint8, device="cuda"); y = torch.empty_like(x)
for _ in range(3): y.copy_(x)
torch.cuda.synchronize(); s, e = torch.cuda.Event(True), torch.cuda.Event(True); ts = []
for _ in range(20):
    s.record(); y.copy_(x); e.record(); torch.cuda.synchronize(); ts.append(s.elapsed_time(e) / 1e3)
ts.sort(); print(f"d2d copy: {2 * x.numel() / ts[len(ts) // 2] / 1e9:.0f} GB/s (read+write, median of 20)")
PYEOF
}
benches() {
    TINYGPT_BENCH_SIZES=${TINYGPT_BENCH_SIZES:-124M,355M,774M,1558M} $PY -m pytest bench -q -p no:cacheprovider \
        --benchmark-only -k "cuda" --benchmark-json="$OUT/bench.json" 2>&1 | tail -15
}
report() { $PY bench/report.py "$OUT/bench.json" | tee "$OUT/RESULTS-gpu.md"; }
export -f device build cuda_imports vocab sanitizer_probe kernel_tests racecheck model_tests thread_test \
    avx512 bandwidth benches report

step "device" device
if step "build (TINYGPT_CUDA=ON)" build; then
    export PYTHONPATH="$SITE"
    if step "cuda backend imports" cuda_imports; then
        if step "compute-sanitizer probe" sanitizer_probe; then
            SANITIZE="compute-sanitizer --tool memcheck --error-exitcode 97"
        else
            NAMES[-1]="compute-sanitizer probe (unusable here: kernel tests run without it; not a failure)"
            STATUS[-1]="n/a"
        fi
        step "kernel tests${SANITIZE:+ under compute-sanitizer memcheck}" kernel_tests
        if [ -n "$SANITIZE" ]; then step "shared-memory kernels under compute-sanitizer racecheck" racecheck; fi
        if step "GPT-2 vocabulary in the tree" vocab; then
            step "model tests (all backends; parity against transformers)" model_tests
            step "thread test (cuda)" thread_test
        else
            skip "model tests" "no vocabulary"
        fi
        step "AVX-512 kernels on this host's CPU (all skip where it is absent)" avx512
        if [ "${TINYGPT_SKIP_BENCH:-0}" = 1 ]; then
            NAMES+=("benches (TINYGPT_SKIP_BENCH=1)") STATUS+=("n/a")
        else
            step "device-to-device bandwidth (the HBM floor's denominator)" bandwidth
            step "benches (kernels + end to end, cuda and transformers on the GPU)" benches && step "bench report" report
        fi
    else
        skip "tests and benches" "the cuda backend does not import"
    fi
else
    skip "tests and benches" "the build failed (see $OUT/build.log)"
fi

failed=0
echo "== summary" >"$OUT/summary.txt"
for i in "${!NAMES[@]}"; do
    s=${STATUS[$i]}
    case "$s" in
        0) r=ok ;;
        124) r="TIMED OUT"; failed=1 ;;
        n/a) r="n/a" ;;
        skipped*) r="SKIPPED (${s#skipped: })"; failed=1 ;;
        *) r="FAILED (exit $s)"; failed=1 ;;
    esac
    printf '%-72s %s\n' "${NAMES[$i]}" "$r" >>"$OUT/summary.txt"
done
if [ "$failed" = 0 ]; then echo "gpu_check: all steps passed"; else echo "gpu_check: FAILED"; fi >>"$OUT/summary.txt"
cat "$OUT/summary.txt"
exec >&- 2>&-
wait "$TEE_PID"  # let tee write the last lines before the exit status is seen
exit "$failed"
