"""PII detection and redaction: regex candidates confirmed by validators, typed placeholders.

Pure Python (re, ipaddress, python-stdnum), no Spark import: the ingest stage calls `redact` inside a pandas
UDF on the executors, `bench/bench_pii.py` and `tests/test_pii.py` call it directly. A candidate only counts
when its validator agrees: cards pass the Luhn check and a known issuer prefix, IBANs their ISO 7064 mod-97
checksum, IP addresses parse with `ipaddress`, national ids pass their own check digits (python-stdnum), US SSNs
the SSA's structural rules. Phone numbers have no checksum: they need phone-like formatting (a `+`, a
parenthesized area code, an extension, dash/dot groups, three or more digit groups) or a phone word just before.

Overlaps are resolved by priority (SECRET, EMAIL, IBAN, CREDIT_CARD, national ids, IP_ADDRESS, PHONE), so a
card number is never also counted as a phone number.

Names, organisations, places, dates and street addresses (`NER_ENTITIES`) come from `pipelines.data.pii_ner`
(Presidio's analyzer over spaCy's English NER, plus pattern recognizers); this module only names them, so that
configs can be checked without loading a model. `apply` turns spans into text under a per-entity policy
(redact with a typed placeholder, pseudonymize with a consistent fake value per document, keep).
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Callable, Iterable

from stdnum import iban as _iban
from stdnum import luhn as _luhn
from stdnum.es import nif as _es_nif
from stdnum.it import codicefiscale as _it_cf

# Entity types, in priority order (earlier wins an overlap). The placeholder is `<TYPE>`.
ENTITIES: tuple[str, ...] = (
    "SECRET", "EMAIL", "IBAN", "CREDIT_CARD", "US_SSN", "UK_NINO", "ES_NIF", "IT_FISCAL_CODE", "IP_ADDRESS",
    "PHONE",
)
# Found by pipelines.data.pii_ner. MODEL_ENTITIES need the spaCy model; the others are pattern recognizers.
MODEL_ENTITIES: tuple[str, ...] = ("PERSON", "ORGANIZATION", "LOCATION", "DATE_TIME", "NRP")
NER_ENTITIES: tuple[str, ...] = (*MODEL_ENTITIES, "ADDRESS", "URL", "TITLE")
ALL_ENTITIES: tuple[str, ...] = (*ENTITIES, *NER_ENTITIES)
ACTIONS = ("redact", "pseudonymize", "drop", "keep")  # what a source's policy may do with one entity type


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    entity: str
    text: str


def placeholder(entity: str) -> str:
    return f"<{entity}>"


# --- validators ----------------------------------------------------------------------------------------------

_CARD_PREFIX = re.compile(r"^(?:4|5[1-5]|2[2-7]|3[47]|6011|65|64[4-9]|35|30[0-5]|36|38|62)")


def luhn_valid(digits: str) -> bool:
    return digits.isdigit() and _luhn.is_valid(digits)


def is_credit_card(candidate: str) -> bool:
    digits = re.sub(r"[ -]", "", candidate)
    return 13 <= len(digits) <= 19 and bool(_CARD_PREFIX.match(digits)) and luhn_valid(digits)


def is_iban(candidate: str) -> bool:
    return _iban.is_valid(candidate.upper())


def is_ssn(candidate: str) -> bool:
    m = re.fullmatch(r"(\d{3})[- ]?(\d{2})[- ]?(\d{4})", candidate)
    if not m:
        return False
    area, group, serial = m.groups()
    if area in ("000", "666") or area.startswith("9") or group == "00" or serial == "0000":
        return False
    return len(set(area + group + serial)) > 1  # 111-11-1111 style fillers


def is_ip(candidate: str) -> bool:
    try:
        ip = ipaddress.ip_address(candidate)
    except ValueError:
        return False
    if ip.version == 6:
        groups = [g for g in candidate.split(":") if g]
        return len(groups) >= 3  # `a::b`, `1::` are too often code or times to call them addresses
    return True


def _nino_ok(c: str) -> bool:
    c = re.sub(r"\s", "", c).upper()
    return c[:2] not in ("BG", "GB", "NK", "KN", "TN", "NT", "ZZ") and c[1] != "O"


_STRONG_PHONE = re.compile(r"^\+|^00|\(|x|ext|[.-]\d+[.-]", re.IGNORECASE)
_PHONE_CONTEXT = re.compile(
    r"\b(?:phone|mobile|cell|tel|fax|call|dial|text|whatsapp|number|contact|reach|answering|office|n[o°]\.?)\b"
    r"\W{0,4}(?:\w+\W{1,3}){0,3}$",
    re.IGNORECASE,
)
_NOT_PHONE_CONTEXT = re.compile(
    r"(?:licen[cs]e|passport|account|order|invoice|ssn|zip|postal)\W{0,4}(?:\w+\W{1,3}){0,2}$", re.IGNORECASE
)
_DATE_LIKE = re.compile(r"\d{4}[-./]\d{1,2}[-./]\d{1,2}\b|^\d{1,2}[-./]\d{1,2}[-./]\d{2,4}$")
_PHONE_AFTER = re.compile(r"^\s?[-,]?\s?(?:office|fax|mobile|cell|home|work|tel)\b", re.IGNORECASE)


def is_phone(candidate: str, before: str = "", after: str = "") -> bool:
    main = re.split(r"\s*(?:x|ext\.?)\s*\d", candidate, maxsplit=1, flags=re.IGNORECASE)[0]
    digits = re.sub(r"\D", "", main)
    if not 6 <= len(digits) <= 15 or _DATE_LIKE.search(main.strip()) or len(set(digits)) < 3:
        return False
    if re.fullmatch(r"\d{3}-\d{2}-\d{4}", main.strip()):  # SSN-shaped: US_SSN's validator had its say
        return False
    groups = re.findall(r"\d+", main)
    if _NOT_PHONE_CONTEXT.search(before[-40:]):
        return False
    plain_groups = len(groups) <= 5 and min(len(g) for g in groups) >= 2
    if _PHONE_CONTEXT.search(before[-40:]) or _PHONE_AFTER.match(after):
        return plain_groups or candidate.startswith(("+", "("))
    if len(digits) < 7:
        return False
    if len(groups) == 2 and groups[0].startswith("0") and "-" in main:  # national format: 021-4006034
        return True
    if _STRONG_PHONE.search(candidate):
        return len(groups) >= 2 or candidate.startswith("+")
    # Space-separated digit groups (089 72 63 41): 3 to 5 groups of 2 to 4 digits; lists such as 12 7 9 15 and
    # runs of years or dates (2001 2002 2003, 1977 11 11) are not.
    if any(len(g) == 4 and 1900 <= int(g) <= 2099 for g in groups):
        return False
    return 3 <= len(groups) <= 5 and all(2 <= len(g) <= 4 for g in groups)


# --- detectors: (entity, candidate regex, validator(match, text_before, text_after) -> bool) -----------------

_SECRET = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----"
    r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"                          # AWS access key id
    r"|\bgh[pousr]_[A-Za-z0-9]{36,}\b|\bgithub_pat_[A-Za-z0-9_]{40,}\b"  # GitHub tokens
    r"|\bxox[abposr]-[A-Za-z0-9-]{10,}\b"                      # Slack
    r"|\bAIza[0-9A-Za-z_-]{35}\b"                              # Google API key
    r"|\b[sr]k_(?:live|test)_[0-9A-Za-z]{16,}\b"               # Stripe
    r"|\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}\b"               # OpenAI / Anthropic style
    r"|\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"  # JWT
    # key = "value" assignments: only the value is redacted (group `v`), and only when it looks random.
    r"|(?i:(?:api[_-]?key|secret[_-]?key|access[_-]?token|auth[_-]?token|client[_-]?secret|password|passwd)"
    r"[\"']?\s*[:=]\s*[\"']?)(?P<v>[A-Za-z0-9_/+=.-]{16,})"
)


def _secret_ok(value: str) -> bool:
    return bool(re.search(r"\d", value)) and bool(re.search(r"[A-Za-z]", value)) and len(set(value)) >= 8


_DETECTORS: list[tuple[str, re.Pattern, Callable[..., bool]]] = [
    ("EMAIL", re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"),
     lambda c, *_: True),
    ("IBAN", re.compile(r"\b[A-Za-z]{2}\d{2}(?: ?[A-Za-z0-9]){11,30}\b"), lambda c, *_: is_iban(c)),
    ("CREDIT_CARD", re.compile(r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w-])"), lambda c, *_: is_credit_card(c)),
    ("US_SSN", re.compile(r"(?<![\w-])\d{3}-\d{2}-\d{4}(?![\w-])|(?<=SSN )\d{9}\b|(?<=SSN: )\d{9}\b"),
     lambda c, *_: is_ssn(c)),
    ("UK_NINO", re.compile(r"\b[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b"),
     lambda c, *_: _nino_ok(c)),
    ("ES_NIF", re.compile(r"\b(?:\d{8}|[XYZ]\d{7})-?[A-Z]\b"), lambda c, *_: _es_nif.is_valid(c)),
    ("IT_FISCAL_CODE", re.compile(r"\b[A-Z]{6}\d{2}[A-Z]\d{2}[A-Z]\d{3}[A-Z]\b"), lambda c, *_: _it_cf.is_valid(c)),
    ("IP_ADDRESS", re.compile(
        r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.])"
        r"|(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])"), lambda c, *_: is_ip(c)),
    ("PHONE", re.compile(
        r"(?<![\w+@-])(?:\+\d{1,3}[ .-]?|00\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{1,10}(?:[ .-]\d{1,10}){0,5}"
        r"(?:\s?(?:x|ext\.?\s?)\d{1,6})?(?![\w@])", re.IGNORECASE), is_phone),
]


def detect(text: str | None, entities: Iterable[str] | None = None) -> list[Span]:
    """Non-overlapping PII spans in `text`, sorted by position (priority decides overlaps)."""
    if not text:
        return []
    wanted = set(ENTITIES if entities is None else entities)
    unknown = wanted - set(ENTITIES)
    if unknown:
        raise ValueError(f"unknown PII entity type(s): {', '.join(sorted(unknown))}; known: {', '.join(ENTITIES)}")
    found: list[Span] = []
    taken: list[tuple[int, int]] = []

    def free(s: int, e: int) -> bool:
        return all(e <= a or s >= b for a, b in taken)

    def add(s: int, e: int, entity: str) -> None:
        found.append(Span(s, e, entity, text[s:e]))
        taken.append((s, e))

    if "SECRET" in wanted:
        for m in _SECRET.finditer(text):
            if m.group("v") is not None:
                if _secret_ok(m.group("v")) and free(m.start("v"), m.end("v")):
                    add(m.start("v"), m.end("v"), "SECRET")
            elif free(m.start(), m.end()):
                add(m.start(), m.end(), "SECRET")
    for entity, pattern, ok in _DETECTORS:
        if entity not in wanted:
            continue
        for m in pattern.finditer(text):
            s, e = m.start(), m.end()
            cand = m.group(0).rstrip(" .-")
            if entity == "IBAN":  # grouped IBANs: the regex may run on into the next words; back off by group
                while len(cand) > 15 and not is_iban(cand) and " " in cand:
                    cand = cand.rsplit(" ", 1)[0]
            e = s + len(cand)
            if cand and free(s, e) and ok(cand, text[max(0, s - 60):s], text[e:e + 12]):
                add(s, e, entity)
    return sorted(found, key=lambda sp: sp.start)


def redact(text: str | None, entities: Iterable[str] | None = None) -> tuple[str | None, list[str]]:
    """`text` with every detected span replaced by its typed placeholder, and the entity type of each span."""
    spans = detect(text, entities)
    if not spans:
        return text, []
    out, last = [], 0
    for sp in spans:
        out.append(text[last:sp.start])
        out.append(placeholder(sp.entity))
        last = sp.end
    out.append(text[last:])
    return "".join(out), [sp.entity for sp in spans]


# --- applying a policy -----------------------------------------------------------------------------------------

_FAKES: dict[str, tuple[str, ...]] = {
    "PERSON": ("Alex Morgan", "Sam Taylor", "Jordan Lee", "Casey Brooks", "Robin Hayes", "Jamie Fox", "Drew Parker",
               "Kim Ellis", "Pat Quinn", "Lee Carter", "Avery Stone", "Riley Shaw"),
    "ORGANIZATION": ("Acme Corp", "Globex", "Initech", "Umbrella Ltd", "Stark Industries", "Wayne Enterprises",
                     "Hooli", "Vandelay Industries"),
    "LOCATION": ("Springfield", "Riverton", "Lakeside", "Fairview", "Greenville", "Oakdale", "Milton", "Ashford"),
    "ADDRESS": ("12 Example Street", "34 Sample Road", "56 Placeholder Avenue", "78 Test Lane", "90 Demo Drive"),
    "DATE_TIME": ("1 January 2000", "2 February 2001", "3 March 2002", "4 April 2003", "5 May 2004"),
    "NRP": ("Freedonian", "Ruritanian", "Latverian", "Genovian"),
    "TITLE": ("Mx.",),
}


def _fake(entity: str, n: int) -> str:
    """The n-th (0-based) fake value of `entity` in one document: distinct values get distinct fakes."""
    pool = _FAKES.get(entity)
    if pool:
        base = pool[n % len(pool)]
        return base if n < len(pool) else f"{base} {n // len(pool) + 1}"
    if entity == "EMAIL":
        return f"user{n + 1}@example.com"
    if entity == "PHONE":
        return f"555-01{n % 100:02d}"
    if entity == "URL":
        return f"https://example{n + 1}.com"
    if entity == "IP_ADDRESS":
        return f"192.0.2.{n % 254 + 1}"  # TEST-NET-1, RFC 5737
    return placeholder(f"{entity}_{n + 1}")  # identifiers and secrets: no plausible fake, a numbered placeholder


def apply(text: str | None, spans: list[Span], actions: dict[str, str]) -> str | None:
    """`text` with each span replaced as `actions[span.entity]` says: `redact` -> `<TYPE>`, `pseudonymize` -> a
    fake value, the same fake for the same original value within this text; `keep`/`drop` (and entities absent
    from `actions`) leave the span as it is (drop is the caller's decision about the whole record)."""
    if not text or not spans:
        return text
    out, last = [], 0
    seen: dict[tuple[str, str], str] = {}
    counts: dict[str, int] = {}
    for sp in sorted(spans, key=lambda s: s.start):
        action = actions.get(sp.entity, "keep")
        if action not in ("redact", "pseudonymize"):
            continue
        out.append(text[last:sp.start])
        if action == "redact":
            out.append(placeholder(sp.entity))
        else:
            key = (sp.entity, " ".join(sp.text.lower().split()))
            if key not in seen:
                seen[key] = _fake(sp.entity, counts.get(sp.entity, 0))
                counts[sp.entity] = counts.get(sp.entity, 0) + 1
            out.append(seen[key])
        last = sp.end
    out.append(text[last:])
    return "".join(out)
