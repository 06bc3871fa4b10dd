"""Tokenizer encode throughput (MB/s) on ~1 MB of English-like text, beside tiktoken's `gpt2` on the same
files, single thread. The text is built from this repository's own English prose (README, docstrings) so it
has realistic word and punctuation statistics without shipping a corpus."""
import sys
from pathlib import Path

import pytest

from conftest import run_pedantic

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from tiny_model import tiktoken_gpt2, vocab_dir  # noqa: E402

from tinygpt.tokenizer import Tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def english_text(n_bytes=1_000_000) -> str:
    parts = [ROOT / "README.md"] + sorted((ROOT / "python" / "tinygpt").rglob("*.py"))
    base = "\n".join(p.read_text(encoding="utf-8") for p in parts)
    # vary the repeats (numbers, case) so the BPE cache does not see only identical words
    out, i = [], 0
    while sum(map(len, out)) < n_bytes:
        out.append(base.replace("the ", f"the{'' if i % 3 else ' '}").replace("tinygpt", f"tinygpt{i % 97}"))
        i += 1
    return "".join(out)[:n_bytes]


@pytest.fixture(scope="module")
def text():
    return english_text()


def bench_tokenizer_tinygpt(benchmark, text):
    v = vocab_dir()
    tok = Tokenizer.from_files(v / "encoder.json", v / "vocab.bpe")  # a fresh cache: the first round is cold
    ids = run_pedantic(benchmark, lambda: tok.encode(text), rounds=3)
    benchmark.extra_info.update(kernel="tokenizer", impl="tinygpt", mb=round(len(text.encode()) / 1e6, 2),
                                tokens=len(ids), mb_s=round(len(text.encode()) / benchmark.stats.stats.median / 1e6, 2))


def bench_tokenizer_tiktoken(benchmark, text):
    pytest.importorskip("tiktoken", reason="peer not installed: pip install tiktoken")
    enc = tiktoken_gpt2()
    ids = run_pedantic(benchmark, lambda: enc.encode_ordinary(text), rounds=3)
    v = vocab_dir()
    assert ids == Tokenizer.from_files(v / "encoder.json", v / "vocab.bpe").encode(text)
    benchmark.extra_info.update(kernel="tokenizer", impl="tiktoken", mb=round(len(text.encode()) / 1e6, 2),
                                tokens=len(ids), mb_s=round(len(text.encode()) / benchmark.stats.stats.median / 1e6, 2))


# -- pathological input: 1 MB of one character class, one pre-token (a server's worst prompt) ----------------
def pathological_texts(n_bytes=1_000_000) -> dict[str, str]:
    """random_accented draws from all of U+00C0-U+024F, as tests/test_tokenizer.py does: its two symbols (x and
    the division sign) cut the run into ~200-letter pre-tokens; random_accented_letters keeps only the letters,
    one pre-token."""
    import random
    rnd = random.Random(0)
    pick = lambda alphabet, n: "".join(rnd.choice(alphabet) for _ in range(n))  # noqa: E731
    latin = [chr(c) for c in range(0xC0, 0x250)]
    return {"repeated_a": "a" * n_bytes, "random_lower": pick("abcdefghijklmnopqrstuvwxyz", n_bytes),
            "random_digits": pick("0123456789", n_bytes), "random_punct": pick("!#$%&()*+,-./:;<=>?@[]^_{|}~", n_bytes),
            "random_cjk": "".join(chr(rnd.randrange(0x4E00, 0xA000)) for _ in range(n_bytes // 3)),
            "random_cyrillic": pick([chr(c) for c in range(0x430, 0x450)], n_bytes // 2),
            "random_accented": pick(latin, n_bytes // 2),
            "random_accented_letters": pick([c for c in latin if c.isalpha()], n_bytes // 2),
            "repeated_e_acute": "\u00e9" * (n_bytes // 2), "repeated_emoji": "\U0001f642" * (n_bytes // 4)}


PATHOLOGICAL = pathological_texts()


def same_run_ratio(ours, theirs, rounds=3) -> float:
    """Best time of ours over best time of theirs, the two alternating, so that both see the same load."""
    import time
    a = b = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        ours()
        a = min(a, time.perf_counter() - t)
        t = time.perf_counter()
        theirs()
        b = min(b, time.perf_counter() - t)
    return a / b


@pytest.mark.parametrize("case", sorted(PATHOLOGICAL))
def bench_tokenizer_pathological_tinygpt(benchmark, case):
    """extra_info x_tiktoken: tinygpt's time over tiktoken's in alternating rounds (issue 14: <= 5)."""
    v = vocab_dir()
    tok = Tokenizer.from_files(v / "encoder.json", v / "vocab.bpe")
    text = PATHOLOGICAL[case]
    ids = run_pedantic(benchmark, lambda: tok.encode(text), rounds=2)
    benchmark.extra_info.update(kernel="tokenizer_pathological", impl="tinygpt", case=case, tokens=len(ids),
                                mb_s=round(len(text.encode()) / benchmark.stats.stats.median / 1e6, 3))
    try:
        enc = tiktoken_gpt2()
    except ImportError:
        return
    assert ids == enc.encode_ordinary(text)
    benchmark.extra_info["x_tiktoken"] = round(same_run_ratio(lambda: tok.encode(text),
                                                              lambda: enc.encode_ordinary(text)), 2)


@pytest.mark.parametrize("case", sorted(PATHOLOGICAL))
def bench_tokenizer_pathological_tiktoken(benchmark, case):
    """(1 MB of spaces is not a case: tiktoken 0.14's regex overflows its stack and panics on it.)"""
    pytest.importorskip("tiktoken", reason="peer not installed: pip install tiktoken")
    enc = tiktoken_gpt2()
    text = PATHOLOGICAL[case]
    ids = run_pedantic(benchmark, lambda: enc.encode_ordinary(text), rounds=2)
    benchmark.extra_info.update(kernel="tokenizer_pathological", impl="tiktoken", case=case, tokens=len(ids),
                                mb_s=round(len(text.encode()) / benchmark.stats.stats.median / 1e6, 3))
