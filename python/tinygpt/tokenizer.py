"""GPT-2 byte-level BPE tokenizer in pure Python (+ the `regex` package), equal to tiktoken's `gpt2`.

Reads vocab.json + merges.txt (Hugging Face names) or encoder.json + vocab.bpe (OpenAI names).
Lone surrogates in a str are replaced by U+FFFD before encoding, as tiktoken does.
"""
from __future__ import annotations

import codecs
import json
from pathlib import Path
from typing import Iterable, Sequence

import regex

from .errors import WeightsError

EOT = "<|endoftext|>"
PATTERN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
_CACHE_LIMIT = 200_000


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
        self._cache: dict[str, tuple[int, ...]] = {}

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

    def _encode_piece(self, piece: str) -> tuple[int, ...]:
        ids = self._cache.get(piece)
        if ids is None:
            word = piece.encode("utf-8").decode("latin-1").translate(self._byte_table)
            ids = self._bpe(word)
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[piece] = ids
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode text with `<|endoftext|>` treated as plain characters."""
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        out: list[int] = []
        ext, piece_ids = out.extend, self._encode_piece
        for piece in PATTERN.findall(text):
            ext(piece_ids(piece))
        return out

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
    raise ValueError(f"token id {i} is outside the vocabulary (0..{n - 1})")


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
