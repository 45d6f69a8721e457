"""One module per stage. Each exposes `Config` (its params.yaml section), `SECTION` and `run(cfg) -> dict`."""
