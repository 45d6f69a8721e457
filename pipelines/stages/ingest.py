"""ingest: read the declared raw sources with Spark, clean them and write one corpus table with a fixed schema.

Sources (`params.yaml` ingest.sources) are JSONL (also gzipped), JSON arrays, CSV, Parquet or plain-text folders,
local or `s3://`, each with a field mapping, a licence and a PII policy (`redact | drop | keep`); a source without
a licence or a PII policy is refused before anything runs. Per record, in order:

1. parse checks (Spark): binary content, undecodable bytes (invalid UTF-8), malformed JSON/CSV, missing mapped
   fields, empty text, a repeated source id (`fields.id`: the first occurrence by file and position is kept);
2. cleaning (a pandas UDF running `pipelines.data.clean`): NFKC / control characters / whitespace normalization,
   Gopher/C4-style quality rules (`quality`, each rule counted by name), offline language identification
   (`language`), PII detection with validators and the source's policy (typed placeholders such as `<EMAIL>`).

Nothing is lost: every dropped record goes to the rejects table with its reason and rule, and the stage refuses
to finish unless `in == out + rejected` holds for every source (counted on what was actually written). Output is
sorted and content-addressed (doc_id = sha256 of source + cleaned content), so a rerun writes the same rows.

The steps live in pipelines/data: source_config (declarations), sources (readers, s3 staging), parse_checks,
clean_spark (the UDF over pipelines.data.clean), ingest_rows (doc ids, rejects rows, sorted writes) and
ingest_accounting (counts, the balance check, the report).
"""
from __future__ import annotations

from typing import TypedDict

from pydantic import Field, field_validator, model_validator

from pipelines.config import StageConfig
from pipelines.data import pii as pii_mod
from pipelines.data.clean import Language, Normalize, QualityRules
from pipelines.data.clean_spark import clean_on_spark, precompute_ner
from pipelines.data.ingest_accounting import (
    SourceReport,
    TotalReport,
    check_written,
    count_cleaned,
    count_written,
    empty_source_notes,
    source_report,
    total_report,
)
from pipelines.data.ingest_rows import kept, reject_rows, rejected, with_doc_id, write_corpus, write_rejects
from pipelines.data.parse_checks import classify
from pipelines.data.source_config import Source
from pipelines.data.landing import landed_sources
from pipelines.data.sources import READERS, check_exists, local_path, staging_area
from pipelines.engines.config import EnginesConfig
from pipelines.engines.spark import session
from pipelines.io import atomic_path, write_json

SECTION = "ingest"
STAGE = "ingest"


class PiiNer(StageConfig):
    batch_size: int = Field(ge=1)       # texts per nlp.pipe batch
    chunk_chars: int = Field(ge=200)    # longer texts are cut at a line/sentence/word boundary, offsets kept
    score_threshold: float = Field(ge=0, le=1)  # Presidio results below it are ignored
    # Each distinct sentence of the corpus through the model once, on Spark, before cleaning
    # (pipelines.data.clean_spark.precompute_ner); false: once per executor Python worker only.
    corpus_pass: bool
    # The corpus pass's results are broadcast up to this many distinct sentences, joined onto the records above.
    broadcast_max_segments: int = Field(ge=0)


