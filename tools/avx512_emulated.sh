#!/usr/bin/env bash
# Tests the AVX-512 kernels on a CPU without AVX-512: builds tinygpt._cpu with TINYGPT_EMULATE_AVX512=ON (the
# avx512 level compiled against SIMDe's portable intrinsics, https://github.com/simd-everywhere/simde) into a
# scratch directory, then runs the kernel tests at that level and the whole-model tests on it.
# This checks the AVX-512 path's logic (widths, tails, masks, reductions, transposes), not the compiler's
# real AVX-512 code generation; on an AVX-512 CPU the normal test suite covers that.
# usage: tools/avx512_emulated.sh   (repository root, in a venv with the test dependencies; needs libsimde-dev)
set -euo pipefail
PY=${PY:-python3}
if [ ! -f /usr/include/simde/x86/avx512.h ] && [ -z "${SIMDE_INCLUDE:-}" ]; then
  echo "avx512_emulated: SIMDe headers not found (apt-get install libsimde-dev)" >&2
  exit 1
fi
SITE=$(mktemp -d)
trap 'rm -rf "$SITE"' EXIT
$PY -m pip install -q "scikit-build-core>=0.10" "pybind11>=2.12"
TINYGPT_CUDA=OFF TINYGPT_EMULATE_AVX512=ON $PY -m pip install --no-build-isolation --no-deps -q --target "$SITE" \
  -Cbuild-dir=build/avx512-emulated ${SIMDE_INCLUDE:+-Ccmake.define.TG_SIMDE_INCLUDE=$SIMDE_INCLUDE} .
cd "$SITE"
PYTHONPATH="$SITE" $PY -c "import tinygpt._cpu as c; i = c.build_info(); assert i.get('avx512_emulated') and i['isa'] == 'avx512', i; print('emulated AVX-512 build:', c.__file__)"
# kernel tests at the avx512 level; model tests run on the default level, which is avx512 in this build
PYTHONPATH="$SITE" $PY -m pytest -q -p no:cacheprovider --rootdir "$OLDPWD" \
  "$OLDPWD/tests/test_matmul.py" "$OLDPWD/tests/test_head_argmax.py" "$OLDPWD/tests/test_layernorm.py" \
  "$OLDPWD/tests/test_attention.py" \
  "$OLDPWD/tests/test_gelu.py" "$OLDPWD/tests/test_embedding.py" -k "avx512"
PYTHONPATH="$SITE" $PY -m pytest -q -p no:cacheprovider --rootdir "$OLDPWD" "$OLDPWD/tests/test_model.py" -k "cpu"
