"""Check that no AVX/AVX-512 instruction leaks into the baseline path of tinygpt._cpu.

Disassembles the installed module (built unstripped) and fails if any function outside the tg_avx2 /
tg_avx512 namespaces uses a ymm/zmm register or a VEX/EVEX-only instruction. Run after `pip install .`:
    python tools/check_isa.py [PATH_TO_MODULE_SO]
"""
import re
import subprocess
import sys

WIDE = re.compile(r"\b[yz]mm\d+\b|\bv(fmadd|fmsub|fnmadd|broadcast|cvtph2ps|cvtps2ph|perm|pmovzx|pslld|gather|zeroupper)")


def main() -> int:
    import tinygpt._cpu as cpu
    path = sys.argv[1] if len(sys.argv) > 1 else cpu.__file__
    dis = subprocess.run(["objdump", "-d", "-C", "--no-show-raw-insn", path], capture_output=True, text=True,
                         check=True).stdout
    func, leaks, funcs, wide_funcs = None, {}, 0, 0
    for line in dis.splitlines():
        m = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if m:
            func = m.group(1)
            funcs += 1
            continue
        if func and WIDE.search(line):
            if "tg_avx2::" in func or "tg_avx512::" in func:
                wide_funcs += 1
            else:
                leaks.setdefault(func, line.strip())
    if funcs < 50:
        print(f"{path}: only {funcs} functions found; is the module stripped?", file=sys.stderr)
        return 1
    if leaks:
        print(f"AVX instructions outside the ISA namespaces in {path}:", file=sys.stderr)
        for f, ln in list(leaks.items())[:20]:
            print(f"  {f}: {ln}", file=sys.stderr)
        return 1
    if wide_funcs == 0 and "avx2" in cpu.build_info()["isa_available"]:
        print("no wide instructions found at all: the check is not seeing the ISA code", file=sys.stderr)
        return 1
    print(f"ok: {funcs} functions, wide instructions only inside tg_avx2/tg_avx512 ({path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
