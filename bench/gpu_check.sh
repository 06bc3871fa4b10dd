#!/usr/bin/env bash
# Builds, tests and benchmarks everything GPU-related in one call (run from the repository root on a machine
# with an NVIDIA GPU, nvcc, and python3 with numpy, pybind11, scikit-build-core, pytest, pytest-benchmark,
# hypothesis, regex, tiktoken, torch, transformers). Writes logs and bench JSON under $OUT (default ./gpu-out).
#   TINYGPT_CUDA_ARCHS (default 90) limits the build to the local GPU; TINYGPT_BENCH_SIZES picks model sizes.
set -uo pipefail
PY=${PY:-python3}
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
SITE=$(mktemp -d)
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv | tee "$OUT/device.txt"
echo "== build (TINYGPT_CUDA=ON)"
TINYGPT_CUDA=ON CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=${TINYGPT_CUDA_ARCHS:-90}" \
  $PY -m pip install --no-build-isolation --no-deps --no-index -q --target "$SITE" . 2>&1 | tail -20 | tee "$OUT/build.log"
export PYTHONPATH="$SITE"
$PY -m tinygpt info | tee "$OUT/info.txt"
$PY -c "import tinygpt, sys; sys.exit(0 if 'cuda' in tinygpt.available_backends() else 'cuda backend unavailable')" || exit 1
echo "== tests (all backends; parity against transformers)"
CI=1 $PY -m pytest tests -q -p no:cacheprovider -k "not test_threads_share" 2>&1 | tee "$OUT/tests.log" | tail -30
$PY -m pytest tests -q -p no:cacheprovider -k "test_threads_share and cuda" 2>&1 | tail -3 | tee -a "$OUT/tests.log"
echo "== AVX-512 kernels natively on this host's CPU (the developer machines lack AVX-512; all skip where it is absent)"
(grep -m1 "model name" /proc/cpuinfo; $PY -m pytest tests -q -p no:cacheprovider -k avx512 2>&1 | tail -3) | tee "$OUT/avx512.log"
echo "== device-to-device bandwidth (the HBM floor's denominator)"
$PY - <<'PYEOF' | tee "$OUT/bandwidth.txt"
import torch
x = torch.empty(2**30, dtype=torch.uint8, device="cuda"); y = torch.empty_like(x)
for _ in range(3): y.copy_(x)
torch.cuda.synchronize(); s, e = torch.cuda.Event(True), torch.cuda.Event(True); ts = []
for _ in range(20):
    s.record(); y.copy_(x); e.record(); torch.cuda.synchronize(); ts.append(s.elapsed_time(e) / 1e3)
ts.sort(); print(f"d2d copy: {2 * x.numel() / ts[len(ts) // 2] / 1e9:.0f} GB/s (read+write, median of 20)")
PYEOF
echo "== benches (kernels + end to end, cuda and transformers on the GPU)"
TINYGPT_BENCH_SIZES=${TINYGPT_BENCH_SIZES:-124M,355M,774M,1558M} $PY -m pytest bench -q -p no:cacheprovider --benchmark-only \
  -k "cuda" --benchmark-json="$OUT/bench.json" 2>&1 | tail -5
$PY bench/report.py "$OUT/bench.json" | tee "$OUT/RESULTS-gpu.md"
