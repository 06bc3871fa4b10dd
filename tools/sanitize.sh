#!/usr/bin/env bash
# ASan + UBSan run of the C++ backend: builds tinygpt._cpu with -fsanitize=address,undefined into a scratch
# directory and runs the kernel and whole-model tests on the cpu backend at every ISA level this CPU has.
# usage: tools/sanitize.sh   (from the repository root, in a venv with the test dependencies installed)
set -euo pipefail
PY=${PY:-python3}
SITE=$(mktemp -d)
$PY -m pip install -q "scikit-build-core>=0.10" "pybind11>=2.12"  # build deps: this build runs without isolation
trap 'rm -rf "$SITE"' EXIT
TINYGPT_CUDA=OFF TINYGPT_SANITIZE=ON $PY -m pip install --no-build-isolation --no-deps -q --target "$SITE" \
  -Cbuild-dir=build/sanitize .
ASAN_LIB=$(${CXX:-g++} -print-file-name=libasan.so)
UBSAN_LIB=$(${CXX:-g++} -print-file-name=libubsan.so)
# Python itself is not instrumented: preload the runtimes; leaks of the interpreter are not ours to report.
export LD_PRELOAD="$ASAN_LIB $UBSAN_LIB"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:strict_string_checks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
cd "$SITE"  # import the instrumented build, not an installed one
PYTHONPATH="$SITE" $PY -c "import tinygpt._cpu as c, sys; assert c.build_info().get('sanitize'), 'not the sanitized build'; print('sanitized build:', c.__file__)"
PYTHONPATH="$SITE" $PY -m pytest -q -p no:cacheprovider "$OLDPWD/tests/test_matmul.py" "$OLDPWD/tests/test_head_argmax.py" \
  "$OLDPWD/tests/test_layernorm.py" \
  "$OLDPWD/tests/test_attention.py" "$OLDPWD/tests/test_gelu.py" "$OLDPWD/tests/test_embedding.py" \
  "$OLDPWD/tests/test_model.py" -k "cpu" --rootdir "$OLDPWD"
