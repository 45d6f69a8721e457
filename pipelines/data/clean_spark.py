"""Cleaning on Spark: `pipelines.data.clean` run as one pandas UDF (mapInPandas) over every source's parsed rows.

Each source gets its own cleaner (its kind, PII policy and skipped rules). The output adds `_lang`, `_lang_prob`,
`_pii` (entity type of every span found), `_pii_unscanned` (NER needed but the text is not English) and
`_changed` (normalization altered the record) for ingest's counts.

`precompute_ner` runs first when a source's policy needs NER: every distinct sentence of the corpus through the
model once, its results broadcast to the cleaning UDF, which then runs the model only on what it does not find.
NER (pipelines.data.pii_ner) runs per Arrow batch through `nlp.pipe`; the analyzer and its spaCy model are cached
at module level in the executor's Python worker, so with Spark's worker reuse (the default,
`spark.python.worker.reuse`) each worker loads the model once. `engines.spark` sizes it: the master's cores are
the workers (one model each, ~150 MB), `spark.sql.execution.arrow.maxRecordsPerBatch` the records per UDF batch.
"""
from __future__ import annotations

from typing import Sequence

from pipelines.data.clean import (Language, Normalize, QualityRules, cleaner_options, detector_entities,
                                  scanned_fields)
from pipelines.data.source_config import Source

_CLEAN_DDL = (
    "_file string, _pos long, _line long, _raw string, _reason string, _rule string, _detail string, "
    "source string, licence string, kind string, text string, prompt string, response string, title string, "
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

    `precomputed`: the broadcast from `precompute_ner` (or None): sentences in it skip the model.
    """
    per_source = {s.name: (s.kind, s.pii, cleaner_options(normalize, language, quality, pii_entities, s.skip_rules,
                                                          pii_ner))
                  for s in sources}
    out_cols = [c.split()[0] for c in _CLEAN_DDL.split(", ")]
    fields = ("prompt", "response", "text", "title")

    def clean_batches(batches):
        import pandas as pd

        from pipelines.data.clean import make_cleaner

        cleaners: dict = {}
        if precomputed is not None:
            from pipelines.data import pii_ner as ner_module

            ner_module.use_precomputed(precomputed.value)  # loaded once per worker, then Spark's cached copy
        for pdf in batches:
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
_FOUND_DDL = "g int, digest binary, found string"


def precompute_ner(spark, df, sources: Sequence[Source], *, normalize: Normalize, pii_entities: Sequence[str],
                   pii_ner: dict | None = None):
    """The NER model's results for every distinct sentence of the corpus, run once each across the executors, as
    a broadcast for `clean_on_spark` (None when no source's policy needs NER).

    Why: corpora repeat passages across records and files (t0 quotes the same paragraph in many templates), and
    a per-worker cache only catches the repeats one worker happens to see: on t0 the two workers of local[2] gave
    the model 13.2M characters between them, the corpus has 8.3M distinct. Here the sentences are exploded from
    the normalized fields (the cleaner's normalization, so they are the strings the cleaner will look up),
    de-duplicated with a Spark `distinct` (one shuffle of the sentences), and run through the model in
    `mapInPandas`; the driver collects 16-byte digests and the model's candidates (no text) and broadcasts them.
    Records later rejected by the quality or language rules are scanned here too (wasted work, never a wrong
    span: the cleaner runs the model on any sentence it does not find). The broadcast holds ~50 bytes per
    distinct sentence plus its candidates, so for a corpus of hundreds of millions of sentences switch it off
    (`ingest.pii_ner.corpus_pass: false`) and rely on the per-worker cache.
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

    def explode(batches):
        import pandas as pd

        from pipelines.data import pii_ner as P
        from pipelines.data.clean import Normalize as Norm, normalize as normalized

        cfg, o = Norm(**norm), P.NerOptions(**ner_opts)
        for pdf in batches:
            texts: dict[int, list] = {}
            for rec in pdf.to_dict("records"):
                reason = rec["_reason"]
                if (reason is None or reason != reason) and rec["source"] in per_source:  # NaN: pandas' None
                    g, fields = per_source[rec["source"]]
                    texts.setdefault(g, []).extend(
                        normalized(v, cfg) for v in (rec[k] for k in fields) if isinstance(v, str))
            rows = [(g, seg) for g, ts in texts.items() for seg in P.model_segments(ts, wanted[g], o)[1]]
            yield pd.DataFrame(rows, columns=["g", "seg"])

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

    cols = ["source", "_reason", "prompt", "response", "text", "title"]
    segments = df.select(*cols).mapInPandas(explode, _SEGMENT_DDL).distinct()
    tables: dict[tuple, dict[bytes, list]] = {key: {} for key in keys.values()}
    for row in segments.mapInPandas(run, _FOUND_DDL).collect():  # toLocalIterator would run one partition at a time
        tables[keys[row.g]][bytes(row.digest)] = [tuple(c) for c in json.loads(row.found)]
    return spark.sparkContext.broadcast(tables)
