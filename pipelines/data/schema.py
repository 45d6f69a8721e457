"""The fixed tables the data stages hand to each other. Every stage writes exactly these columns, in this order."""
from __future__ import annotations

# Curated corpus: one row per document or instruction pair (ingest -> dedup -> validate/split/embed).
CORPUS_COLUMNS: tuple[str, ...] = (
    "doc_id", "source", "licence", "kind", "text", "prompt", "response", "title", "n_chars",
)
CORPUS_DDL = (
    "doc_id string, source string, licence string, kind string, text string, "
    "prompt string, response string, title string, n_chars int"
)

# Rejects: every record a stage drops, with why. `line` is the 1-based line of a JSONL source (null otherwise).
REJECT_COLUMNS: tuple[str, ...] = ("source", "path", "line", "raw", "reason", "rule", "stage")
REJECT_DDL = "source string, path string, line long, raw string, reason string, rule string, stage string"

MAX_RAW_CHARS = 2000
