"""The end-of-run summary `make demo` prints: the gate decision and where every stage's output lies."""
from __future__ import annotations

import json
from pathlib import Path

from pipelines.orchestration.dvc_graph import load_stage_graph


def _figures(path: Path) -> str:
    if path.suffix != ".json" or not path.exists():
        return ""
    try:
        data = json.loads(path.read_text())
    except ValueError:
        return ""
    flat = {k: v for k, v in data.items() if isinstance(v, (int, float, str, bool)) and len(str(v)) < 40}
    shown = ", ".join(f"{k}={v}" for k, v in list(flat.items())[:6])
    return f"  [{shown}]" if shown else ""


def render_summary(root: str | Path = ".") -> str:
    root = Path(root)
    lines = ["", "== LLMOps lifecycle: outputs =="]
    for stage in load_stage_graph(root):
        lines.append(f"{stage.name}:")
        for out in stage.outs:
            path = root / out
            state = "" if path.exists() else "  (missing)"
            lines.append(f"  {out}{state}{_figures(path)}")
    params = __import__("yaml").safe_load((root / "params.yaml").read_text())
    decision_path = root / params["gate"]["decision"]
    lines.append("")
    if decision_path.exists():
        decision = json.loads(decision_path.read_text())
        lines.append(f"== Gate decision: {str(decision.get('decision', '?')).upper()} ==")
        for check in decision.get("checks", decision.get("reasons", [])):
            if isinstance(check, dict):
                mark = "ok  " if check.get("passed") else "FAIL"
                lines.append(
                    f"  {mark} {check.get('check', '?')} {check.get('metric') or ''}: observed {check.get('observed')}"
                    f" vs threshold {check.get('threshold')}"
                )
            else:
                lines.append(f"  {check}")
    else:
        lines.append(f"== Gate decision: not made yet ({decision_path} missing) ==")
    record = root / params["promote"]["record"]
    if record.exists():
        promo = json.loads(record.read_text())
        lines.append(f"Registry: {json.dumps({k: promo.get(k) for k in ('model_name', 'version', 'alias', 'promoted') if k in promo})}")
    lines.append("Serve the champion: .venv/bin/llmops serve   (POST http://127.0.0.1:8000/v1/chat/completions)")
    return "\n".join(lines)
