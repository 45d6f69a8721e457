"""Cleaning on Spark: `pipelines.data.clean` run as one pandas UDF (mapInPandas) over every source's parsed rows.

Each source gets its own cleaner (its kind, PII policy and skipped rules). The output adds `_lang`, `_lang_prob`,
`_pii` (entity type of every span found), `_pii_unscanned` (NER needed but the text is not English) and
`_changed` (normalization altered the record) for ingest's counts.

NER (pipelines.data.pii_ner) runs per Arrow batch through `nlp.pipe`; the analyzer and its spaCy model are cached
at module level in the executor's Python worker, so with Spark's worker reuse (the default,
`spark.python.worker.reuse`) each worker loads the model once. `engines.spark` sizes it: the master's cores are
the workers (one model each, ~150 MB), `spark.sql.execution.arrow.maxRecordsPerBatch` the records per UDF batch.
"""
from __future__ import annotations

from typing import Sequence

from pipelines.data.clean import Language, Normalize, QualityRules, cleaner_options
from pipelines.data.source_config import Source

_CLEAN_DDL = (
    "_file string, _pos long, _line long, _raw string, _reason string, _rule string, _detail string, "
    "source string, licence string, kind string, text string, prompt string, response string, title string, "
    "_lang string, _lang_prob double, _pii array<string>, _pii_unscanned boolean, _changed boolean"
)


def clean_on_spark(df, sources: Sequence[Source], *, normalize: Normalize, language: Language,
                   quality: QualityRules, pii_entities: Sequence[str], pii_ner: dict | None = None):
    """Run normalization, quality rules, language id and each source's PII policy on the rows that passed parsing
    (one pandas UDF over every source; rows already rejected pass through untouched).

    The function shipped to the executors imports `pipelines.data.clean` there. local[*] and a standalone worker
    started from this virtualenv run the project interpreter (PYSPARK_PYTHON) with the package installed, so that
    works as is; a remote cluster needs the package shipped too (an installed wheel, or `spark.submit.pyFiles`).
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
