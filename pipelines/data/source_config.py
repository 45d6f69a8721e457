"""How a raw source is declared (`params.yaml` ingest.sources[*]): path, format, kind, field mapping, licence and
PII policy. A source without a licence or a PII policy is refused before anything runs.

Entries of this user-declared list are the one place where config keys may be left out (`fields.title`,
`fields.id`, `skip_rules`, `fields` of a text source); everything else lives in params.yaml.
"""
from __future__ import annotations

from typing import Any, Literal, Sequence

from pydantic import Field, ValidationInfo, field_validator, model_validator

from pipelines.config import StageConfig
from pipelines.data import pii as pii_mod
from pipelines.data.clean import RULE_NAMES, pii_actions

PII_POLICIES = ("redact", "drop", "keep")  # a whole-source policy; a mapping may also pseudonymize per entity
SKIPPABLE = (*RULE_NAMES, "language")  # what a source's skip_rules may name
TEXT_FIELDS = ("text", "file")  # the raw fields a `text` source offers


class FieldMap(StageConfig):
    """Which raw field feeds which corpus column. `prompt` may list several fields, joined by a blank line.
    `id`, when set, names the source's own record id: a repeated id is rejected as duplicate_id.
    A preference source maps `chosen` (the corpus' `response`) and `rejected` instead of `response`."""

    prompt: list[str] | None = None
    response: str | None = None
    chosen: str | None = None
    rejected: str | None = None
    text: str | None = None
    title: str | None = None
    id: str | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    def raw_fields(self) -> list[str]:
        names = [*(self.prompt or []), self.response, self.chosen, self.rejected, self.text, self.title, self.id]
        return list(dict.fromkeys(n for n in names if n))


def _required_choice(value: str | None, info: ValidationInfo, what: str, hint: str) -> str:
    if value is None or not str(value).strip():
        name = info.data.get("name", "?")
        raise ValueError(f"source '{name}' declares no {what}; every source must name its {what} ({hint}) "
                         "before it can be ingested")
    return str(value).strip()


class Source(StageConfig):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    path: str                     # file, directory or glob; local or s3://bucket/key-or-prefix
    format: Literal["json", "jsonl", "csv", "parquet", "text"]
    kind: Literal["instruction", "document", "preference"]  # preference: prompt, chosen, rejected
    # Required: data whose licence nobody wrote down does not enter the corpus (None only to give a clear message).
    licence: str | None = Field(default=None, validate_default=True)
    # Required too: what to do with personal data found in this source (None only to give a clear message).
    # Either one action for every entity type (`redact`, `drop`, `keep`) or a mapping entity -> action
    # (redact | pseudonymize | drop | keep) with `default` for the types it does not name, e.g.
    # {default: redact, PERSON: pseudonymize, DATE_TIME: keep}.
    pii: str | dict[str, str] | None = Field(default=None, validate_default=True)
    fields: FieldMap | None = None  # `text` sources default to {text: text}; their raw fields are text and file
    skip_rules: list[str] = []    # quality rules (or "language") not applied to this source, e.g. for code

    @field_validator("licence")
    @classmethod
    def _licence_declared(cls, value: str | None, info: ValidationInfo) -> str:
        return _required_choice(value, info, "licence", "an SPDX id such as MIT or CC-BY-SA-4.0")

    @field_validator("pii")
    @classmethod
    def _pii_declared(cls, value: str | dict | None, info: ValidationInfo) -> str | dict[str, str]:
        name = info.data.get("name", "?")
        if isinstance(value, dict):
            if "default" not in value:
                raise ValueError(f"source '{name}': a per-entity pii policy needs a `default` action "
                                 f"(for the entity types it does not name)")
            unknown = sorted(k for k in value if k != "default" and k not in pii_mod.ALL_ENTITIES)
            if unknown:
                raise ValueError(f"source '{name}': unknown PII entity type(s) {unknown} in pii; "
                                 f"known: {', '.join(pii_mod.ALL_ENTITIES)}")
            bad = {k: v for k, v in value.items() if v not in pii_mod.ACTIONS}
            if bad:
                raise ValueError(f"source '{name}': pii actions must be one of {', '.join(pii_mod.ACTIONS)}, "
                                 f"not {bad}")
            return dict(value)
        value = _required_choice(value, info, "PII policy", "pii: redact, drop or keep")
        if value not in PII_POLICIES:
            raise ValueError(f"source '{name}': pii must be one of {', '.join(PII_POLICIES)}, "
                             f"not {value!r}")
        return value

    def pii_actions(self, entities: Sequence[str]) -> dict[str, str]:
        """entity -> action (redact | pseudonymize | drop | keep) for each entity type detection runs on."""
        return pii_actions(self.pii, entities)

    @field_validator("skip_rules")
    @classmethod
    def _known_rules(cls, value: list[str]) -> list[str]:
        unknown = [r for r in value if r not in SKIPPABLE]
        if unknown:
            raise ValueError(f"unknown rule(s) {unknown}; known: {', '.join(SKIPPABLE)}")
        return value

    @model_validator(mode="after")
    def _fields_fit_kind(self) -> "Source":
        if self.format == "text":
            if self.kind != "document":
                raise ValueError(f"source '{self.name}': a text folder holds documents (kind: document)")
            fields = self.fields or FieldMap(text="text")
            bad = [n for n in fields.raw_fields() if n not in TEXT_FIELDS]
            if bad:
                raise ValueError(f"source '{self.name}': a text source offers fields {TEXT_FIELDS}, not {bad}")
            object.__setattr__(self, "fields", fields)
        if self.fields is None:
            raise ValueError(f"source '{self.name}' must declare `fields` (which raw field feeds which column)")
        need = {"instruction": ("prompt", "response"), "preference": ("prompt", "chosen", "rejected")}.get(
            self.kind, ("text",))
        missing = [k for k in need if not getattr(self.fields, k)]
        if missing:
            raise ValueError(f"source '{self.name}' (kind {self.kind}) must map fields: {', '.join(missing)}")
        wrong = [k for k in ("chosen", "rejected") if self.kind != "preference" and getattr(self.fields, k)] + \
            (["response"] if self.kind == "preference" and self.fields.response else [])
        if wrong:
            raise ValueError(f"source '{self.name}' (kind {self.kind}) cannot map fields: {', '.join(wrong)} "
                             "(a preference source maps prompt, chosen, rejected; others no chosen/rejected)")
        return self

