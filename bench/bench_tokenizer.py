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
    import random
    rnd = random.Random(0)
    pick = lambda alphabet, n: "".join(rnd.choice(alphabet) for _ in range(n))  # noqa: E731
    return {"repeated_a": "a" * n_bytes, "random_lower": pick("abcdefghijklmnopqrstuvwxyz", n_bytes),
            "random_digits": pick("0123456789", n_bytes), "random_punct": pick("!#$%&()*+,-./:;<=>?@[]^_{|}~", n_bytes),
            "random_cjk": "".join(chr(rnd.randrange(0x4E00, 0xA000)) for _ in range(n_bytes // 3))}


PATHOLOGICAL = pathological_texts()


@pytest.mark.parametrize("case", sorted(PATHOLOGICAL))
def bench_tokenizer_pathological_tinygpt(benchmark, case):
    v = vocab_dir()
    tok = Tokenizer.from_files(v / "encoder.json", v / "vocab.bpe")
    text = PATHOLOGICAL[case]
    ids = run_pedantic(benchmark, lambda: tok.encode(text), rounds=2)
    benchmark.extra_info.update(kernel="tokenizer_pathological", impl="tinygpt", case=case, tokens=len(ids),
                                mb_s=round(len(text.encode()) / benchmark.stats.stats.median / 1e6, 3))


@pytest.mark.parametrize("case", sorted(PATHOLOGICAL))
def bench_tokenizer_pathological_tiktoken(benchmark, case):
    """(1 MB of spaces is not a case: tiktoken 0.14's regex overflows its stack and panics on it.)"""
    pytest.importorskip("tiktoken", reason="peer not installed: pip install tiktoken")
    enc = tiktoken_gpt2()
    text = PATHOLOGICAL[case]
    ids = run_pedantic(benchmark, lambda: enc.encode_ordinary(text), rounds=2)
    benchmark.extra_info.update(kernel="tokenizer_pathological", impl="tiktoken", case=case, tokens=len(ids),
                                mb_s=round(len(text.encode()) / benchmark.stats.stats.median / 1e6, 3))
