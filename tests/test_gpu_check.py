"""bench/gpu_check.sh against stub python/nvidia-smi/nvcc/compute-sanitizer: it exits non-zero when any step
fails (a failing pytest, a failed build), keeps running the independent steps after a failure, and exits 0 only
when every step passed. No GPU needed: this checks the harness, not the kernels."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STUB_PY = """#!/usr/bin/env bash
# stands in for python3: fails when its arguments match $STUB_FAIL (an extended regex)
if [ -n "${STUB_FAIL:-}" ] && [[ "$*" =~ $STUB_FAIL ]]; then echo "stub: failing: $*"; exit 1; fi
echo "stub: $*"
"""


def run_check(tmp_path, fail="", sanitizer_works=False):
    if shutil.which("bash") is None or shutil.which("timeout") is None:
        pytest.skip("needs bash and coreutils timeout")
    stubs = tmp_path / "bin"
    stubs.mkdir()
    (stubs / "python3").write_text(STUB_PY)
    (stubs / "nvidia-smi").write_text("#!/bin/sh\necho 'name, driver_version'\necho 'Stub GPU, 0.0'\n")
    (stubs / "nvcc").write_text("#!/bin/sh\necho 'stub nvcc'\n")
    (stubs / "compute-sanitizer").write_text(
        '#!/usr/bin/env bash\nwhile [[ $1 == --* ]]; do shift 2; done\nexec "$@"\n' if sanitizer_works else
        "#!/bin/sh\necho '========= Error: Device not supported'\nexit 1\n")  # as on gVisor
    for f in stubs.iterdir():
        f.chmod(0o755)
    out = tmp_path / "out"
    env = {**os.environ, "PATH": f"{stubs}:/usr/bin:/bin", "PY": str(stubs / "python3"), "OUT": str(out),
           "STUB_FAIL": fail, "TINYGPT_STEP_TIMEOUT": "60"}
    r = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh")], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
    summary = (out / "summary.txt").read_text()
    assert summary in r.stdout and (out / "gpu_check.log").read_text().endswith(summary)
    return r.returncode, summary


def line(summary, start):
    return next(s for s in summary.splitlines() if s.startswith(start))


def test_all_steps_pass(tmp_path):
    rc, summary = run_check(tmp_path)
    assert rc == 0 and summary.rstrip().endswith("all steps passed")
    assert line(summary, "compute-sanitizer probe").endswith("n/a")  # refused device: tests run without it
    assert line(summary, "kernel tests").endswith("ok") and line(summary, "bench report").endswith("ok")


def test_failing_kernel_test_fails_the_check(tmp_path):
    rc, summary = run_check(tmp_path, fail="pytest tests/test_matmul.py")
    assert rc != 0 and summary.rstrip().endswith("FAILED")
    assert line(summary, "kernel tests").endswith("FAILED (exit 1)")
    assert line(summary, "model tests").endswith("ok")  # later steps still run, in their own process


def test_failing_model_test_fails_the_check(tmp_path):
    rc, summary = run_check(tmp_path, fail="pytest tests -rA")
    assert rc != 0 and line(summary, "model tests").endswith("FAILED (exit 1)")


def test_failing_build_fails_the_check(tmp_path):
    rc, summary = run_check(tmp_path, fail="pip install")
    assert rc != 0 and line(summary, "build").endswith("FAILED (exit 1)")
    assert "SKIPPED (the build failed" in summary


def test_failing_bench_fails_the_check(tmp_path):
    rc, summary = run_check(tmp_path, fail="pytest bench")
    assert rc != 0 and line(summary, "benches").endswith("FAILED (exit 1)")


def test_failing_piped_step_fails_the_check(tmp_path):
    """A step whose command is piped into tail/tee keeps the command's status (pipefail in the step's shell)."""
    rc, summary = run_check(tmp_path, fail="-k avx512")
    assert rc != 0 and line(summary, "AVX-512").endswith("FAILED (exit 1)")


def test_sanitizer_steps_where_it_works(tmp_path):
    rc, summary = run_check(tmp_path, sanitizer_works=True)
    assert rc == 0 and line(summary, "kernel tests under compute-sanitizer memcheck").endswith("ok")
    (tmp_path / "race").mkdir()
    rc, summary = run_check(tmp_path / "race", fail="large_k", sanitizer_works=True)  # the racecheck step's -k
    assert rc != 0 and line(summary, "shared-memory kernels under compute-sanitizer racecheck").endswith("FAILED (exit 1)")
