#!/usr/bin/env bash
# Builds the portable kernel path for a non-x86 target (default aarch64) with a cross compiler and runs
# tools/kernel_selftest.cpp (every kernel against float64 loops) under qemu-user. Without Python: the point is
# that csrc/ compiles and computes right where none of the x86 code paths exist.
# usage: tools/cross_check.sh [triple]   (needs g++-<triple> and qemu-user; Debian: g++-aarch64-linux-gnu qemu-user)
set -euo pipefail
cd "$(dirname "$0")/.."
TRIPLE=${1:-aarch64-linux-gnu}
ARCH=${TRIPLE%%-*}
CXX=${CXX:-$TRIPLE-g++}
OUT=build/cross-$ARCH
mkdir -p "$OUT"
KERNELS="csrc/matmul.cpp csrc/head_argmax.cpp csrc/layernorm.cpp csrc/attention.cpp csrc/gelu.cpp csrc/embedding.cpp csrc/isa_table.cpp"
$CXX -std=c++17 -O2 -Wall -Wextra -Wno-unused-parameter -Werror -fopenmp -DTG_ISA_NS=tg_base -DTG_ISA_NAME='"base"' \
  $KERNELS csrc/dispatch.cpp tools/kernel_selftest.cpp -o "$OUT/kernel_selftest"
file "$OUT/kernel_selftest" | cut -d, -f1-2
for threads in 1 3; do
  TINYGPT_NUM_THREADS=$threads qemu-$ARCH -L /usr/$TRIPLE "$OUT/kernel_selftest"
done
