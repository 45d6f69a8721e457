"""Read-only views of the platform: registry, gate, evaluation, drift, cost, maturity, prompts, lineage, RAG index,
rollout. Each answer is built from the files and registry the stages write (nothing cached across calls except the
RAG retriever and each version's immutable gate artifacts), so it is what `llmops` and the metrics files say.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

import yaml

from pipelines.platform_api.workspace import NotFound, PlatformError, Workspace

# ------------------------------------------------------------------------------------------------- registry


def _all_versions(ws: Workspace) -> list:
    if not ws.registry_exists():
        return []
    from mlflow.exceptions import MlflowException

    try:
        found = ws.client().search_model_versions(f"name='{ws.registry().model_name}'")
    except MlflowException:
        return []
    return sorted(found, key=lambda v: int(v.version))


def parse_version(version: Any) -> int:
    """A version number from 3, "3", "v3"; PlatformError naming the bad value otherwise."""
    text = str(version).strip()
    text = text[1:] if text[:1] in ("v", "V") else text
    if not text.isdigit() or int(text) < 1:
        raise PlatformError(f"version must be a positive integer such as 3 (got {version!r})")
    return int(text)


def get_version(ws: Workspace, version: Any):
    """The MLflow ModelVersion; NotFound naming the versions that exist."""
    number = parse_version(version)
    versions = _all_versions(ws)
    for v in versions:
        if int(v.version) == number:
            return v
    model = ws.registry().model_name
    have = ", ".join(str(v.version) for v in versions) or "none (nothing promoted yet)"
    raise NotFound(f"unknown version {number} of model '{model}': registered versions are {have}")


def aliases_of(ws: Workspace) -> dict[str, int]:
    """alias -> version of the registered model (search results do not carry aliases)."""
    from mlflow.exceptions import MlflowException

    if not ws.registry_exists():
        return {}
    try:
        model = ws.client().get_registered_model(ws.registry().model_name)
    except MlflowException:
        return {}
    return {alias: int(version) for alias, version in sorted((model.aliases or {}).items())}


def version_info(v, aliases: dict[str, int] | None = None) -> dict[str, Any]:
    from pipelines.models.registry import HASH_TAG, PROMPT_TAG

    tags = dict(v.tags or {})
    prev = tags.get("previous_champion")
    return {
        "version": int(v.version),
        "aliases": sorted(a for a, n in (aliases or {}).items() if n == int(v.version)),
        "created": int(v.creation_timestamp or 0) // 1000,
        "run_id": v.run_id,
        "promote_run_id": tags.get("promote_run_id", v.run_id),
        "adapter_sha256": tags.get(HASH_TAG),
        "prompt_templates_sha256": tags.get(PROMPT_TAG),
        "gate_decision": tags.get("gate_decision"),
        "previous_champion": int(prev) if prev not in (None, "", "None") else None,
        "source": v.source,
        "lineage_tags": {k: val for k, val in sorted(tags.items()) if k.startswith(("dataset.", "base_model.", "git_"))},
    }


def versions(ws: Workspace) -> dict[str, Any]:
    reg = ws.registry()
    aliases = aliases_of(ws)
    infos = [version_info(v, aliases) for v in _all_versions(ws)]
    return {"model_name": reg.model_name, "serving_alias": reg.alias, "aliases": aliases, "versions": infos}


_GATE_CACHE: dict[str, dict[str, Any]] = {}
_GATE_LOCK = threading.Lock()


def gate_artifacts(ws: Workspace, v) -> dict[str, Any]:
    """The files promote logged with the version under `gate/` (decision, evaluate and audit metrics), keyed
    "decision" / "evaluate" / "audit" by their content. Immutable once logged, so cached per run."""
    run_id = (v.tags or {}).get("promote_run_id", v.run_id)
    with _GATE_LOCK:
        if run_id in _GATE_CACHE:
            return _GATE_CACHE[run_id]
    out: dict[str, Any] = {}
    if run_id:
        from mlflow.exceptions import MlflowException

        with tempfile.TemporaryDirectory() as tmp:
            try:
                local = Path(ws.client().download_artifacts(run_id, "gate", tmp))
            except (MlflowException, OSError):
                local = None
            for f in sorted(local.glob("*.json")) if local and local.is_dir() else []:
                try:
                    data = json.loads(f.read_text(encoding="utf-8"))
                except ValueError:
                    continue
                if not isinstance(data, dict):
                    continue
                if "decision" in data and "reasons" in data:
                    out["decision"] = data
                elif "comparisons" in data or ("candidate" in data and "base" in data):
                    out["evaluate"] = data
                elif "attack_success_rate" in data:
                    out["audit"] = data
    with _GATE_LOCK:
        _GATE_CACHE[run_id] = out
    return out


def run_metrics(ws: Workspace, v) -> dict[str, float]:
    run_id = (v.tags or {}).get("promote_run_id", v.run_id)
    if not run_id:
        return {}
    return {k: float(x) for k, x in sorted(ws.client().get_run(run_id).data.metrics.items())}


def model_card(ws: Workspace, version: Any) -> str:
    v = get_version(ws, version)
    if v.description:
        return v.description
    info = version_info(v)
    return (f"# {ws.registry().model_name} version {info['version']}\n\nNo model card was recorded with this version "
            f"(adapter sha256 `{info['adapter_sha256']}`).\n")


# ------------------------------------------------------------------------------------------ evaluation and gate


def evaluation_report(evaluate: dict[str, Any] | None) -> dict[str, Any] | None:
    """evaluate's metrics grouped per task: each metric's candidate and reference values and, where evaluate
    bootstrapped them, the paired interval of candidate - reference on the same examples."""
    if not isinstance(evaluate, dict):
        return None
    cand, ref = evaluate.get("candidate") or {}, evaluate.get("base") or {}
    comparisons = evaluate.get("comparisons") or {}
    tasks: dict[str, dict[str, Any]] = {}
    for name in sorted(set(cand) | set(comparisons)):
        if "." not in name:
            continue  # headline aliases (perplexity, rouge_l) repeat a task metric
        task, metric = name.split(".", 1)
        iv = comparisons.get(name)
        entry = {"candidate": cand.get(name), "reference": (iv or {}).get("reference", ref.get(name))}
        if iv:
            entry.update({k: iv.get(k) for k in ("diff", "ci_low", "ci_high", "confidence", "n", "better")})
        tasks.setdefault(task, {})[metric] = entry
    return {
        "candidate_sha256": evaluate.get("candidate_sha256"),
        "reference_model": evaluate.get("reference_model"),
        "n_examples": evaluate.get("n_examples"),
        "bootstrap": evaluate.get("bootstrap"),
        "headline": {k: cand.get(k) for k in ("perplexity", "rouge_l") if k in cand},
        "tasks": tasks,
    }


def workspace_evaluation(ws: Workspace) -> dict[str, Any] | None:
    return evaluation_report(ws.json(ws.section("evaluate").get("metrics")))


def version_evaluation(ws: Workspace, version: Any) -> dict[str, Any]:
    v = get_version(ws, version)
    report = evaluation_report(gate_artifacts(ws, v).get("evaluate"))
    if report is None:
        raise NotFound(f"version {v.version} has no evaluation report recorded with it (no gate/ artifacts)")
    return {"version": int(v.version), **report}


def _check_words(c: dict[str, Any]) -> str:
    mark = "pass" if c.get("passed") else "FAIL"
    if c.get("check") == "versus_reference" and c.get("interval"):
        lo, hi = c["interval"]
        conf = c.get("confidence")
        what = (f"{c['metric']}: candidate - reference {c.get('diff')} ({conf:.0%} interval [{lo}, {hi}]); the "
                f"interval's {'top' if c.get('op') == '>=' else 'bottom'} {c.get('observed')} {c.get('op')} "
                f"{c.get('threshold')}") if isinstance(conf, (int, float)) else f"{c['metric']}: {c.get('observed')}"
    elif c.get("op"):
        what = f"{c.get('check')} {c.get('metric')}: observed {c.get('observed')} {c.get('op')} {c.get('threshold')}"
    else:
        what = f"{c.get('check')}: {c.get('note') or ''}".strip()
    note = f" ({c['note']})" if c.get("note") and c.get("op") else ""
    return f"{mark}: {what}{note}"


def explain_decision(decision: dict[str, Any]) -> dict[str, Any]:
    reasons = [r for r in decision.get("reasons") or [] if isinstance(r, dict)]
    failed = [r for r in reasons if not r.get("passed")]
    verdict = str(decision.get("decision"))
    champion = decision.get("champion")
    summary = (f"{verdict}: {len(reasons) - len(failed)} of {len(reasons)} checks passed"
               + (f" against champion v{champion}" if champion else " (no champion: floors and the base decide)"))
    if failed:
        summary += "; failed: " + "; ".join(_check_words(r) for r in failed)
    return {"decision": verdict, "summary": summary, "champion": champion,
            "candidate_sha256": decision.get("candidate_sha256"), "failed": decision.get("failed") or [],
            "checks": [{"check": r.get("check"), "metric": r.get("metric"), "passed": bool(r.get("passed")),
                        "observed": r.get("observed"), "op": r.get("op"), "threshold": r.get("threshold"),
                        **{k: r[k] for k in ("diff", "interval", "confidence", "note", "champion_value")
                           if k in r},
                        "explanation": _check_words(r)} for r in reasons],
            "observed": decision.get("observed"), "inputs": decision.get("inputs")}


def workspace_gate(ws: Workspace) -> dict[str, Any] | None:
    return ws.json(ws.section("gate").get("decision"))


def explain_gate(ws: Workspace, version: Any | None = None) -> dict[str, Any]:
    """Why the gate let a version through (its decision recorded with it), or the workspace's latest decision."""
    if version in (None, "", "latest"):
        decision = workspace_gate(ws)
        if decision is None:
            raise NotFound(f"no gate decision yet ({ws.section('gate').get('decision')} is missing): run the gate")
        return {"version": None, "source": ws.section("gate").get("decision"), **explain_decision(decision)}
    v = get_version(ws, version)
    decision = gate_artifacts(ws, v).get("decision")
    if decision is None:
        raise NotFound(f"version {v.version} has no gate decision recorded with it")
    return {"version": int(v.version), "source": f"mlflow run {version_info(v)['promote_run_id']} gate/",
            **explain_decision(decision)}


