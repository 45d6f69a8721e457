"""Cost accounting: what a stage run used (wall, CPU, memory, GPU) and what it cost at the params.yaml price table.

- `prices`: the price table (`cost` in params.yaml), the one place prices are written.
- `meter`: `ResourceMeter`, which `pipelines.stages.registry.run_stage` wraps around every stage.
- `summary`: per-stage figures of one or more git/DVC revisions side by side (`llmops cost`).
"""
