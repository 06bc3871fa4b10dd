#!/usr/bin/env bash
# Coverage-guided fuzzing (atheris = libFuzzer for Python) of the readers of untrusted input: safetensors,
# pytorch_model.bin, config.json, the tokenizer. SECONDS (default 120) in all, split over the four targets.
# Fails on a crash, an uncaught exception that is not a TinyGPTError, one input running past 10 s (a hang) or
# the process passing 2048 MB RSS. The corpus grows in build/fuzz/corpus and is reused by the next run;
# findings land in build/fuzz/artifacts (replay one: python fuzz/run.py TARGET FILE).
set -euo pipefail
cd "$(dirname "$0")/.."
TOTAL=${1:-120}
PER=$(( TOTAL / 4 ))
WORK=${TINYGPT_FUZZ_DIR:-build/fuzz}
python -c "import atheris" 2>/dev/null || { echo "tools/fuzz.sh: needs atheris: pip install '.[fuzz]'"; exit 1; }
rm -rf "$WORK/seeds"
python fuzz/seeds.py "$WORK/seeds"
mkdir -p "$WORK/artifacts"
for t in safetensors torch_bin config tokenizer; do
  mkdir -p "$WORK/corpus/$t"
  if ! python fuzz/run.py "$t" -max_total_time="$PER" -timeout=10 -rss_limit_mb=2048 -max_len=8192 \
       -artifact_prefix="$WORK/artifacts/$t-" "$WORK/corpus/$t" "$WORK/seeds/$t" >"$WORK/$t.log" 2>&1; then
    echo "FUZZ FINDING in $t (log: $WORK/$t.log):"
    grep -v '^"' "$WORK/$t.log" | grep -A40 -m1 "Uncaught Python exception\|ERROR: libFuzzer" | head -50
    exit 1
  fi
  echo "fuzz $t: $(grep -o 'Done [0-9]* runs' "$WORK/$t.log" | tail -1) in ${PER} s, no finding"
done
