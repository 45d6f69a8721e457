"""Normalization and document-quality rules (in the spirit of Gopher's and C4's heuristics).

Pure Python, no Spark import: `pipelines.data.clean_spark` runs `make_cleaner`'s function inside a pandas UDF,
tests call it directly. Every rule is a key of `QualityRules`; `null` (or an empty map/list) switches it off. A
record fails on the first rule it breaks, and the rule's name is what the rejects table and metrics/ingest.json
count.

Gopher (Rae et al. 2021, appendix A) and C4 (Raffel et al. 2020) rules adapted here: word-count bounds, mean word
length, symbol-to-word ratio (`#`, `...`), bullet and ellipsis line ratios, share of words with a letter,
duplicate lines (by count and by characters), the most frequent 2/3/4-gram's share of characters, duplicated
5..10-gram share of characters, and C4's "lorem ipsum" phrase list. The models declare no values: params.yaml
sets the ones a corpus uses (Gopher's own were tuned for web pages: instruction pairs and code need looser ones).
"""
from __future__ import annotations

import re
import unicodedata
from collections import Counter
from typing import Any, Callable, Sequence

from pydantic import Field

from pipelines.config import StageConfig
from pipelines.data import pii
from pipelines.data.langid import identify


class Normalize(StageConfig):
    unicode_form: str | None = Field(pattern="^(NFC|NFKC|NFD|NFKD)$")
    strip_control: bool           # C0/C1 control and invisible format characters, except tab and newline
    whitespace: bool              # CRLF -> LF, trailing spaces per line, 3+ newlines -> 2; indentation is kept


class Language(StageConfig):
    allowed: list[str]            # ISO 639-1 codes kept; empty: identify and report, drop nothing
    # Below it a text is "und" and kept: only a text confidently in another language is dropped (mixed code and
    # prose, lists of names, upper-case text are often low-confidence; the quality rules judge garbage).
    min_confidence: float = Field(ge=0, le=1)
    min_chars: int = Field(ge=0)  # shorter texts are not judged (too little signal): kept, lang "und"
    sample_chars: int = Field(ge=1)


class QualityRules(StageConfig):
    """Every rule is required; its "off" value (null, {} for the n-gram maps, [] for bad_phrases) switches it off."""

    max_chars: int | None = Field(ge=1)
    min_words: int | None = Field(ge=0)
    max_words: int | None = Field(ge=1)
    min_mean_word_length: float | None
    max_mean_word_length: float | None
    max_symbol_word_ratio: float | None              # ('#' + '...' + '…') / words
    max_bullet_line_ratio: float | None              # lines starting with a bullet
    max_ellipsis_line_ratio: float | None            # lines ending with an ellipsis
    min_alpha_word_ratio: float | None               # words holding at least one letter
    max_duplicate_line_fraction: float | None              # repeated lines / lines
    max_duplicate_line_char_fraction: float | None         # characters in repeated lines / characters
    max_top_ngram_char_fraction: dict[int, float]          # n -> share of chars in the most frequent n-gram
    max_duplicate_ngram_char_fraction: dict[int, float]    # n -> share of chars in repeated n-grams
    bad_phrases: list[str]                           # case-insensitive substrings (C4: "lorem ipsum")


RULE_NAMES = tuple(QualityRules.model_fields)
_COLLECTION_RULES = {"max_top_ngram_char_fraction": dict, "max_duplicate_ngram_char_fraction": dict,
                     "bad_phrases": list}


def rules_off() -> dict[str, Any]:
    """Every quality rule at its "off" value (null; an empty map or list for the collection rules): what a
    source's skipped rule is set to, and a neutral start for tests that switch a few rules on."""
    return {name: _COLLECTION_RULES[name]() if name in _COLLECTION_RULES else None for name in RULE_NAMES}


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u2028\u2029\u2060\ufeff\u00ad]")
_TRAILING = re.compile(r"[ \t]+(?=\n|$)")
_BLANKS = re.compile(r"\n{3,}")
_BULLET = re.compile(r"^\s*[•●○◦▪‣∙·*\-–]\s")
_ALPHA = re.compile(r"[^\W\d_]")


def normalize(text: str | None, cfg: Normalize) -> str | None:
    if text is None:
        return None
    if cfg.unicode_form:
        text = unicodedata.normalize(cfg.unicode_form, text)
    if cfg.whitespace:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if cfg.strip_control:
        text = _CONTROL.sub("", text)
    if cfg.whitespace:
        text = _TRAILING.sub("", text)
        text = _BLANKS.sub("\n\n", text).strip()
    return text


def _dup_chars(items: list[str]) -> tuple[int, int]:
    seen: set[str] = set()
    n = chars = 0
    for it in items:
        if it in seen:
            n += 1
            chars += len(it)
        else:
            seen.add(it)
    return n, chars