def compare_versions(ws: Workspace, a: Any, b: Any) -> dict[str, Any]:
    """Two versions side by side: the metrics recorded with each, their difference, each one's evaluation against
    its own reference, and the paired intervals when one was evaluated against the other on the same examples."""
    va, vb = get_version(ws, a), get_version(ws, b)
    if int(va.version) == int(vb.version):
        raise PlatformError(f"compare_versions needs two different versions (got {va.version} twice)")
    sides = {}
    aliases = aliases_of(ws)
    for label, v in (("a", va), ("b", vb)):
        art = gate_artifacts(ws, v)
        sides[label] = {"version": int(v.version), "aliases": version_info(v, aliases)["aliases"],
                        "metrics": run_metrics(ws, v), "evaluation": evaluation_report(art.get("evaluate"))}
    ma, mb = sides["a"]["metrics"], sides["b"]["metrics"]
    diff = {k: round(mb[k] - ma[k], 6) for k in sorted(set(ma) & set(mb))}
    paired = None
    for newer, older in (("b", "a"), ("a", "b")):
        ev = sides[newer]["evaluation"]
        ref = (ev or {}).get("reference_model") or {}
        if ref.get("kind") == "champion" and str(ref.get("version")) == str(sides[older]["version"]):
            paired = {"candidate": sides[newer]["version"], "reference": sides[older]["version"],
                      "intervals": {f"{t}.{m}": e for t, ms in ev["tasks"].items() for m, e in ms.items()
                                    if "ci_low" in e}}
            break
    return {"model_name": ws.registry().model_name, "a": sides["a"], "b": sides["b"], "metric_diff_b_minus_a": diff,
            "paired": paired,
            "note": ("paired bootstrap intervals of candidate - reference, both answered the same examples in one "
                     "evaluate run" if paired else
                     "no evaluate run compared these two versions on the same examples: point estimates only")}


