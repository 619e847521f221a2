"""Tokens a server returns -> token ids of the local tokenizer, matched by the bytes each token spells.

Servers describe a sampled token in different ways, all read here:

    llama.cpp   {"id", "token", "bytes", "logprob", "top_logprobs": [{"id", "token", "bytes", "logprob"}]}
                inside choices[].logprobs.content, on /v1/completions and /v1/chat/completions
    OpenAI chat the same without "id"; partial UTF-8 tokens only in "bytes"
    vLLM, OpenAI legacy completions  {"tokens": [...], "token_logprobs": [...], "top_logprobs": [{str: lp}]}
                (vLLM with --return-tokens-as-token-ids names tokens "token_id:123")

A server id is trusted only when the local token of that id spells the same bytes, so a server
running another vocabulary cannot slip wrong ids in; control tokens (eos), which llama.cpp and
vLLM render as the empty string, are trusted by id alone. Everything else is looked up by bytes.
"""
from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field
from functools import lru_cache


@dataclass
class Token:
    """One token as the server described it."""
    text: str
    raw: bytes | None = None  # the bytes it spells, when the server says (llama.cpp, OpenAI)
    id: int | None = None  # the server's id, when it says (llama.cpp)
    logprob: float | None = None


@dataclass
class Step:
    """One decoding step: the chosen token and the server's top alternatives, most likely first."""
    chosen: Token
    top: list[Token] = field(default_factory=list)


@lru_cache(maxsize=1)
def _byte_level_table() -> dict[str, int]:
    """GPT-2's byte <-> printable-character table, inverted: the alphabet of byte-level BPE pieces."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def piece_bytes(tok) -> list[bytes]:
    """The bytes each local token id spells (special tokens: their text)."""
    table = _byte_level_table()
    special = {i for i, t in tok.added_tokens_decoder.items()}
    out = []
    for i, piece in enumerate(tok.convert_ids_to_tokens(list(range(len(tok))))):
        piece = piece or ""
        if i in special:
            out.append(piece.encode())
        elif all(ch in table for ch in piece):  # byte-level BPE (GPT-2, Llama 3, Qwen, SmolLM)
            out.append(bytes(table[ch] for ch in piece))
        elif m := re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", piece):  # SentencePiece byte fallback
            out.append(bytes([int(m.group(1), 16)]))
        else:  # SentencePiece: '▁' is a space
            out.append(piece.replace("\u2581", " ").encode())
    return out


def _raw_of(text: str, raw) -> bytes:
    if raw is not None:
        return bytes(raw)
    if text.startswith("bytes:"):  # OpenAI's spelling of a partial UTF-8 token: bytes:\xe2\x80
        return codecs.escape_decode(text[len("bytes:"):].encode())[0]
    return text.encode("utf-8")


class TokenMap:
    """Maps server tokens to local ids (None: the local vocabulary cannot represent it)."""

    def __init__(self, tok):
        self.pieces = piece_bytes(tok)
        self.control = {i for i, t in tok.added_tokens_decoder.items() if t.special}
        self.eos_id = tok.eos_token_id
        self.by_bytes: dict[bytes, int] = {}
        for i, b in enumerate(self.pieces):  # ordinary tokens win a tie with a special token of the same text
            if i not in self.control:
                self.by_bytes.setdefault(b, i)
        for i in sorted(self.control):
            self.by_bytes.setdefault(self.pieces[i], i)

    def local_id(self, t: Token) -> int | None:
        if t.text.startswith("token_id:") and t.text[9:].isdigit():
            i = int(t.text[9:])
            return i if i < len(self.pieces) else None
        raw = _raw_of(t.text, t.raw)
        if t.id is not None and 0 <= t.id < len(self.pieces) and (
                self.pieces[t.id] == raw or (not raw and t.id in self.control)):
            return t.id
        return self.by_bytes.get(raw) if raw else None

    def is_stop(self, t: Token) -> bool:
        """Whether this token is an end of sequence (a control token, or text a server left empty)."""
        i = self.local_id(t)
        return i in self.control if i is not None else not _raw_of(t.text, t.raw)


def parse_steps(logprobs: dict | None) -> list[Step] | None:
    """A choice's `logprobs` object in any of the shapes above -> steps, or None when it holds none."""
    if not logprobs:
        return None
    if logprobs.get("content") is not None:  # llama.cpp, and every chat endpoint
        return [Step(_token(e), [_token(a) for a in e.get("top_logprobs") or []]) for e in logprobs["content"]]
    tokens = logprobs.get("tokens")
    if tokens is None:
        return None
    chosen = logprobs.get("token_logprobs") or [None] * len(tokens)
    tops = logprobs.get("top_logprobs") or [None] * len(tokens)
    return [Step(Token(t, logprob=lp), [Token(s, logprob=v) for s, v in sorted((top or {}).items(), key=lambda x: -x[1])])
            for t, lp, top in zip(tokens, chosen, tops)]


def _token(e: dict) -> Token:
    return Token(e.get("token") or "", e.get("bytes"), e.get("id"), e.get("logprob"))