def _dup_ngram_chars(words: list[str], n: int, cum: list[int]) -> int:
    """Characters in n-grams already seen, skipping past each repeat (datatrove's GopherRepetitionFilter).
    `cum` holds the prefix sums of the word lengths."""
    grams = list(zip(*(words[i:] for i in range(n))))
    seen: set[tuple[str, ...]] = set()
    chars, i = 0, 0
    while i < len(grams):
        gram = grams[i]
        if gram in seen:
            chars += cum[i + n] - cum[i]
            i += n
        else:
            seen.add(gram)
            i += 1
    return chars


def quality_failure(text: str, rules: QualityRules) -> tuple[str, str] | None:
    """(rule name, detail) of the first rule `text` breaks, or None when it passes them all."""
    r = rules
    n = len(text)
    if r.max_chars is not None and n > r.max_chars:
        return "max_chars", f"{n} chars > {r.max_chars}"
    words = text.split()
    nw = len(words)
    if r.min_words is not None and nw < r.min_words:
        return "min_words", f"{nw} words < {r.min_words}"
    if r.max_words is not None and nw > r.max_words:
        return "max_words", f"{nw} words > {r.max_words}"
    if nw:
        mean = sum(map(len, words)) / nw
        if r.min_mean_word_length is not None and mean < r.min_mean_word_length:
            return "min_mean_word_length", f"mean word length {mean:.2f} < {r.min_mean_word_length}"
        if r.max_mean_word_length is not None and mean > r.max_mean_word_length:
            return "max_mean_word_length", f"mean word length {mean:.2f} > {r.max_mean_word_length}"
        if r.max_symbol_word_ratio is not None:
            ratio = (text.count("#") + text.count("...") + text.count("…")) / nw
            if ratio > r.max_symbol_word_ratio:
                return "max_symbol_word_ratio", f"symbol/word ratio {ratio:.3f} > {r.max_symbol_word_ratio}"
    lines = [ln for ln in text.split("\n") if ln.strip()]
    if lines:
        if r.max_bullet_line_ratio is not None:
            ratio = sum(1 for ln in lines if _BULLET.match(ln)) / len(lines)
            if ratio > r.max_bullet_line_ratio:
                return "max_bullet_line_ratio", f"bullet lines {ratio:.3f} > {r.max_bullet_line_ratio}"
        if r.max_ellipsis_line_ratio is not None:
            ratio = sum(1 for ln in lines if ln.rstrip().endswith(("...", "…"))) / len(lines)
            if ratio > r.max_ellipsis_line_ratio:
                return "max_ellipsis_line_ratio", f"ellipsis lines {ratio:.3f} > {r.max_ellipsis_line_ratio}"
    if nw and r.min_alpha_word_ratio is not None:
        ratio = sum(1 for w in words if _ALPHA.search(w)) / nw
        if ratio < r.min_alpha_word_ratio:
            return "min_alpha_word_ratio", f"words with a letter {ratio:.3f} < {r.min_alpha_word_ratio}"
    if lines and (r.max_duplicate_line_fraction is not None or r.max_duplicate_line_char_fraction is not None):
        stripped = [ln.strip() for ln in lines]
        dup_n, dup_chars = _dup_chars(stripped)
        if r.max_duplicate_line_fraction is not None and dup_n / len(lines) > r.max_duplicate_line_fraction:
            return ("max_duplicate_line_fraction",
                    f"repeated lines {dup_n / len(lines):.3f} > {r.max_duplicate_line_fraction}")
        total = sum(map(len, stripped)) or 1
        if r.max_duplicate_line_char_fraction is not None and dup_chars / total > r.max_duplicate_line_char_fraction:
            return ("max_duplicate_line_char_fraction",
                    f"chars in repeated lines {dup_chars / total:.3f} > {r.max_duplicate_line_char_fraction}")
    if (r.max_top_ngram_char_fraction or r.max_duplicate_ngram_char_fraction) and nw:
        lowered = [w.lower() for w in words]
        total = sum(map(len, lowered)) or 1
        for size, limit in sorted(r.max_top_ngram_char_fraction.items()):
            if nw < size:
                continue
            gram, count = Counter(zip(*(lowered[i:] for i in range(size)))).most_common(1)[0]
            share = count * sum(map(len, gram)) / total if count > 1 else 0.0
            if share > limit:
                return f"max_top_{size}gram_char_fraction", f"top {size}-gram chars {share:.3f} > {limit}"
        sizes = sorted(r.max_duplicate_ngram_char_fraction.items())
        if sizes:
            smallest = sizes[0][0]
            first = list(zip(*(lowered[i:] for i in range(smallest))))
            # No repeated n-gram of the smallest size means no longer one repeats either: one pass for most texts.
            if len(set(first)) < len(first):
                cum = [0]
                for w in lowered:
                    cum.append(cum[-1] + len(w))
                for size, limit in sizes:
                    share = _dup_ngram_chars(lowered, size, cum) / total
                    if share > limit:
                        return (f"max_duplicate_{size}gram_char_fraction",
                                f"repeated {size}-gram chars {share:.3f} > {limit}")
    if r.bad_phrases:
        low = text.lower()
        for phrase in r.bad_phrases:
            if phrase.lower() in low:
                return "bad_phrases", f"contains {phrase!r}"
    return None