# ------------------------------------------------------------------------------------------------------ drift


def _drift_window(name: str, r: dict[str, Any]) -> dict[str, Any]:
    summary = r.get("summary") or {}
    result = r.get("result") or {}
    return {"name": name, "status": r.get("status"), "drifted": bool(r.get("drifted")),
            "triggered": list(summary.get("triggered") or result.get("triggered") or []),
            "p_values": summary.get("p_values"), "n_current": summary.get("n_current"),
            "n_reference": summary.get("n_reference"), "alpha": result.get("alpha"), "reason": r.get("reason")}


def monitor_runs(ws: Workspace) -> list[Path]:
    reports = ws.path(ws.section("monitor").get("reports_dir") or "reports/monitor")
    if not reports.is_dir():
        return []
    return sorted((p for p in reports.iterdir() if p.is_dir()), key=lambda p: (p.stat().st_mtime, p.name))


def drift_report(ws: Workspace, run: str) -> dict[str, Any]:
    runs = {p.name: p for p in monitor_runs(ws)}
    if run not in runs:
        raise NotFound(f"unknown monitor run '{run}': runs are {', '.join(runs) or 'none yet'}")
    out: dict[str, Any] = {"run": run, "windows": [], "online_eval": None, "html": []}
    for path in sorted(runs[run].glob("*.json")):
        r = ws.json(path)
        if isinstance(r, dict) and "drifted" in r:
            out["windows"].append({**_drift_window(path.stem, r), "report": r})
        elif isinstance(r, dict) and path.stem == "online_eval":
            out["online_eval"] = r
    out["html"] = sorted(p.name for p in runs[run].glob("*.html"))
    return out


