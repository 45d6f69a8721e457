"""A model card per registered version: what the model is, what it was trained and judged on, and the lineage that
links the raw sources through the versioned datasets to the version and its deployment.

The lineage is read from `dvc.lock` (the content hashes DVC recorded for each stage's inputs and outputs in this
run) and from the stage params, so the card names exact versions, not paths that may have changed since. The
same chain is what OpenLineage reports from Airflow (namespace `llmops`, one job per lifecycle task); the card
names those jobs so a lineage backend (Marquez) can be searched from it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pipelines.config import project_root

LINEAGE_STAGES = ("ingest", "dedup", "split", "embed", "finetune", "evaluate", "audit", "gate")
OPENLINEAGE_NAMESPACE = "llmops"


def _lock(root: Path) -> dict[str, Any]:
    path = root / "dvc.lock"
    return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("stages", {}) if path.exists() else {}


def _entries(items: list[dict[str, Any]] | None) -> list[tuple[str, str]]:
    return [(e["path"], e.get("md5") or e.get("hash") or "") for e in items or []
            if not str(e.get("path", "")).startswith("pipelines/")]


def lineage(root: Path | None = None) -> dict[str, Any]:
    """Stage -> {inputs, outputs} with DVC's content hashes (code deps left out: the git commit names them)."""
    root = root or project_root()
    lock = _lock(root)
    return {stage: {"inputs": _entries(lock[stage].get("deps")), "outputs": _entries(lock[stage].get("outs"))}
            for stage in LINEAGE_STAGES if stage in lock}


def training_sources(root: Path | None = None) -> list[dict[str, Any]]:
    """The sources ingest read in this run: the declared ones (as dvc.lock recorded ingest's params) plus the landed
    batches a person approved (their approval record)."""
    root = root or project_root()
    params = _lock(root).get("ingest", {}).get("params", {}).get("params.yaml", {})
    ingest = params.get("ingest", params)
    sources = [dict(s) for s in ingest.get("sources", []) if isinstance(s, dict)]
    landed_dir = ingest.get("landed_dir")
    approvals = root / landed_dir / "approvals.json" if landed_dir else None
    if approvals and approvals.exists():
        import json

        for name, a in sorted(json.loads(approvals.read_text()).items()):
            sources.append({"name": name, "kind": "landed", "licence": a.get("licence"), "pii": "per manifest",
                            "path": f"{landed_dir}/{name}", "approved_by": a.get("approved_by")})
    return sources


def render(*, model_name: str, version: int, alias: str, run_id: str, adapter_sha256: str, decision: dict[str, Any],
           base_model: str, root: Path | None = None,
           extra: dict[str, str] | None = None) -> str:
    root = root or project_root()
    lines = [f"# Model card: {model_name} version {version}", "",
             f"- Registered model: `{model_name}`, version **{version}** (alias `{alias}` when promoted)",
             f"- Base model: `{base_model}`; LoRA adapter sha256 `{adapter_sha256}`",
             f"- MLflow run: `{run_id}`",
             f"- Gate decision: **{decision.get('decision')}** against champion {decision.get('champion')}"]
    for key, value in (extra or {}).items():
        lines.append(f"- {key}: {value}")
    lines += ["", "## Gate checks", "", "| check | metric | observed | threshold | result |", "|---|---|---|---|---|"]
    for check in decision.get("reasons", []):
        lines.append(f"| {check.get('check')} | {check.get('metric') or ''} | {check.get('observed')} | "
                     f"{check.get('op') or ''} {check.get('threshold')} | {'pass' if check.get('passed') else 'FAIL'} |")
    lines += ["", "## Training data sources", "", "| source | kind | licence | PII policy | path |", "|---|---|---|---|---|"]
    for s in training_sources(root):
        lines.append(f"| {s.get('name')} | {s.get('kind')} | {s.get('licence')} | {s.get('pii')} | `{s.get('path')}` |")
    lines += ["", "## Lineage (DVC content hashes of this run)", ""]
    for stage, io in lineage(root).items():
        lines.append(f"**{stage}** (OpenLineage job `{OPENLINEAGE_NAMESPACE}` / `llmops_lifecycle.{stage}`)")
        lines += [f"- in `{p}` {h[:12]}" for p, h in io["inputs"]]
        lines += [f"- out `{p}` {h[:12]}" for p, h in io["outputs"]]
        lines.append("")
    lines += ["## Deployment", "",
              f"Served by the OpenAI-compatible API from the registry alias `{alias}`; the lifecycle's `deploy` task "
              "records the served version in `reports/deployment.json` (Asset `llmops/deployed_model`).", ""]
    return "\n".join(lines)