def cleaner_options(normalize: Normalize, language: Language, quality: QualityRules, pii_entities: Sequence[str],
                    skip_rules: Sequence[str] = (), pii_ner: dict[str, Any] | None = None) -> dict[str, Any]:
    """`make_cleaner`'s `opts`: the configs as plain dicts, plus the rules one source skips and the NER sizing
    (`pii_ner`: batch_size, chunk_chars, score_threshold; None: pipelines.data.pii_ner's defaults)."""
    return {
        "normalize": normalize.model_dump(),
        "language": language.model_dump(),
        "quality": quality.model_dump(),
        "pii_entities": list(pii_entities),
        "skip_rules": list(skip_rules),
        "pii_ner": dict(pii_ner or {}),
    }


# Languages the English NER is run on: "und" (too short or unsure to judge) is scanned rather than skipped.
NER_LANGUAGES = ("en", "und")


def pii_actions(policy: str | dict[str, str], entities: Sequence[str]) -> dict[str, str]:
    """entity -> action for a source's `pii` (one action, or a mapping with `default`)."""
    if isinstance(policy, dict):
        return {e: policy.get(e, policy["default"]) for e in entities}
    return {e: policy for e in entities}


def detector_entities(policy: str | dict[str, str], entities: Sequence[str]) -> tuple[list[str], list[str]]:
    """(structured types, NER types) a source's PII policy scans for: NER only for the types it does not keep."""
    actions = pii_actions(policy, entities)
    return ([e for e in entities if e in pii.ENTITIES],
            [e for e in entities if e in pii.NER_ENTITIES and actions[e] != "keep"])


def scanned_fields(kind: str) -> tuple[str, ...]:
    """The fields PII detection reads, by source kind (an instruction's or a preference pair's `text` is rebuilt
    from prompt and response; a pair's rejected answer is scanned and redacted like its chosen one)."""
    return {"instruction": ("prompt", "response", "title"),
            "preference": ("prompt", "response", "rejected", "title")}.get(kind, ("text", "title"))


