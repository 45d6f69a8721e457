"""PII detectors and quality rules as pure functions: validators decide, not the regexes alone."""
from __future__ import annotations

import pytest

from pipelines.config import config_from_params
from pipelines.data import pii
from pipelines.data.clean import (
    Language,
    Normalize,
    QualityRules,
    cleaner_options,
    make_cleaner,
    normalize,
    quality_failure,
    rules_off,
)


def only_rules(**on) -> QualityRules:
    """Only the rules named here switched on; every key is given (a merge into params.yaml's values could not
    switch an n-gram rule off: mappings merge key by key)."""
    return QualityRules.model_validate({**rules_off(), **on})


def types(text: str) -> list[str]:
    return [s.entity for s in pii.detect(text)]


@pytest.mark.parametrize("card", ["4111 1111 1111 1111", "5500-0000-0000-0004", "378282246310005",
                                  "6011111111111117"])
def test_luhn_valid_cards_are_found(card):
    assert types(f"card {card} on file") == ["CREDIT_CARD"]


@pytest.mark.parametrize("number", ["4111 1111 1111 1112", "1234567812345678", "0000000000000000"])
def test_luhn_invalid_or_unknown_issuer_numbers_are_not_cards(number):
    assert "CREDIT_CARD" not in types(f"order {number} shipped")


def test_iban_checksum():
    assert types("pay to GB82 WEST 1234 5698 7654 32 today") == ["IBAN"]
    assert types("pay to gb82west12345698765432 today") == ["IBAN"]
    assert "IBAN" not in types("pay to GB82 WEST 1234 5698 7654 33 today")  # one digit off: mod-97 fails


def test_ip_addresses_are_parsed():
    assert types("from 192.168.10.254 and 2001:db8:85a3::8a2e:370:7334") == ["IP_ADDRESS", "IP_ADDRESS"]
    assert types("version 1.2.3.4.5 and 999.1.1.1 and at 10:30:00 and std::vector") == []


def test_ssn_rules_and_national_ids():
    assert types("SSN 123-45-6789") == ["US_SSN"]
    assert types("ids 000-12-3456, 666-12-3456, 900-12-3456, 123-00-4567") == []
    assert types("NINO AB 12 34 56 C") == ["UK_NINO"]
    assert types("DNI 12345678Z") == ["ES_NIF"] and types("DNI 12345678A") == []
    assert types("codice RSSMRA85T10A562S") == ["IT_FISCAL_CODE"]


def test_emails_phones_and_secrets():
    text = ("Mail ann.lee+x@mail.example.co.uk, call (415) 555-0199 or +44 20 7946 0958, "
            "key AKIAIOSFODNN7EXAMPLE and api_key = 'a9F3kLm2Qx7Zp0Rt8Vw1'")
    assert types(text) == ["EMAIL", "PHONE", "PHONE", "SECRET", "SECRET"]
    redacted, found = pii.redact(text)
    assert redacted == ("Mail <EMAIL>, call <PHONE> or <PHONE>, key <SECRET> and api_key = '<SECRET>'")
    assert sorted(found) == ["EMAIL", "PHONE", "PHONE", "SECRET", "SECRET"]


def test_numbers_that_are_not_phones():
    for text in ["In 1998 the city had 1234567 people.", "on 2024-01-15 12:30", "for i in range(10, 20, 2):",
                 "version 3.11.4 released", "price 1,299.99 dollars", "my license number is 578988637"]:
        assert "PHONE" not in types(text), text


def test_entity_selection_and_unknown_types():
    assert types("a@b.org 4111 1111 1111 1111") == ["EMAIL", "CREDIT_CARD"]
    assert [s.entity for s in pii.detect("a@b.org 4111 1111 1111 1111", ["EMAIL"])] == ["EMAIL"]
    with pytest.raises(ValueError, match="unknown PII entity"):
        pii.detect("x", ["NAME"])


def test_normalize_keeps_indentation():
    cfg = config_from_params("ingest.normalize", Normalize)  # NFKC, control characters, whitespace
    assert normalize("ﬁne\u00a0text\u200b \r\n\r\n\r\n\r\n    indented()\x07  ", cfg) == "fine text\n\n    indented()"


def test_quality_rules_each_name_themselves():
    rules = only_rules(min_words=3, max_symbol_word_ratio=0.1, max_duplicate_line_fraction=0.3,
                       max_top_ngram_char_fraction={2: 0.2}, min_alpha_word_ratio=0.5,
                       max_bullet_line_ratio=0.9, bad_phrases=["lorem ipsum"])
    assert quality_failure("too short", rules)[0] == "min_words"
    assert quality_failure("# # # # a b c d e f", rules)[0] == "max_symbol_word_ratio"
    assert quality_failure("same line\nsame line\nsame line\nother", rules)[0] == "max_duplicate_line_fraction"
    assert quality_failure("the cat the cat the cat the cat sat", rules)[0] == "max_top_2gram_char_fraction"
    assert quality_failure("1 2 3 4 5 6 7 8 a b", rules)[0] == "min_alpha_word_ratio"
    assert quality_failure("- one item\n- two item\n- three item", rules)[0] == "max_bullet_line_ratio"
    assert quality_failure("this is Lorem Ipsum text for you", rules)[0] == "bad_phrases"
    assert quality_failure("A perfectly ordinary sentence about rivers and towns.", rules) is None


def test_cleaner_policies():
    # Every quality rule and the language filter off: only the PII policy decides.
    opts = cleaner_options(
        config_from_params("ingest.normalize", Normalize),
        config_from_params("ingest.language", Language, {"allowed": []}),
        only_rules(),
        pii.ENTITIES,
    )
    rec = {"prompt": "Email me at a@b.org", "response": "Sure.", "text": None, "title": None}
    red = make_cleaner(kind="instruction", pii_policy="redact", opts=opts)(rec)
    assert red["reason"] is None and red["text"] == "Email me at <EMAIL>\n\nSure." and red["pii"] == ["EMAIL"]
    drop = make_cleaner(kind="instruction", pii_policy="drop", opts=opts)(rec)
    assert (drop["reason"], drop["rule"]) == ("pii", "EMAIL")
    keep = make_cleaner(kind="instruction", pii_policy="keep", opts=opts)(rec)
    assert keep["reason"] is None and "a@b.org" in keep["text"] and keep["pii"] == ["EMAIL"]


def test_skipped_rules_are_off_for_that_source():
    quality = only_rules(min_words=3, max_top_ngram_char_fraction={2: 0.2})
    args = (config_from_params("ingest.normalize", Normalize),
            config_from_params("ingest.language", Language, {"allowed": []}), quality, [])
    rec = {"prompt": "Hi", "response": "the cat the cat the cat the cat", "text": None, "title": None}
    strict = make_cleaner(kind="instruction", pii_policy="keep", opts=cleaner_options(*args))(rec)
    assert (strict["reason"], strict["rule"]) == ("quality", "max_top_2gram_char_fraction")
    skipping = cleaner_options(*args, skip_rules=["max_top_ngram_char_fraction"])
    assert make_cleaner(kind="instruction", pii_policy="keep", opts=skipping)(rec)["reason"] is None
