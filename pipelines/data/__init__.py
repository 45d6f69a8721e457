"""Helpers shared by the data stages (ingest, dedup, split): the corpus and rejects schemas, text normalization."""