def make_cleaner(*, kind: str, pii_policy: str | dict[str, str], opts: dict[str, Any]) -> Callable[[dict], dict]:
    """A function that normalizes, identifies the language of, applies the quality rules and the PII policy to
    one parsed record (prompt/response/text/title already mapped from the source's fields). Its attribute `many`
    does the same for a list of records, running NER over all of them in `nlp.pipe` batches: what the Spark UDF
    calls per Arrow batch.

    It returns the cleaned fields plus `reason`/`rule`/`detail` (reason None when kept), `lang`, `lang_prob`,
    `pii` (entity type of every span found), `pii_unscanned` (the policy needed English NER but the text is in
    another language: not scanned, counted, never passed as clean) and `changed` (normalization altered the
    record). `opts` = {"normalize", "language", "quality", "pii_entities", "skip_rules", "pii_ner"} as plain
    dicts, cheap to ship to Spark executors; the configs are built once per cleaner, not per record.

    `pii_policy` gives an action per entity type: redact (typed placeholder), pseudonymize (consistent fake value
    per document), drop (the record goes to rejects, reason `pii`, rule = the first such type found) or keep
    (left as is, still counted). NER runs only for the NER types whose action is not keep.
    """
    norm = Normalize(**opts["normalize"])
    lang_cfg = Language(**opts["language"])
    skip = set(opts.get("skip_rules") or ())
    off = rules_off()
    rules = QualityRules(**{k: off[k] if k in skip else v for k, v in opts["quality"].items()})
    entities = list(opts.get("pii_entities", pii.ENTITIES))
    actions = pii_actions(pii_policy, entities)
    structured, ner = detector_entities(pii_policy, entities)
    ner_opts = opts.get("pii_ner") or {}
    judge_language = bool(lang_cfg.allowed) and "language" not in skip
    pii_fields = scanned_fields(kind)

    def prepare(rec: dict[str, Any]) -> tuple[dict, dict | None]:
        """Everything before PII: (out, fields) with fields None when the record is already rejected."""
        out: dict[str, Any] = {"reason": None, "rule": None, "detail": None, "lang": "und", "lang_prob": 0.0,
                               "pii": [], "pii_unscanned": False, "changed": False}

        def reject(reason: str, rule: str, detail: str, fields: dict) -> tuple[dict, None]:
            out.update(reason=reason, rule=rule, detail=detail, **fields)
            return out, None

        # The size cap first, on the raw record: a 10 MB document is refused before any per-character work.
        raw_len = sum(len(rec.get(k) or "") for k in ("prompt", "response", "rejected", "text"))
        if rules.max_chars is not None and raw_len > rules.max_chars:
            return reject("quality", "max_chars", f"{raw_len} chars > {rules.max_chars}", rec)
        fields = {k: normalize(rec.get(k), norm) or None for k in ("prompt", "response", "rejected", "text", "title")}
        out["changed"] = any(fields[k] != rec.get(k) for k in fields)
        if kind in ("instruction", "preference"):
            need = ("prompt", "response", "rejected") if kind == "preference" else ("prompt", "response")
            if (which := next((k for k in need if not fields[k]), None)) is not None:
                return reject("empty_text", f"{which} is empty after normalization", "", fields)
            if kind == "preference" and fields["response"] == fields["rejected"]:
                return reject("quality", "preference_identical", "chosen and rejected are the same answer", fields)
            fields["text"] = f"{fields['prompt']}\n\n{fields['response']}"
        if not fields["text"]:
            return reject("empty_text", "text is empty after normalization", "", fields)
        text = fields["text"]

        failure = quality_failure(text, rules)
        if failure:
            return reject("quality", failure[0], failure[1], fields)
        if kind == "preference" and (failure := quality_failure(f"{fields['prompt']}\n\n{fields['rejected']}",
                                                                 rules)):
            return reject("quality", failure[0], f"rejected answer: {failure[1]}", fields)

        if len(text) >= lang_cfg.min_chars:
            lang, prob = identify(text, lang_cfg.sample_chars)
            if prob < lang_cfg.min_confidence:
                lang = "und"
            out.update(lang=lang, lang_prob=prob)
            if judge_language and lang != "und" and lang not in lang_cfg.allowed:
                return reject("language", "allowed_languages", f"{lang} ({prob:.2f}) not in {lang_cfg.allowed}",
                              fields)
        return out, fields

    def finish(out: dict, fields: dict, spans: dict[str, list]) -> dict:
        found = [sp.entity for k in pii_fields for sp in spans.get(k, [])]
        out["pii"] = found
        dropped = [e for e in found if actions.get(e) == "drop"]
        if dropped:
            first = min(dropped, key=pii.ALL_ENTITIES.index)
            out.update(reason="pii", rule=first, detail=f"{len(found)} span(s): {', '.join(sorted(set(found)))}",
                       **fields)
            return out
        if out["pii_unscanned"] and any(actions[e] == "drop" for e in ner):
            out.update(reason="pii", rule="not_scanned",
                       detail=f"language {out['lang']}: not scanned by the English NER, and the policy drops "
                              f"{', '.join(e for e in ner if actions[e] == 'drop')}", **fields)
            return out
        for k in pii_fields:
            if spans.get(k):
                fields[k] = pii.apply(fields[k], spans[k], actions)
        if kind in ("instruction", "preference"):
            fields["text"] = f"{fields['prompt']}\n\n{fields['response']}"
        out.update(fields)
        return out

    def clean_many(recs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        prepared = [prepare(rec) for rec in recs]
        # (record number, field, text, run NER?) of every field to scan
        todo = []
        for i, (out, fields) in enumerate(prepared):
            if fields is None or not entities:
                continue
            scan = bool(ner) and out["lang"] in NER_LANGUAGES
            out["pii_unscanned"] = bool(ner) and not scan
            todo += [(i, k, fields[k], scan) for k in pii_fields if fields[k]]
        spans: list[dict[str, list]] = [{} for _ in recs]
        ner_items = [t for t in todo if t[3]]
        if ner_items:
            from pipelines.data import pii_ner  # spaCy and Presidio are imported only where a policy needs them

            found = pii_ner.detect_many([t[2] for t in ner_items], structured + ner, pii_ner.NerOptions(**ner_opts))
            for (i, k, _, _), sp in zip(ner_items, found):
                spans[i][k] = sp
        for i, k, text, scan in todo:
            if not scan:
                spans[i][k] = pii.detect(text, structured) if structured else []
        return [out if fields is None else finish(out, fields, spans[i])
                for i, (out, fields) in enumerate(prepared)]

    def clean(rec: dict[str, Any]) -> dict[str, Any]:
        return clean_many([rec])[0]

    clean.many = clean_many  # type: ignore[attr-defined]
    return clean
