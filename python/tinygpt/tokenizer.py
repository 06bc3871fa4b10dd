"""GPT-2 byte-level BPE tokenizer in pure Python (+ the `regex` package), equal to tiktoken's `gpt2`.

Reads vocab.json + merges.txt (Hugging Face names) or encoder.json + vocab.bpe (OpenAI names).
Lone surrogates in a str are replaced by U+FFFD before encoding, as tiktoken does.
"""
from __future__ import annotations

import codecs
import heapq
import json
from itertools import accumulate, chain
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import regex

from .errors import InvalidArgumentError, WeightsError

EOT = "<|endoftext|>"
# Unicode policy: pre-tokens are split with the character classes of Unicode 16.0, the tables of tiktoken 0.14
# (Rust regex), not those of the `regex` package (Unicode 17.0 in 2026.11). The letters and digits that Unicode
# 17.0 added are treated as unassigned (the "other" class), as tiktoken sees them. Listed as ranges; made and
# checked by tools/unicode_compat.py, which scans every letter, digit and space against tiktoken (also a test).
UNICODE_VERSION = "16.0"
NEWER_LETTERS_DIGITS = (
    (0x558, 0x558), (0x58B, 0x58C), (0x88F, 0x88F), (0xC5C, 0xC5C), (0xCDC, 0xCDC), (0x208F, 0x208F),
    (0x209D, 0x209F), (0xA7CE, 0xA7CF), (0xA7D2, 0xA7D2), (0xA7D4, 0xA7D4), (0xA7DD, 0xA7DD), (0xA7E2, 0xA7E2),
    (0xA7F1, 0xA7F1), (0xAB6C, 0xAB6D), (0x107BB, 0x107BF), (0x10940, 0x10959), (0x10EC5, 0x10EC7),
    (0x10ED9, 0x10EEE), (0x11B0A, 0x11B0A), (0x11DB0, 0x11DDB), (0x11DE0, 0x11DE9), (0x11DF1, 0x11DF1),
    (0x1246F, 0x1246F), (0x12475, 0x1247F), (0x12550, 0x12686), (0x16EA0, 0x16EB8), (0x16EBB, 0x16ED3),
    (0x16FF2, 0x16FF6), (0x187F8, 0x187FF), (0x18CD6, 0x18CDA), (0x18D09, 0x18D20), (0x18D80, 0x18DF2),
    (0x18E00, 0x19191), (0x191A0, 0x191D2), (0x1B123, 0x1B128), (0x1B168, 0x1B168), (0x1D6A6, 0x1D6A6),
    (0x1DF1F, 0x1DF24), (0x1DF2B, 0x1DF81), (0x1DF90, 0x1DF96), (0x1DFCD, 0x1DFFF), (0x1E6C0, 0x1E6DE),
    (0x1E6E0, 0x1E6E2), (0x1E6E4, 0x1E6E5), (0x1E6E7, 0x1E6ED), (0x1E6F0, 0x1E6F4), (0x1E6FE, 0x1E6FF),
    (0x2B73A, 0x2B73F), (0x2B81E, 0x2B81E), (0x2CEA2, 0x2CEAD), (0x323B0, 0x33479), (0x3D000, 0x3FC3F),
)
_NEW = "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in NEWER_LETTERS_DIGITS)
PATTERN = regex.compile(
    r"""(?V1)'s|'t|'re|'ve|'m|'ll|'d| ?[\p{L}--[%s]]+| ?[\p{N}--[%s]]+| ?[[^\s\p{L}\p{N}]%s]+|\s+(?!\S)|\s+"""
    % (_NEW, _NEW, _NEW))