def drift_history(ws: Workspace) -> dict[str, Any]:
    """Every monitor run (oldest first) with its drift windows, plus the drift stage's own report."""
    runs = []
    for p in monitor_runs(ws):
        windows = [_drift_window(f.stem, r) for f in sorted(p.glob("*.json"))
                   if isinstance(r := ws.json(f), dict) and "drifted" in r]
        online = ws.json(p / "online_eval.json")
        runs.append({"run": p.name, "windows": windows, "drifted": any(w["drifted"] for w in windows),
                     "online_eval_alerts": (online or {}).get("alerts") if isinstance(online, dict) else None})
    stage = ws.json(ws.section("drift").get("metrics"))
    return {"runs": runs, "drift_stage": _drift_window("drift_stage", stage) if isinstance(stage, dict) else None,
            "retrains": (ws.json(ws.section("retrain").get("history")) or [])[-10:]}


# ------------------------------------------------------------------------------------------- cost, maturity


def cost(ws: Workspace) -> dict[str, Any]:
    """`llmops cost --json` for the workspace: every stage's resources block and the totals."""
    from pipelines.cost.summary import WORKSPACE, summarise
    from pipelines.serving.request_log import usage_summary
    from pipelines.stages.registry import STAGES, stage_module

    log = ws.section("serve").get("request_log")
    price = (ws.section("cost") or {}).get("price_per_cpu_hour")
    serving = usage_summary(ws.path(log), float(price)) if log and price is not None else None
    return summarise(ws.root, [WORKSPACE], {name: stage_module(name).SECTION for name in STAGES}, serving)


