"""Cleaning on Spark: `pipelines.data.clean` run as one pandas UDF (mapInPandas) over every source's parsed rows.

Each source gets its own cleaner (its kind, PII policy and skipped rules). The output adds `_lang`, `_lang_prob`,
`_pii` (entity type of every span found), `_pii_unscanned` (NER needed but the text is not English) and
`_changed` (normalization altered the record) for ingest's counts.

`precompute_ner` runs first when a source's policy needs NER: every distinct sentence of the corpus through the
model once, its results handed to the cleaning UDF, which then runs the model only on what it does not find. Up
to `ingest.pii_ner.broadcast_max_segments` distinct sentences the results are broadcast (every worker holds the
whole table); above it they are joined onto the records instead (each record carries its own sentences' results,
so no process ever holds the whole table: it scales past driver and worker memory, for one more shuffle).
NER (pipelines.data.pii_ner) runs per Arrow batch through `nlp.pipe`; the analyzer and its spaCy model are cached
at module level in the executor's Python worker, so with Spark's worker reuse (the default,
`spark.python.worker.reuse`) each worker loads the model once. `engines.spark` sizes it: the master's cores are
the workers (one model each, ~150 MB), `spark.sql.execution.arrow.maxRecordsPerBatch` the records per UDF batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

from pipelines.data.clean import (Language, Normalize, QualityRules, cleaner_options, detector_entities,
                                  scanned_fields)
from pipelines.data.source_config import Source

_CLEAN_DDL = (
    "_file string, _pos long, _line long, _raw string, _reason string, _rule string, _detail string, "
    "source string, licence string, kind string, text string, prompt string, response string, rejected string, "
    "title string, "
    "_lang string, _lang_prob double, _pii array<string>, _pii_unscanned boolean, _changed boolean"
)


def clean_on_spark(df, sources: Sequence[Source], *, normalize: Normalize, language: Language,
                   quality: QualityRules, pii_entities: Sequence[str], pii_ner: dict | None = None,
                   precomputed=None):
    """Run normalization, quality rules, language id and each source's PII policy on the rows that passed parsing
    (one pandas UDF over every source; rows already rejected pass through untouched).

    The function shipped to the executors imports `pipelines.data.clean` there. local[*] and a standalone worker
    started from this virtualenv run the project interpreter (PYSPARK_PYTHON) with the package installed, so that
    works as is; a remote cluster needs the package shipped too (an installed wheel, or `spark.submit.pyFiles`).

    `precomputed`: `precompute_ner`'s result (or None): sentences in it skip the model. In join mode `df` must be
    `precomputed.attach(df)` (the records with their `_ner` column).
    """
    broadcast = precomputed.broadcast if precomputed is not None else None
    join_keys = precomputed.keys if precomputed is not None and precomputed.mode == "join" else None
    per_source = {s.name: (s.kind, s.pii, cleaner_options(normalize, language, quality, pii_entities, s.skip_rules,
                                                          pii_ner))
                  for s in sources}
    out_cols = [c.split()[0] for c in _CLEAN_DDL.split(", ")]
    fields = ("prompt", "response", "rejected", "text", "title")

    def clean_batches(batches):
        import pandas as pd

        from pipelines.data.clean import make_cleaner

        from pipelines.data import pii_ner as ner_module

        cleaners: dict = {}
        if broadcast is not None:
            ner_module.use_precomputed(broadcast.value)  # loaded once per worker, then Spark's cached copy
        for pdf in batches:
            if join_keys is not None:  # this batch's sentences, joined onto its records
                ner_module.use_precomputed(_batch_tables(pdf["_ner"], join_keys))
            recs = [{k: (None if isinstance(v, float) and v != v else v) for k, v in rec.items()}  # NaN -> None
                    for rec in pdf.to_dict("records")]
            by_source: dict[str, list[int]] = {}
            for i, rec in enumerate(recs):
                if rec["_reason"] is None:
                    by_source.setdefault(rec["source"], []).append(i)
                else:
                    rec.update(_lang=None, _lang_prob=None, _pii=[], _pii_unscanned=False, _changed=False)
            for name, idx in by_source.items():  # one batched call per source: NER goes through nlp.pipe
                if name not in cleaners:
                    kind, policy, opts = per_source[name]
                    cleaners[name] = make_cleaner(kind=kind, pii_policy=policy, opts=opts)
                results = cleaners[name].many([{k: recs[i][k] for k in fields} for i in idx])
                for i, res in zip(idx, results):
                    rec = recs[i]
                    rec.update({k: res[k] for k in fields})
                    rec.update(_reason=res["reason"], _rule=res["rule"], _detail=res["detail"] or None,
                               _lang=res["lang"], _lang_prob=float(res["lang_prob"]), _pii=res["pii"],
                               _pii_unscanned=bool(res["pii_unscanned"]), _changed=bool(res["changed"]))
            yield pd.DataFrame([{c: rec.get(c) for c in out_cols} for rec in recs], columns=out_cols)

    return df.mapInPandas(clean_batches, _CLEAN_DDL)


_SEGMENT_DDL = "g int, seg string"
_RECORD_SEGMENT_DDL = "source string, _file string, _pos long, g int, seg string"
_FOUND_DDL = "g int, digest binary, found string"
RECORD_KEY = ("source", "_file", "_pos")  # one parsed record (the readers' file and position, per source)


def _batch_tables(column, keys: dict[int, tuple]) -> dict[tuple, dict[bytes, list]]:
    """{cache key: {digest: candidates}} from a batch's `_ner` column (a list of (g, digest, found) per record)."""
    import json

    tables: dict[tuple, dict[bytes, list]] = {key: {} for key in keys.values()}
    for entries in column:
        if entries is None or (isinstance(entries, float) and entries != entries):  # no sentence (NaN: None)
            continue
        for e in entries:
            tables[keys[int(e["g"])]][bytes(e["digest"])] = [tuple(c) for c in json.loads(e["found"])]
    return tables


