"""Normalization before detection: what an obfuscated attack hides, made visible.

`normalize(text)` returns the text a detector should see plus what it had to undo:
- Unicode NFKC (full-width letters, ligatures, compatibility forms);
- zero-width and invisible characters removed (ZWSP/ZWNJ/ZWJ, word joiner, BOM, soft hyphen, bidi controls,
  Unicode tag characters that smuggle ASCII);
- homoglyphs folded to ASCII (Cyrillic/Greek look-alikes of Latin letters: "Іgnоrе" -> "Ignore");
- wrappers decoded and appended: base64 runs that decode to readable UTF-8, rot13 (when the decoded text reads
  more like English than the original, or the text names rot13), and leetspeak (`1gn0r3 pr3v10u5` -> `ignore previous`).
The decoded parts are appended after the folded text, so a detector sees both the cover text and the payload.
"""
from __future__ import annotations

import base64
import binascii
import codecs
import re
import unicodedata
from typing import NamedTuple

# Invisible: zero-width space/joiners, LRM/RLM, bidi embeddings/overrides/isolates, word joiner..invisible plus,
# BOM, soft hyphen, Mongolian vowel separator, and the Unicode tag block (U+E0000..U+E007F, "ASCII smuggling").
_INVISIBLE = re.compile("[\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff\U000e0000-\U000e007f]")
_TAG_CHARS = re.compile("[\U000e0020-\U000e007e]")

# Look-alikes of Latin letters (Cyrillic, Greek, a few Latin-extended and symbols) -> ASCII.
HOMOGLYPHS = {
    "а": "a", "е": "e", "о": "o", "р": "p", "с": "c", "у": "y", "х": "x", "і": "i", "ј": "j", "ѕ": "s",
    "ԁ": "d", "ɡ": "g", "һ": "h", "ӏ": "l", "ո": "n", "ս": "u", "ԛ": "q", "ԝ": "w", "ᴠ": "v", "ʏ": "y",
    "А": "A", "В": "B", "Е": "E", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P", "С": "C", "Т": "T",
    "Х": "X", "І": "I", "Ј": "J", "Ѕ": "S", "Ү": "Y", "Ԁ": "D", "Ԍ": "G", "Ԛ": "Q", "Ԝ": "W",
    "α": "a", "ο": "o", "ρ": "p", "ν": "v", "ι": "i", "κ": "k", "τ": "t", "υ": "u", "χ": "x", "ε": "e",
    "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N", "Ο": "O",
    "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X",
    "ı": "i", "ȷ": "j", "ℓ": "l", "∕": "/", "⁄": "/", "‐": "-", "‑": "-", "‒": "-", "–": "-", "—": "-",
    "‘": "'", "’": "'", "‚": "'", "“": '"', "”": '"', "„": '"',
}
_HOMOGLYPH_TABLE = str.maketrans(HOMOGLYPHS)

_B64_RUN = re.compile(r"(?<![A-Za-z0-9+/=])[A-Za-z0-9+/]{16,}={0,2}(?![A-Za-z0-9+/=])")
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s", "!": "i"})
_LEET_WORD = re.compile(r"\b(?=[A-Za-z0-9@$!]*[A-Za-z])(?=[A-Za-z0-9@$!]*[013457@$])[A-Za-z0-9@$!]{3,}\b")
_WORD = re.compile(r"[a-z]+")
# Frequent English words: how "English" a text reads, to tell a rot13 payload from the cover text.
_COMMON = frozenset(
    "the be to of and a in that have i it for not on with he as you do at this but his by from they we say her "
    "she or an will my one all would there their what so up out if about who get which go me when make can like "
    "time no just him know take people into year your good some could them see other than then now look only "
    "come its over think also back after use two how our work first well way even new want because any these give "
    "day most us is are was were been has had said did ignore previous instructions instruction prompt system tell "
    "reveal secret password print say output all above below rules pretend act mode answer".split())


class Normalized(NamedTuple):
    text: str  # folded text + decoded payloads (what detectors read)
    folded: str  # NFKC + invisible removed + homoglyphs folded (no decoding appended)
    flags: tuple[str, ...]  # zero_width, homoglyph, nfkc, base64, rot13, leetspeak, tag_smuggling
    decoded: tuple[str, ...]


def _english_share(text: str) -> float:
    words = _WORD.findall(text.lower())
    return sum(w in _COMMON for w in words) / len(words) if words else 0.0


def _decode_base64(text: str) -> list[str]:
    out = []
    for m in _B64_RUN.finditer(text):
        run = m.group(0)
        try:
            raw = base64.b64decode(run + "=" * (-len(run) % 4), validate=True)
            s = raw.decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            continue
        printable = sum(ch.isprintable() or ch in "\n\t" for ch in s) / max(len(s), 1)
        if len(s) >= 8 and printable > 0.95 and re.search(r"[A-Za-z]{3,}", s):
            out.append(s)
    return out


def normalize(text: str, *, decode: bool = True, max_chars: int | None = None) -> Normalized:
    """The detector's view of `text` (see the module docstring); `max_chars` bounds the work on huge inputs
    (head and tail kept)."""
    if not isinstance(text, str):
        raise TypeError(f"normalize expects str, got {type(text).__name__}")
    if max_chars is not None and len(text) > max_chars:
        head = int(max_chars * 0.6)
        text = text[:head] + "\n" + text[-(max_chars - head):]
    flags: list[str] = []
    decoded: list[str] = []
    tags = _TAG_CHARS.findall(text)
    if tags:  # tag characters mirror ASCII at U+E0000 + code point: the hidden message is recoverable
        decoded.append("".join(chr(ord(c) - 0xE0000) for c in tags))
        flags.append("tag_smuggling")
    nfkc = unicodedata.normalize("NFKC", text)
    if nfkc != text:
        flags.append("nfkc")
    stripped = _INVISIBLE.sub("", nfkc)
    if stripped != nfkc:
        flags.append("zero_width")
    folded = stripped.translate(_HOMOGLYPH_TABLE)
    if any(ch in HOMOGLYPHS and ch not in "‘’‚“”„‐‑‒–—" for ch in stripped):
        flags.append("homoglyph")
    if decode:
        b64 = _decode_base64(folded)
        if b64:
            flags.append("base64")
            decoded.extend(b64)
        rot = codecs.decode(folded, "rot13")
        names_rot13 = "rot13" in folded.lower() or "rot-13" in folded.lower()
        if names_rot13 or _english_share(rot) > max(0.2, _english_share(folded) + 0.15):
            flags.append("rot13")
            decoded.append(rot)
        leet_words = _LEET_WORD.findall(folded)
        if len(leet_words) >= 2:
            unleet = _LEET_WORD.sub(lambda m: m.group(0).translate(_LEET), folded)
            if _english_share(unleet) > _english_share(folded):
                flags.append("leetspeak")
                decoded.append(unleet)
    view = folded if not decoded else folded + "\n" + "\n".join(decoded)
    return Normalized(view, folded, tuple(flags), tuple(decoded))