def maturity(ws: Workspace) -> dict[str, Any]:
    """`llmops maturity --json`."""
    from pipelines.maturity.scorecard import scorecard

    return scorecard(ws.root, ws.params)


# ------------------------------------------------------------------------------------------------- prompts


def _templates_dir() -> Path:
    from pipelines.models.registry import PROMPTS_DIR

    return PROMPTS_DIR


def prompt_templates(ws: Workspace) -> list[dict[str, Any]]:
    """The serving prompt templates: name, sha256, variables, text, and whether the champion was registered with
    the templates running now (the registry's prompt_templates_sha256 tag)."""
    import jinja2
    from jinja2 import meta

    from pipelines.models.registry import prompt_templates_sha256

    combined = prompt_templates_sha256(_templates_dir())
    champion = next((i for i in versions(ws)["versions"] if ws.registry().alias in i["aliases"]), None)
    out = []
    env = jinja2.Environment()
    for path in sorted(_templates_dir().glob("*.j2")):
        text = path.read_text(encoding="utf-8")
        out.append({"name": path.stem, "file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                    "variables": sorted(meta.find_undeclared_variables(env.parse(text))), "text": text,
                    "templates_sha256": combined,
                    "champion_templates_sha256": champion["prompt_templates_sha256"] if champion else None})
    return out


def prompt_template(ws: Workspace, name: str) -> dict[str, Any]:
    found = {t["name"]: t for t in prompt_templates(ws)}
    key = name[:-3] if name.endswith(".j2") else name
    if key not in found:
        raise NotFound(f"unknown prompt template '{name}': templates are {', '.join(found) or 'none'}")
    return found[key]


def render_prompt(ws: Workspace, name: str, arguments: dict[str, str]) -> str:
    """A template rendered as serving renders it (pipelines/serving/rag.py). A variable that the template loops
    over (contexts) takes a JSON list, or plain text whose blank-line-separated paragraphs become the items."""
    from pipelines.serving.rag import template_env

    t = prompt_template(ws, name)
    values: dict[str, Any] = {}
    for var in t["variables"]:
        if var not in arguments:
            raise PlatformError(f"prompt '{t['name']}' needs the argument '{var}'")
        raw = arguments[var]
        if var == "contexts" or f"for c in {var}" in t["text"] or f"in {var} " in t["text"]:
            try:
                items = json.loads(raw)
            except ValueError:
                items = [p.strip() for p in str(raw).split("\n\n") if p.strip()]
            values[var] = [i if isinstance(i, dict) else {"text": str(i)} for i in items]
        else:
            values[var] = raw
    return template_env().get_template(t["file"]).render(**values)


# ------------------------------------------------------------------------------------------------- lineage


def _lock_text_at(ws: Workspace, commit: str | None) -> tuple[str | None, str]:
    if commit:
        proc = subprocess.run(["git", "show", f"{commit}:dvc.lock"], cwd=ws.root, capture_output=True, text=True)
        if proc.returncode == 0:
            return proc.stdout, f"dvc.lock at git {commit}"
    lock = ws.root / "dvc.lock"
    return (lock.read_text(encoding="utf-8") if lock.is_file() else None), "workspace dvc.lock"


def openlineage_path(ws: Workspace) -> Path:
    import os

    cfg = ws.section("airflow")
    if cfg.get("lineage_file"):
        return ws.path(cfg["lineage_file"])
    home = os.environ.get("AIRFLOW_HOME") or cfg.get("home") or ".airflow"
    return ws.path(home) / "openlineage" / "events.jsonl"