@dataclass
class PrecomputedNer:
    """`precompute_ner`'s result: the model's candidates of every distinct sentence, broadcast or per record."""
    mode: Literal["broadcast", "join"]
    segments: int                 # distinct (entity list, sentence) pairs run through the model
    keys: dict[int, tuple]        # group number -> pii_ner cache key (the detector's entity list and options)
    broadcast: Any = None         # broadcast mode: Broadcast of {cache key: {segment_digest: candidates}}
    per_record: Any = None        # join mode: DataFrame RECORD_KEY + `_ner` array<struct<g, digest, found>>
    found: Any = None             # join mode: the cached (g, digest, found) table behind `per_record`

    def attach(self, df):
        """`df` with the `_ner` column `clean_on_spark` reads in join mode (unchanged in broadcast mode)."""
        if self.mode != "join":
            return df
        return df.join(self.per_record, list(RECORD_KEY), "left")

    def destroy(self) -> None:
        if self.broadcast is not None:
            self.broadcast.destroy()
        if self.found is not None:
            self.found.unpersist()

    def report(self) -> dict[str, Any]:
        return {"mode": self.mode, "distinct_sentences": self.segments}


def precompute_ner(spark, df, sources: Sequence[Source], *, normalize: Normalize, pii_entities: Sequence[str],
                   pii_ner: dict | None = None, broadcast_max_segments: int | None = None) -> PrecomputedNer | None:
    """The NER model's results for every distinct sentence of the corpus, run once each across the executors, for
    `clean_on_spark` (None when no source's policy needs NER): a broadcast when there are at most
    `broadcast_max_segments` distinct sentences (None: no limit), else a join onto the records (`attach`).

    Why: corpora repeat passages across records and files (t0 quotes the same paragraph in many templates), and
    a per-worker cache only catches the repeats one worker happens to see: on t0 the two workers of local[2] gave
    the model 13.2M characters between them, the corpus has 8.3M distinct. Here the sentences are exploded from
    the normalized fields (the cleaner's normalization, so they are the strings the cleaner will look up),
    de-duplicated with a Spark `distinct` (one shuffle of the sentences), and run through the model in
    `mapInPandas`; the driver collects 16-byte digests and the model's candidates (no text) and broadcasts them.
    Records later rejected by the quality or language rules are scanned here too (wasted work, never a wrong
    span: the cleaner runs the model on any sentence it does not find). The broadcast holds ~50 bytes per
    distinct sentence plus its candidates, in the driver and in every worker: above `broadcast_max_segments`
    the results are joined onto the records instead (the model still runs once per distinct sentence; the
    sentences are exploded a second time with their record's key, a Python pass without the model).
    """
    import json

    groups: dict[tuple, int] = {}       # the detector's entity list -> group number
    per_source: dict[str, tuple[int, tuple[str, ...]]] = {}
    for src in sources:
        structured, ner = detector_entities(src.pii, list(pii_entities))
        if ner:
            per_source[src.name] = (groups.setdefault(tuple(structured + ner), len(groups)), scanned_fields(src.kind))
    if not per_source:
        return None
    from pipelines.data import pii_ner as ner_module

    ner_opts = dict(pii_ner or {})
    opts = ner_module.NerOptions(**ner_opts)
    wanted = {g: list(w) for w, g in groups.items()}
    keys = {g: ner_module.model_segments([], w, opts)[0] for g, w in wanted.items()}
    norm = normalize.model_dump()

    def record_texts(rec, cfg) -> tuple[int, list[str]] | None:
        from pipelines.data.clean import normalize as normalized

        reason = rec["_reason"]
        if (reason is None or reason != reason) and rec["source"] in per_source:  # NaN: pandas' None
            g, fields = per_source[rec["source"]]
            return g, [normalized(v, cfg) for v in (rec[k] for k in fields) if isinstance(v, str)]
        return None

    def explode(batches):
        import pandas as pd

        from pipelines.data import pii_ner as P
        from pipelines.data.clean import Normalize as Norm

        cfg, o = Norm(**norm), P.NerOptions(**ner_opts)
        for pdf in batches:
            texts: dict[int, list] = {}
            for rec in pdf.to_dict("records"):
                if (got := record_texts(rec, cfg)) is not None:
                    texts.setdefault(got[0], []).extend(got[1])
            rows = [(g, seg) for g, ts in texts.items() for seg in P.model_segments(ts, wanted[g], o)[1]]
            yield pd.DataFrame(rows, columns=["g", "seg"])

    def explode_per_record(batches):
        import pandas as pd

        from pipelines.data import pii_ner as P
        from pipelines.data.clean import Normalize as Norm

        cfg, o = Norm(**norm), P.NerOptions(**ner_opts)
        for pdf in batches:
            rows = []
            for rec in pdf.to_dict("records"):
                if (got := record_texts(rec, cfg)) is not None:
                    key = (rec["source"], rec["_file"], int(rec["_pos"]))
                    rows += [(*key, got[0], seg) for seg in P.model_segments(got[1], wanted[got[0]], o)[1]]
            yield pd.DataFrame(rows, columns=["source", "_file", "_pos", "g", "seg"])

    def run(batches):
        import pandas as pd

        from pipelines.data import pii_ner as P

        o = P.NerOptions(**ner_opts)
        for pdf in batches:
            rows = []
            for g, part in pdf.groupby("g", sort=True):
                segs = part["seg"].tolist()
                found = P.run_model(keys[int(g)], segs, o)
                rows += [(int(g), P.segment_digest(seg), json.dumps(f)) for seg, f in zip(segs, found)]
            yield pd.DataFrame(rows, columns=["g", "digest", "found"])

    from pyspark.sql import functions as F

    # `rejected` (preference pairs) when the records carry it (a frame of parsed records always does)
    cols = ["source", "_reason", "prompt", "response", *(["rejected"] if "rejected" in df.columns else []),
            "text", "title"]
    segments = df.select(*cols).mapInPandas(explode, _SEGMENT_DDL).distinct()
    found = segments.mapInPandas(run, _FOUND_DDL).persist()  # the model runs here, once per distinct sentence
    n = found.count()
    group_keys = {g: keys[g] for g in wanted}
    if broadcast_max_segments is None or n <= broadcast_max_segments:
        tables: dict[tuple, dict[bytes, list]] = {key: {} for key in keys.values()}
        for row in found.collect():  # toLocalIterator would run one partition at a time
            tables[keys[row.g]][bytes(row.digest)] = [tuple(c) for c in json.loads(row.found)]
        found.unpersist()
        return PrecomputedNer("broadcast", n, group_keys, broadcast=spark.sparkContext.broadcast(tables))

    def digest_of(batches):
        from pipelines.data import pii_ner as P

        for pdf in batches:
            pdf["digest"] = [P.segment_digest(seg) for seg in pdf["seg"]]
            yield pdf.drop(columns=["seg"])

    per_segment = (df.select(*RECORD_KEY, *cols[1:]).mapInPandas(explode_per_record, _RECORD_SEGMENT_DDL)
                   .distinct()
                   .mapInPandas(digest_of, "source string, _file string, _pos long, g int, digest binary"))
    per_record = (per_segment.join(found, ["g", "digest"])
                  .groupBy(*RECORD_KEY)
                  .agg(F.collect_list(F.struct("g", "digest", "found")).alias("_ner")))
    return PrecomputedNer("join", n, group_keys, per_record=per_record, found=found)
