"""Token-aware chunking with overlap, in the embedding model's own tokenizer.

A document becomes windows of at most `max_tokens` word pieces; consecutive windows share about `overlap_tokens`
pieces so a sentence cut by one boundary is whole in the neighbouring chunk. Boundaries are snapped to word starts
(a window never begins or ends inside a whitespace-delimited word), and each chunk records its character span
in the document, so `text[start:end] == chunk text` and a hit maps back to the exact passage.

Pure functions: no model, no Ray. The tokenizer is the `tokenizers` (Rust) one read from the model directory's
`tokenizer.json`, the same file sentence-transformers tokenizes with, so a chunk of `max_tokens` pieces is encoded
whole when `max_tokens + 2` (the [CLS]/[SEP] pieces) fits the model's `max_seq_length`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence


@dataclass(frozen=True)
class Chunk:
    ordinal: int  # position in the document, 0-based
    start: int  # character span in the document text: text[start:end]
    end: int
    n_tokens: int
    text: str


def load_tokenizer(model_dir: str | Path):
    """The model's fast tokenizer, without truncation or padding (chunking decides the lengths)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return tok


def _word_start(word_ids: Sequence[int], i: int, floor: int) -> int:
    """Move index i back to the first piece of its word, never below `floor`."""
    while i > floor and word_ids[i] == word_ids[i - 1]:
        i -= 1
    return i


def windows(word_ids: Sequence[int], max_tokens: int, overlap_tokens: int) -> list[tuple[int, int]]:
    """Token windows [s, e) over n pieces: at most max_tokens each, ~overlap_tokens shared, cut between words.

    A single word longer than max_tokens is cut inside the word (the only way to respect the bound).
    """
    if max_tokens < 1:
        raise ValueError("max_tokens must be >= 1")
    if not 0 <= overlap_tokens < max_tokens:
        raise ValueError("overlap_tokens must be >= 0 and < max_tokens")
    n = len(word_ids)
    out: list[tuple[int, int]] = []
    s = 0
    while s < n:
        e = min(s + max_tokens, n)
        if e < n:
            snapped = _word_start(word_ids, e, s)  # do not end inside a word
            e = snapped if snapped > s else e  # unless one word fills the window
        out.append((s, e))
        if e >= n:
            break
        nxt = max(e - overlap_tokens, s + 1)
        snapped = _word_start(word_ids, nxt, s)
        s = snapped if snapped > s else nxt
    return out


def whitespace_words(offsets: Sequence[tuple[int, int]]) -> list[int]:
    """Group pieces into whitespace-delimited words: a new word starts where a piece does not touch the previous
    one. (The tokenizer's own word ids split punctuation off, so "end." would allow a cut before the period.)"""
    groups, g = [], 0
    for i, (start, _) in enumerate(offsets):
        if i and start != offsets[i - 1][1]:
            g += 1
        groups.append(g)
    return groups


def chunk_encoding(text: str, offsets: Sequence[tuple[int, int]], max_tokens: int, overlap_tokens: int) -> list[Chunk]:
    """Chunks of one document from its tokenization (offsets are character spans of each piece in `text`)."""
    if not offsets:  # nothing the tokenizer keeps (empty or whitespace only): the document is its one chunk
        return [Chunk(0, 0, len(text), 0, text)]
    chunks = []
    for i, (s, e) in enumerate(windows(whitespace_words(offsets), max_tokens, overlap_tokens)):
        start, end = offsets[s][0], offsets[e - 1][1]
        chunks.append(Chunk(i, start, end, e - s, text[start:end]))
    return chunks


def chunk_texts(tokenizer: Any, texts: list[str], max_tokens: int, overlap_tokens: int) -> list[list[Chunk]]:
    """Chunk many documents; the tokenizer encodes them in one parallel batch."""
    encodings = tokenizer.encode_batch([str(t) for t in texts], add_special_tokens=False)
    return [chunk_encoding(t, enc.offsets, max_tokens, overlap_tokens)
            for t, enc in zip(texts, encodings)]


def chunk_text(tokenizer: Any, text: str, max_tokens: int, overlap_tokens: int) -> list[Chunk]:
    return chunk_texts(tokenizer, [text], max_tokens, overlap_tokens)[0]


def chunk_id(doc_id: str, ordinal: int) -> str:
    """Deterministic and readable: the document's id and the chunk's position in it."""
    return f"{doc_id}:{ordinal:04d}"