class Config(StageConfig):
    sources: list[Source] = Field(min_length=1)
    input_dir: str  # tracked by dvc as the stage's dependency; sources name their own paths
    output_dir: str
    rejects_dir: str
    metrics: str
    output_files: int = Field(ge=1)
    normalize: Normalize
    language: Language          # allowed: [] identifies and reports, drops nothing
    quality: QualityRules       # null (or {} / []) switches a rule off
    pii_entities: list[str]     # detectors run on every source; [] turns detection off
    pii_ner: PiiNer             # sizing of the NER detectors (pipelines.data.pii_ner)
    binary_control_ratio: float = Field(gt=0, le=1)  # control/undecodable chars above it: binary_content
    staging_dir: str | None  # where s3:// sources are copied; null: a temp dir removed after the run
    landed_dir: str | None  # approved landing batches (pipelines/data/landing.py), read as more sources; null: none

    @field_validator("pii_entities")
    @classmethod
    def _known_entities(cls, value: list[str]) -> list[str]:
        unknown = [e for e in value if e not in pii_mod.ALL_ENTITIES]
        if unknown:
            raise ValueError(f"unknown PII entity type(s) {unknown}; known: {', '.join(pii_mod.ALL_ENTITIES)}")
        return value

    @model_validator(mode="after")
    def _unique_names(self) -> "Config":
        names = [s.name for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique; repeated: {', '.join(dupes)}")
        return self


def with_landed_sources(cfg: Config) -> Config:
    """The declared sources plus the approved batches of the landing inbox (a landed source may not reuse a
    declared source's name: its manifest, licence and approval are its own)."""
    if not cfg.landed_dir:
        return cfg
    landed = landed_sources(cfg.landed_dir)
    clash = sorted({s.name for s in landed} & {s.name for s in cfg.sources})
    if clash:
        raise ValueError(f"landed source(s) {clash} reuse the name of a declared ingest source; rename the "
                         f"landing folder")
    return cfg.model_copy(update={"sources": [*cfg.sources, *landed]}) if landed else cfg


class IngestReport(TypedDict):
    stage: str
    sources: dict[str, SourceReport]
    total: TotalReport
    notes: list[str]
    ner_corpus_pass: dict | None  # {mode: broadcast | join, distinct_sentences}; None: no corpus pass ran
    output_dir: str
    rejects_dir: str


def run(cfg: Config, engines: EnginesConfig | None = None, *, spark=None) -> IngestReport:
    cfg = with_landed_sources(cfg)
    for src in cfg.sources:
        check_exists(src)
    spark = session(engines, spark)
    frames, blanks, notes = [], {}, []
    with staging_area(cfg.staging_dir) as staging:  # staged files are read until the tables are written
        for src in cfg.sources:
            raw = READERS[src.format](spark, src, local_path(src, staging))
            blanks[src.name] = raw.blank_lines
            notes += raw.notes
            frames.append(classify(raw.df, src, cfg.binary_control_ratio))
        parsed = frames[0]
        for df in frames[1:]:
            parsed = parsed.unionByName(df)
        ner_opts = cfg.pii_ner.model_dump(exclude={"corpus_pass", "broadcast_max_segments"})
        precomputed = None
        if cfg.pii_ner.corpus_pass:
            parsed = parsed.cache()  # read twice: the sentences for the model, then the cleaning
            precomputed = precompute_ner(spark, parsed, cfg.sources, normalize=cfg.normalize,
                                         pii_entities=cfg.pii_entities, pii_ner=ner_opts,
                                         broadcast_max_segments=cfg.pii_ner.broadcast_max_segments)
            if precomputed is None:  # no source needs NER: nothing was read yet
                parsed.unpersist()
        records = precomputed.attach(parsed) if precomputed is not None else parsed  # join mode: + `_ner`
        cleaned = clean_on_spark(records, cfg.sources, normalize=cfg.normalize, language=cfg.language,
                                 quality=cfg.quality, pii_entities=cfg.pii_entities, pii_ner=ner_opts,
                                 precomputed=precomputed)
        # The UDF runs once: good rows, rejects and every count below read this cache.
        cleaned = cleaned.cache()
        try:
            counts = count_cleaned(cleaned)
            if precomputed is not None:  # `cleaned` is cached now (a lost partition is re-read from the source)
                parsed.unpersist()
            with atomic_path(cfg.output_dir) as out_tmp, atomic_path(cfg.rejects_dir) as rej_tmp:
                write_corpus(with_doc_id(kept(cleaned)), out_tmp, cfg.output_files)
                write_rejects(reject_rows(rejected(cleaned), STAGE), rej_tmp)
                # Counted on the files, not the plan; a failed check raises here, before either table is swapped in.
                written = count_written(spark, out_tmp, rej_tmp)
                check_written([s.name for s in cfg.sources], counts, written)
        finally:  # released on success and failure alike
            cleaned.unpersist()
            if precomputed is not None:  # after the writes: a recomputed partition still needs the table
                parsed.unpersist()
                precomputed.destroy()

    sources = {src.name: source_report(src, counts, written, blanks[src.name]) for src in cfg.sources}
    report: IngestReport = {
        "stage": STAGE,
        "sources": sources,
        "total": total_report(sources),
        "notes": notes + empty_source_notes(sources),
        "ner_corpus_pass": precomputed.report() if precomputed is not None else None,
        "output_dir": cfg.output_dir,
        "rejects_dir": cfg.rejects_dir,
    }
    write_json(cfg.metrics, report)
    return report