# The set operations make PATTERN ~2x slower, so text without any of those code points (nearly all) is split
# by GPT-2's original pattern, which gives the same pieces there.
_FAST_PATTERN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
_NEWER_CHARS = frozenset(chr(c) for a, b in NEWER_LETTERS_DIGITS for c in range(a, b + 1))
_NEWER_TABLE = None  # code point -> in NEWER_LETTERS_DIGITS, built at the first long non-ASCII text
# The piece -> ids cache is bounded in (approximate) bytes, and long pieces skip it: a prompt of many distinct
# long words must not grow memory. Pieces up to _SHORT symbols use the simple merge loop (quadratic in the
# piece, fast for the short words of real text); longer ones the heap merge, O(n log n) for any input.
_CACHE_BYTES = 32 << 20
_CACHE_MAX_PIECE = 64
_SHORT = 32
_K = 1 << 32  # pair key stride (ids are below it)
_MAX_VOCAB = 1 << 20  # as config.LIMITS["n_vocab"]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable-unicode-char map (bytes that print as themselves keep their code)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def find_vocab_files(directory: Path) -> tuple[Path, Path] | None:
    for enc, mer in (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")):
        e, m = Path(directory) / enc, Path(directory) / mer
        if e.is_file() and m.is_file():
            return e, m
    return None


class Tokenizer:
    """encode(str) -> list[int], decode(ids) -> str. Thread-safe for concurrent encode/decode."""

    def __init__(self, encoder: dict[str, int], merges: Sequence[tuple[str, str]]):
        bad = next((v for v in encoder.values() if type(v) is not int or not 0 <= v < _MAX_VOCAB), None)
        if bad is not None:  # ids size the decode table: a hostile vocab.json must not ask for 10^12 entries
            raise WeightsError(f"tokenizer: token id {str(bad)[:40]} is not an integer in 0..{_MAX_VOCAB - 1}")
        self.encoder = encoder
        self.n_vocab = max(encoder.values()) + 1 if encoder else 0
        self.eot_id = encoder.get(EOT)
        byte_enc = _bytes_to_unicode()
        self._byte_table = byte_enc  # str.translate table over latin-1 text (ordinal -> printable char)
        byte_dec = {c: b for b, c in byte_enc.items()}
        self._id_bytes: list[bytes] = [b""] * self.n_vocab
        for tok, i in encoder.items():
            try:
                self._id_bytes[i] = bytes(byte_dec[c] for c in tok)
            except KeyError:
                self._id_bytes[i] = tok.encode("utf-8")  # added tokens stored as plain text
        self.ranks = {pair: r for r, pair in enumerate(merges)}
        # the heap merge works on ids: pair (a, b) -> rank as one int key a * _K + b, rank -> merged id
        self._char_id = {c: encoder[c] for c in byte_enc.values() if c in encoder}
        self._byte_ids = [self._char_id.get(byte_enc[b], -1) for b in range(256)]
        # bytes -> their token ids in one C call, when those ids fit in a byte (GPT-2's do)
        self._byte_tr = bytes(self._byte_ids) if all(0 <= i < 256 for i in self._byte_ids) else None
        self._len = [len(b) for b in self._id_bytes]  # token id -> its length in bytes
        self._byte_pair_rank = None  # rank of each byte pair (x * 256 + y), built at the first long input
        self._pair_rank: dict[int, int] = {}
        self._merged_id: list[int] = []
        self._left_id: list[int] = []  # rank -> the pair it merges
        self._right_id: list[int] = []
        made = set(self._char_id.values())  # tokens available so far: the bytes, then each merge's result
        for r, (a, b) in enumerate(merges):
            ia, ib, im = encoder.get(a), encoder.get(b), encoder.get(a + b)
            if ia is None or ib is None or im is None or ia not in made or ib not in made:
                raise WeightsError(f"tokenizer: merge {r + 1} ({a!r} {b!r}) uses or makes a token that is not in "
                                   "the vocabulary or not made by an earlier merge (corrupt merges file)")
            self._pair_rank.setdefault(ia * _K + ib, r)
            self._merged_id.append(im)
            self._left_id.append(ia)
            self._right_id.append(ib)
            made.add(im)
        self._cache: dict[str, tuple[int, ...]] = {}
        self._cache_bytes = 0

    @classmethod
    def from_files(cls, encoder_path: Path, merges_path: Path) -> "Tokenizer":
        try:
            encoder = json.loads(Path(encoder_path).read_text(encoding="utf-8"))
            lines = Path(merges_path).read_text(encoding="utf-8").split("\n")
        except FileNotFoundError as e:
            raise WeightsError(f"tokenizer file not found: {e.filename}") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise WeightsError(f"tokenizer files are corrupt ({encoder_path}, {merges_path}): {e}") from None
        if not isinstance(encoder, dict) or not all(isinstance(v, int) for v in encoder.values()):
            raise WeightsError(f"{encoder_path}: expected a JSON object mapping token strings to ids")
        merges = []
        for ln in lines:
            if not ln or ln.startswith("#version"):
                continue
            parts = ln.split(" ")
            if len(parts) != 2:
                raise WeightsError(f"{merges_path}: bad merge line {ln!r}")
            merges.append((parts[0], parts[1]))
        return cls(encoder, merges)

    @classmethod
    def from_dir(cls, directory: Path) -> "Tokenizer":
        found = find_vocab_files(directory)
        if found is None:
            raise WeightsError(
                f"{directory}: no tokenizer files (vocab.json + merges.txt, or encoder.json + vocab.bpe); "
                "copy the GPT-2 vocabulary next to the weights")
        return cls.from_files(*found)

    # -- encoding -------------------------------------------------------------------------------
    def _bpe(self, word: str) -> tuple[int, ...]:
        parts = list(word)
        ranks = self.ranks
        while len(parts) > 1:
            best, best_rank = -1, None
            for i in range(len(parts) - 1):
                r = ranks.get((parts[i], parts[i + 1]))
                if r is not None and (best_rank is None or r < best_rank):
                    best, best_rank = i, r
            if best < 0:
                break
            a, b = parts[best], parts[best + 1]
            merged, i, out = a + b, 0, []
            while i < len(parts):  # merge every occurrence of the pair, left to right
                if i < len(parts) - 1 and parts[i] == a and parts[i + 1] == b:
                    out.append(merged)
                    i += 2
                else:
                    out.append(parts[i])
                    i += 1
            parts = out
        enc = self.encoder
        return tuple(enc[p] for p in parts)

    def _bpe_long(self, data: bytes) -> tuple[int, ...]:
        return tuple(self._bpe_many([data])[0])

    def _bpe_many(self, raws: list[bytes]) -> list[list[int]]:
        """The same merges as _bpe in O(n log n) for any input, on token ids, for many pieces at once: they are
        laid end to end with one separator (id -2, in no pair) between them, which saves the fixed costs per
        piece. sym[t] is the id of the token that starts at byte t, -1 inside a token; a token ends at its
        start plus its length, and start[t] is where the token that ends at byte t begins (-1: at t), so no
        per-byte linked list is built. The positions of each candidate pair wait in a bucket per rank, and a
        heap yields the lowest rank present. A bucket is merged left to right, as _bpe does. Merging creates
        only pairs of higher rank (checked at load: a merge's parts come from earlier merges), so a bucket
        never grows while it is merged. A position is stale when the pair now there is not the bucket's pair.
        The first buckets (byte pairs) of a long input are built with NumPy: most of the time on input that
        hardly merges."""
        get, merged, left, right, blen = self._pair_rank.get, self._merged_id, self._left_id, self._right_id, self._len
        data = b"\0".join(raws)
        n = len(data)
        ends = list(accumulate(len(r) + 1 for r in raws))  # one past each piece's separator
        sym = list(data.translate(self._byte_tr)) if self._byte_tr is not None else [self._byte_ids[b] for b in data]
        for e in ends[:-1]:
            sym[e - 1] = -2
        buckets: dict[int, list[int]] = {}
        if n < 512:  # NumPy's fixed costs outweigh its speed on a short input
            for i, r in enumerate(map(get, [x * _K + y for x, y in zip(sym, sym[1:])])):  # -2 makes no key
                if r is not None:
                    b = buckets.get(r)
                    if b is None:
                        buckets[r] = [i]
                    else:
                        b.append(i)
        else:
            if self._byte_pair_rank is None:  # rank of byte pair (x, y) at x * 256 + y
                bid = self._byte_ids
                self._byte_pair_rank = np.array([-1 if (r := get(x * _K + y)) is None else r
                                                 for x in bid for y in bid], dtype=np.int32)
            a = np.frombuffer(data, np.uint8)
            pair = a[:-1].astype(np.uint16)
            pair <<= 8
            pair |= a[1:]
            rk = self._byte_pair_rank[pair]  # pairs with a separator (a NUL byte here) are stale below
            idx = np.flatnonzero(rk >= 0)
            rv = rk[idx]
            order = np.argsort(rv, kind="stable")  # by rank, then position
            idx, rv = idx[order], rv[order]
            starts = np.flatnonzero(np.r_[True, rv[1:] != rv[:-1]]) if len(rv) else np.zeros(0, np.int64)
            pos, bounds = idx.tolist(), starts.tolist() + [len(idx)]
            buckets = {r: pos[b:e] for r, b, e in zip(rv[starts].tolist(), bounds, bounds[1:])}
        start = [-1] * n
        heap = list(buckets)
        heapq.heapify(heap)
        pop, push = heapq.heappop, heapq.heappush
        while heap:
            r = pop(heap)
            pos = buckets.pop(r)
            pos.sort()
            m, x, y = merged[r], left[r], right[r]
            lx, lm = blen[x], blen[m]
            for i in pos:
                # a live x at i is followed by a token (the pair was there), which starts at i + lx
                if sym[i] != x or sym[i + lx] != y:  # merged away, or a neighbour changed
                    continue
                sym[i], sym[i + lx] = m, -1
                k = i + lm
                start[k - 1] = i
                if k < n:
                    r2 = get(m * _K + sym[k])
                    if r2 is not None:
                        b = buckets.get(r2)
                        if b is None:
                            buckets[r2] = [i]
                            push(heap, r2)
                        else:
                            b.append(i)
                if i:
                    p = start[i - 1]
                    if p < 0:
                        p = i - 1
                    r2 = get(sym[p] * _K + m)
                    if r2 is not None:
                        b = buckets.get(r2)
                        if b is None:
                            buckets[r2] = [p]
                            push(heap, r2)
                        else:
                            b.append(p)
        out, b = [], 0
        for e in ends:
            out.append([s for s in sym[b:e - 1] if s >= 0])
            b = e
        return out  # lists: a tuple copy costs ~10% here, and only the cached ones need to be immutable

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode text with `<|endoftext|>` treated as plain characters."""
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        pattern = _FAST_PATTERN if text.isascii() or not self._has_newer(text) else PATTERN
        pieces = pattern.findall(text)
        parts = list(map(self._cache.get, pieces))
        if None in parts:
            self._fill(pieces, parts)
        return list(chain.from_iterable(parts))

    def _fill(self, pieces: list[str], parts: list) -> None:
        """Encodes the pieces the cache lacked (parts[i] is None), each distinct one once, the long ones in one
        _bpe_many call."""
        miss = [i for i, ids in enumerate(parts) if ids is None]
        todo: dict[str, Sequence[int]] = dict.fromkeys(pieces[i] for i in miss)
        long, raws = [], []
        for piece in todo:
            raw = piece.encode("utf-8")
            if len(raw) > _SHORT:
                long.append(piece)
                raws.append(raw)
            else:
                todo[piece] = self._bpe(raw.decode("latin-1").translate(self._byte_table))
        if long:
            todo.update(zip(long, self._bpe_many(raws)))
        cache = self._cache
        for piece, ids in todo.items():
            if len(piece) <= _CACHE_MAX_PIECE:
                todo[piece] = ids = tuple(ids)
                cost = 120 + 4 * len(piece) + 8 * len(ids)  # dict slot, str and tuple objects, roughly
                if self._cache_bytes + cost > _CACHE_BYTES:
                    cache.clear()
                    self._cache_bytes = 0
                cache[piece] = ids
                self._cache_bytes += cost
        for i in miss:
            parts[i] = todo[pieces[i]]

    @staticmethod
    def _has_newer(text: str) -> bool:
        """Whether text holds a code point of NEWER_LETTERS_DIGITS: a set test on short text, a NumPy table
        look-up on long text (~20x faster there than the set's per-character hashing)."""
        if len(text) < 256:
            return not _NEWER_CHARS.isdisjoint(text)
        global _NEWER_TABLE
        if _NEWER_TABLE is None:
            t = np.zeros(NEWER_LETTERS_DIGITS[-1][1] + 2, np.bool_)  # the last entry, False, for all above
            for a, b in NEWER_LETTERS_DIGITS:
                t[a:b + 1] = True
            _NEWER_TABLE = t
        cps = np.frombuffer(text.encode("utf-32-le"), np.uint32)
        return bool(_NEWER_TABLE[np.minimum(cps, len(_NEWER_TABLE) - 1)].any())

    def encode(self, text: str, allowed_special: Iterable[str] | str = ()) -> list[int]:
        """Encode text. Special tokens are plain text unless named in allowed_special (or it is "all")."""
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, got {type(text).__name__}")
        if allowed_special == "all":
            allowed = {EOT} if self.eot_id is not None else set()
        else:
            allowed = set(allowed_special)
            unknown = allowed - ({EOT} if self.eot_id is not None else set())
            if unknown:
                raise ValueError(f"unknown special tokens: {sorted(unknown)}")
        if not allowed or EOT not in text:
            return self.encode_ordinary(text)
        out: list[int] = []
        chunks = text.split(EOT)
        for i, chunk in enumerate(chunks):
            if i:
                out.append(self.eot_id)
            out.extend(self.encode_ordinary(chunk))
        return out

    # -- decoding -------------------------------------------------------------------------------
    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        table, n = self._id_bytes, self.n_vocab
        try:
            return b"".join(table[i] if 0 <= i < n else _bad_id(i, n) for i in ids)
        except TypeError:
            raise TypeError("decode() takes a sequence of ints") from None

    def decode(self, ids: Iterable[int]) -> str:
        """Bytes of the tokens as UTF-8; invalid sequences become U+FFFD (as tiktoken's decode)."""
        return self.decode_bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def stream_decoder(self) -> "StreamDecoder":
        return StreamDecoder(self)


def _bad_id(i: int, n: int) -> bytes:
    raise InvalidArgumentError(f"token id {i} is outside the vocabulary (0..{n - 1})")


class StreamDecoder:
    """Turns tokens into text as they arrive without ever splitting a UTF-8 character.

    Bytes of an unfinished character are held back until the next token completes it; a sequence
    that can never become valid is emitted as U+FFFD, the same text decode() gives for the whole.
    """

    def __init__(self, tokenizer: Tokenizer):
        self._tok = tokenizer
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token_id: int) -> str:
        return self._dec.decode(self._tok.decode_bytes((int(token_id),)))

    def flush(self) -> str:
        return self._dec.decode(b"", final=True)
