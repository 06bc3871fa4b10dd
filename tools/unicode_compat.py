"""Which code points does tiktoken classify differently from tinygpt's pre-tokenizer? tiktoken's Rust regex
carries older Unicode tables than the `regex` package; tinygpt treats the letters and digits it lacks as
unassigned (tokenizer.NEWER_LETTERS_DIGITS). This scans every code point with a probe whose pieces differ
by class ("a" + c + "1" + c + "'s": letter, digit and other split it three ways) and prints the code points
where the ids differ, as ranges.

  python tools/unicode_compat.py          # print the ranges tinygpt would need with GPT-2's plain pattern
  python tools/unicode_compat.py --check  # exit 1 if tinygpt's tokenizer differs from tiktoken anywhere
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "python"), str(ROOT / "tests")]

from tiny_model import tiktoken_gpt2, vocab_dir  # noqa: E402

from tinygpt import tokenizer as T  # noqa: E402


def differing(tok, enc, cps) -> list[int]:
    bad = []
    for cp in cps:
        c = chr(cp)
        p = "a" + c + "1" + c + "'s"
        if enc.encode_ordinary(p) != tok.encode_ordinary(p):
            bad.append(cp)
    return bad


def main() -> int:
    v = vocab_dir()
    tok = T.Tokenizer.from_files(v / "encoder.json", v / "vocab.bpe")
    enc = tiktoken_gpt2()
    cps = [cp for cp in range(0x110000) if not 0xD800 <= cp < 0xE000]
    if "--check" in sys.argv:
        bad = differing(tok, enc, cps)
        print(f"{len(bad)} code points differ from tiktoken" + (f": {[hex(b) for b in bad[:20]]}" if bad else ""))
        return 1 if bad else 0
    T.PATTERN = T._FAST_PATTERN  # the regex package's own classes everywhere
    T._NEWER_CHARS = frozenset()
    ranges: list[list[int]] = []
    for cp in differing(tok, enc, cps):
        if ranges and ranges[-1][1] + 1 == cp:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    print(", ".join(f"(0x{a:X}, 0x{b:X})" for a, b in ranges))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