def openlineage_jobs(ws: Workspace, names: set[str] | None = None) -> list[dict[str, Any]]:
    """The latest event of each OpenLineage job in the file transport's log (namespace, job, state, run, inputs
    and outputs)."""
    path = openlineage_path(ws)
    latest: dict[str, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            job = (ev.get("job") or {}) if isinstance(ev, dict) else {}
            name = job.get("name")
            if not name or (names is not None and name not in names):
                continue
            latest[name] = {"namespace": job.get("namespace"), "job": name, "state": ev.get("eventType"),
                            "time": ev.get("eventTime"), "run_id": (ev.get("run") or {}).get("runId"),
                            "inputs": [{"namespace": d.get("namespace"), "name": d.get("name")}
                                       for d in ev.get("inputs") or []],
                            "outputs": [{"namespace": d.get("namespace"), "name": d.get("name")}
                                        for d in ev.get("outputs") or []]}
    return [latest[k] for k in sorted(latest)]


def lineage(ws: Workspace, version: Any) -> dict[str, Any]:
    """A version's lineage: the DVC content hashes of each stage's inputs and outputs (dvc.lock at the version's
    git commit when it recorded one, else the workspace's, said which), the OpenLineage jobs of those stages, and
    the raw sources with their licences."""
    from pipelines.models.model_card import LINEAGE_STAGES, OPENLINEAGE_NAMESPACE, _entries

    v = get_version(ws, version)
    info = version_info(v)
    commit = info["lineage_tags"].get("git_commit")
    text, source = _lock_text_at(ws, commit)
    stages_lock = ((yaml.safe_load(text) or {}).get("stages") or {}) if text else {}
    stages = {s: {"inputs": [{"path": p, "md5": h} for p, h in _entries(stages_lock[s].get("deps"))],
                  "outputs": [{"path": p, "md5": h} for p, h in _entries(stages_lock[s].get("outs"))]}
              for s in LINEAGE_STAGES if s in stages_lock}
    ingest = (stages_lock.get("ingest") or {}).get("params", {}).get("params.yaml", {})
    ingest = ingest.get("ingest", ingest) if isinstance(ingest, dict) else {}
    sources = [{"name": s.get("name"), "kind": s.get("kind"), "licence": s.get("licence"), "path": s.get("path"),
                "pii": s.get("pii")} for s in ingest.get("sources") or [] if isinstance(s, dict)]
    landed = ingest.get("landed_dir")
    approvals = ws.json(Path(landed) / "approvals.json") if landed else None
    for name, a in sorted((approvals or {}).items()):
        sources.append({"name": name, "kind": "landed", "licence": a.get("licence"), "path": f"{landed}/{name}",
                        "pii": "per manifest", "approved_by": a.get("approved_by")})
    promotion = ws.json(ws.section("promote").get("record")) or {}
    describes = commit is not None and source.startswith("dvc.lock at git") or (
        promotion.get("version") == info["version"] and promotion.get("adapter_sha256") == info["adapter_sha256"])
    jobs = openlineage_jobs(ws, {f"llmops_lifecycle.{s}" for s in LINEAGE_STAGES})
    return {"version": info["version"], "adapter_sha256": info["adapter_sha256"], "lock_source": source,
            "lock_describes_version": bool(describes),
            "note": None if describes else (
                "the workspace dvc.lock describes the latest promotion "
                f"(v{promotion.get('version')}), not this version; its model card keeps the lineage it was "
                "promoted with"),
            "lineage_tags": info["lineage_tags"], "stages": stages, "raw_sources": sources,
            "openlineage": {"namespace": OPENLINEAGE_NAMESPACE, "events_file": str(openlineage_path(ws)),
                            "jobs": jobs}}


# ------------------------------------------------------------------------------------------------- RAG index

_RETRIEVERS: dict[str, Any] = {}


def index_dir(ws: Workspace) -> Path:
    rag = ws.section("serve").get("rag") or {}
    return ws.path(rag.get("index_dir") or ws.section("embed").get("output_dir") or "data/embeddings")


def search_corpus(ws: Workspace, query: str, k: int, sources: list[str] | None = None) -> dict[str, Any]:
    """`llmops retrieve --json`: the top-k chunks of the versioned RAG index (the one serving uses)."""
    if not query or not query.strip():
        raise PlatformError("search_corpus needs a non-empty query")
    if not 1 <= k <= 50:
        raise PlatformError(f"k must be between 1 and 50 (got {k})")
    directory = index_dir(ws)
    if not (directory / "index.faiss").exists():
        raise NotFound(f"no RAG index at {directory} (run the embed stage)")
    from pipelines.embeddings.retrieval import Retriever

    key = str(directory.resolve())
    if key not in _RETRIEVERS:
        _RETRIEVERS[key] = Retriever(directory)
    hits = _RETRIEVERS[key].search(query, k, sources=sources or None)
    manifest = ws.json(directory / "manifest.json") or {}
    return {"index_dir": str(directory), "model": manifest.get("model_package") or manifest.get("model"),
            "query": query, "hits": [{**h.to_dict(), "score": round(float(h.score), 4)} for h in hits]}


# ---------------------------------------------------------------------------------------------------- rollout


def rollout_store(ws: Workspace):
    path = (ws.section("rollout").get("state_path") or ws.section("serve").get("rollout_state"))
    if not path:
        return None
    from pipelines.rollout.state import RolloutStore

    return RolloutStore(path if str(path).startswith(("s3://", "s3a://")) else ws.path(path))


def rollout_status(ws: Workspace) -> dict[str, Any]:
    store = rollout_store(ws)
    state = store.load() if store is not None else None
    if state is None:
        return {"rollout": None, "message": "no rollout recorded" + (
            f" ({store.uri} does not exist)" if store is not None else " (params.yaml has no rollout.state_path)")}
    return {"rollout": state.to_dict(), "running": state.running, "challenger_share": state.challenger_share(),
            "shadowing": state.shadowing(), "step": state.step_index + 1, "steps": len(state.steps),
            "message": f"{state.strategy} rollout {state.rollout_id} of v{state.challenger_version} "
                       f"(champion v{state.champion_version}): {state.status}, step {state.step_index + 1}/"
                       f"{len(state.steps)}"}


# ----------------------------------------------------------------------------------------------------- status


def status(ws: Workspace) -> dict[str, Any]:
    """One page: what serves, what the gate decided, what the evaluation says, drift, rollout, retrains."""
    reg = versions(ws)
    gate = workspace_gate(ws)
    ev = ws.json(ws.section("evaluate").get("metrics")) or {}
    history = drift_history(ws)
    last = history["runs"][-1] if history["runs"] else None
    return {
        "model_name": reg["model_name"],
        "champion": reg["aliases"].get(reg["serving_alias"]),
        "challenger": reg["aliases"].get("challenger"),
        "aliases": reg["aliases"],
        "versions": [i["version"] for i in reg["versions"]],
        "gate": {"decision": gate.get("decision"), "champion": gate.get("champion"),
                 "candidate_sha256": gate.get("candidate_sha256"), "failed": gate.get("failed") or []}
        if isinstance(gate, dict) else None,
        "promotion": ws.json(ws.section("promote").get("record")),
        "deployment": ws.json("reports/deployment.json"),
        "evaluation": {"candidate_sha256": ev.get("candidate_sha256"), "reference_model": ev.get("reference_model"),
                       "candidate": {k: (ev.get("candidate") or {}).get(k) for k in ("perplexity", "rouge_l")}}
        if ev else None,
        "drift": {"latest_run": last["run"], "drifted": last["drifted"],
                  "windows": {w["name"]: {"drifted": w["drifted"], "status": w["status"], "triggered": w["triggered"]}
                              for w in last["windows"]}} if last else None,
        "monitor_runs": len(history["runs"]),
        "rollout": rollout_status(ws),
        "retrains": history["retrains"][-3:],
        "approved_sources": sorted((ws.json(Path(ws.section("landing").get("landed_dir") or "data/landed")
                                            / "approvals.json") or {})),
    }
