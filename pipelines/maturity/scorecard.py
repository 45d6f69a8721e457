"""Score the platform against the seed's maturity model from evidence only.

Every criterion is a function of the repository and the deployment state it can read: files that exist and parse,
the tests and DAGs that cover a behaviour, params.yaml switches, the latest metrics files, the infra validation
(pipelines/infra/validate.py) and the MLflow registry's aliases (read from its SQLite store without importing
MLflow). A criterion is `pass` (1 point), `partial` (0.5: the code is there but no run has produced its figure yet,
or one of its parts is missing) or `fail` (0). Nothing is taken from a config flag that merely claims a level.

Level 1 is reached when its three criteria pass; Level 2 when Level 1 is reached and its three criteria pass.

The 10 challenges: the seed's numbering as the issues quote it (4 latency, 5 bias and toxicity, 7 secure API and
compatibility, 8 A/B tests and feedback, 9 PII and input validation, 10 cost); the titles of 1, 2, 3 and 6 are not
quoted in the repository and are the usual ones of that list (data quality, versioning and reproducibility,
evaluation, scalability): edit CHALLENGES if the seed words them differently.
"""
from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

TEMPLATE = "maturity.html.j2"
POINTS = {"pass": 1.0, "partial": 0.5, "fail": 0.0}
LIFECYCLE = ("ingest", "dedup", "validate", "split", "embed", "finetune", "evaluate", "audit", "gate", "promote")


@dataclass
class Criterion:
    group: str  # "Level 1" | "Level 2" | "Challenge N"
    name: str
    status: str  # pass | partial | fail
    evidence: list[str]  # what was looked at and found (or not)
    figure: str | None = None  # the latest measured figure, when a run produced one

    @property
    def points(self) -> float:
        return POINTS[self.status]


class Evidence:
    """What the checks read, loaded once: params.yaml, dvc.yaml, metrics, the infra report, the registry."""

    def __init__(self, root: Path, params: dict | None = None):
        self.root = root
        self.params = params if params is not None else yaml.safe_load((root / "params.yaml").read_text())
        self._infra = None

    def exists(self, rel: str) -> bool:
        return (self.root / rel).exists()

    def text(self, rel: str) -> str:
        path = self.root / rel
        return path.read_text(errors="replace") if path.exists() else ""

    def metrics(self, rel: str | None) -> dict | None:
        if not rel:
            return None
        path = self.root / rel
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def section(self, dotted: str) -> Any:
        node: Any = self.params
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node

    def stages(self) -> dict:
        try:
            return (yaml.safe_load(self.text("dvc.yaml")) or {}).get("stages", {})
        except yaml.YAMLError:
            return {}

    def tests_mentioning(self, pattern: str) -> list[str]:
        rx = re.compile(pattern)
        return sorted(p.name for p in (self.root / "tests").glob("test_*.py") if rx.search(p.read_text(errors="replace")))

    def infra(self):
        if self._infra is None:
            from pipelines.infra.validate import validate_all

            self._infra = validate_all(self.root) if self.exists("infra/k8s") else None
        return self._infra

    def registry_aliases(self) -> dict[str, int] | None:
        """alias -> version of the registered model, read from MLflow's SQLite store; None when not readable."""
        uri, model = self.section("registry.tracking_uri"), self.section("registry.model_name")
        if not isinstance(uri, str) or not uri.startswith("sqlite:///"):
            return None
        path = Path(uri[len("sqlite:///"):])
        path = path if path.is_absolute() else self.root / path
        if not path.exists():
            return None
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
                rows = db.execute("SELECT alias, version FROM registered_model_aliases WHERE name = ?", (model,))
                return {alias: int(version) for alias, version in rows}
        except sqlite3.Error:
            return None


def _status(parts: list[bool], figure_present: bool = True) -> str:
    if all(parts) and figure_present:
        return "pass"
    return "partial" if any(parts) else "fail"


# --------------------------------------------------------------------------------------------------------- Level 1

def ci_cd(ev: Evidence) -> Criterion:
    ci = ev.text(".ci/run")
    make_test = re.search(r"^test:", ev.text("Makefile"), re.M) is not None
    tests = sorted(p.name for p in (ev.root / "tests").glob("test_*.py"))
    gate = "gate" in ev.stages() and ev.section("gate.floors") is not None
    deps_check = ev.tests_mentioning(r"dvc[-_]deps|code_deps")
    parts = [bool(ci) and "make test" in ci, make_test and bool(tests), gate, bool(deps_check)]
    return Criterion("Level 1", "CI/CD integration", _status(parts), [
        f".ci/run runs `make test`: {'yes' if parts[0] else 'no'}",
        f"test files: {len(tests)}",
        f"automatic gate stage with floors in dvc.yaml/params.yaml: {'yes' if gate else 'no'}",
        f"stage-graph drift check (dvc-deps) in tests: {', '.join(deps_check) or 'none'}",
    ], f"{len(tests)} test files")


def basic_monitoring(ev: Evidence) -> Criterion:
    metrics_route = any('"/metrics"' in ev.text(f"pipelines/serving/{f}") for f in ("app.py", "routes/health.py"))
    request_log = ev.section("serve.request_log")
    prom = ev.text("infra/compose/prometheus/prometheus.yml")
    port = ev.section("serve.port")
    scraped = f"serving:{port}" in prom
    dashboards = list((ev.root / "infra/compose/grafana/dashboards").glob("*.json"))
    monitor_dag = ev.exists("dags/llmops_monitor.py")
    parts = [metrics_route, bool(request_log), scraped, bool(dashboards), monitor_dag]
    drift = ev.metrics(ev.section("drift.metrics"))
    figure = None
    if drift:
        figure = f"drift: {drift.get('status', drift.get('drift_detected', '?'))}"
    return Criterion("Level 1", "basic monitoring", _status(parts), [
        f"/metrics endpoint in the serving app: {'yes' if metrics_route else 'no'}",
        f"request log (serve.request_log): {request_log or 'off'}",
        f"Prometheus scrapes serving:{port}: {'yes' if scraped else 'no'}",
        f"Grafana dashboards: {len(dashboards)}",
        f"monitor DAG (dags/llmops_monitor.py): {'yes' if monitor_dag else 'no'}",
    ], figure)


def prompt_versioning(ev: Evidence) -> Criterion:
    import hashlib

    template = ev.section("serve.rag.template")
    path = ev.root / "pipelines/serving/prompts" / str(template)
    exists = bool(template) and path.exists()
    tagged = bool(re.search(r"sha256", ev.text("pipelines/models/promotion.py") + ev.text("pipelines/serving/rag.py")))
    tested = ev.tests_mentioning(r"prompt.{0,20}(sha|hash|version)")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12] if exists else None
    return Criterion("Level 1", "prompt versioning", _status([exists, tagged, bool(tested)]), [
        f"prompt template serve.rag.template: {template} ({'found' if exists else 'missing'})",
        f"its sha256 recorded with the served/registered version: {'yes' if tagged else 'no'}",
        f"tests: {', '.join(tested) or 'none'}",
    ], f"{template} sha256 {digest}" if digest else None)


# --------------------------------------------------------------------------------------------------------- Level 2

def end_to_end(ev: Evidence) -> Criterion:
    stages = ev.stages()
    missing = [s for s in LIFECYCLE if s not in stages]
    dag = ev.exists("dags/llmops_lifecycle.py")
    trigger = ev.exists("pipelines/orchestration/retrain_policy.py") and ev.exists("dags/llmops_monitor.py")
    e2e = ev.tests_mentioning(r"dvc.{0,10}repro|e2e_reproduced")
    produced = [s for s in LIFECYCLE if s in stages and ev.metrics(ev.section(f"{s}.metrics"))]
    return Criterion("Level 2", "end-to-end pipeline", _status([not missing, dag, trigger, bool(e2e)],
                                                               bool(produced)), [
        f"lifecycle stages in dvc.yaml: {len(LIFECYCLE) - len(missing)}/{len(LIFECYCLE)}"
        + (f" (missing {', '.join(missing)})" if missing else ""),
        f"Airflow DAG built from dvc.yaml: {'yes' if dag else 'no'}",
        f"drift-triggered retraining (monitor DAG + retrain policy): {'yes' if trigger else 'no'}",
        f"end-to-end tests: {', '.join(e2e) or 'none'}",
        f"stages with a metrics file from the latest run: {len(produced)}/{len(LIFECYCLE)}",
    ], f"{len(produced)}/{len(LIFECYCLE)} stages measured")


def _rollouts(ev: Evidence) -> dict:
    """The rollout analysis' decision records (pipelines/maturity/rollout_evidence.py), read once."""
    if getattr(ev, "_rollout_summary", None) is None:
        from pipelines.maturity.rollout_evidence import summary

        ev._rollout_summary = summary(ev.root, ev.section("rollout.decisions_dir"))
    return ev._rollout_summary


def realtime_evaluation(ev: Evidence) -> Criterion:
    """Scored only from a recorded rollout decision and its analysis: live per-arm metrics with intervals, and a
    decision that moved traffic (advance, complete, rollback). Analyses that only held: partial."""
    r = _rollouts(ev)
    decided, live = r["latest_decided"], r["latest_live"]
    from pipelines.maturity.rollout_evidence import describe, figure

    status = "pass" if decided else "partial" if live else "fail"
    return Criterion("Level 2", "real-time evaluation", status, [
        f"rollout analyses recorded ({ev.section('rollout.decisions_dir')}): {r['records']} looks at "
        f"{r['rollouts']} rollout(s), {r['live']} on live traffic of both arms",
        f"decisions on live evidence (advance / complete / rollback): {r['decided']}"
        + (f"; latest: {describe(decided)}" if decided else ""),
        *([f"latest look (no decision yet): {describe(live)}"] if live and not decided else []),
    ], figure(decided or live) if (decided or live) else None)


def auto_scaling(ev: Evidence) -> Criterion:
    r = ev.section("serve.ray") or {}
    scales = isinstance(r, dict) and (r.get("max_replicas") or 0) > (r.get("min_replicas") or 0)
    app = ev.exists("pipelines/serving/ray_app.py")
    report = ev.infra()
    ok_files = []
    if report is not None:
        bad = {p.file for p in report.errors}
        for rel in ("infra/k8s/ray/rayservice-serving.yaml", "infra/k8s/ray/raycluster.yaml"):
            if ev.exists(rel) and rel not in bad and "enableInTreeAutoscaling: true" in ev.text(rel):
                ok_files.append(rel)
    tested = ev.tests_mentioning(r"replicas\(\)|autoscal")
    parts = [scales, app, len(ok_files) == 2, bool(tested)]
    return Criterion("Level 2", "auto-scaling", _status(parts), [
        f"serve.ray replicas {r.get('min_replicas')}..{r.get('max_replicas')}: {'scales' if scales else 'fixed'}",
        f"Ray Serve app (pipelines/serving/ray_app.py): {'yes' if app else 'no'}",
        f"validated autoscaling RayService + RayCluster: {len(ok_files)}/2",
        f"tests: {', '.join(tested) or 'none'}",
    ], f"{r.get('min_replicas')}..{r.get('max_replicas')} replicas" if scales else None)


# ------------------------------------------------------------------------------------------------------ challenges

def _challenge(n: int, name: str, checks: list[tuple[str, bool]], figure: str | None) -> Criterion:
    return Criterion(f"Challenge {n}", name, _status([ok for _, ok in checks], figure is not None),
                     [f"{label}: {'yes' if ok else 'no'}" for label, ok in checks], figure)


def _fmt(d: dict | None, *keys: str) -> str | None:
    if not d:
        return None
    found = [f"{k} {d[k]:.4g}" if isinstance(d[k], float) else f"{k} {d[k]}" for k in keys if k in d]
    return ", ".join(found) or None


def challenges(ev: Evidence) -> list[Criterion]:
    validate = ev.metrics(ev.section("validate.metrics"))
    evaluate = ev.metrics(ev.section("evaluate.metrics"))
    audit = ev.metrics(ev.section("audit.metrics"))
    aliases = ev.registry_aliases()
    infra = ev.infra()
    lock_tracked = ev.exists("dvc.lock")
    out = [
        _challenge(1, "data quality and management", [
            ("GX suites gate ingested, curated and split data", all(s in ev.stages() for s in
                                                                    ("validate_raw", "validate", "validate_splits"))),
            ("every record accounted for (ingest/dedup balanced)",
             bool((ev.metrics(ev.section("dedup.metrics")) or {}).get("balanced"))),
        ], _fmt(validate, "success", "failed_expectations", "row_count")),
        _challenge(2, "versioning and reproducibility", [
            ("dvc.yaml stage graph with code deps", bool(ev.stages())),
            ("dvc.lock of a run", lock_tracked),
            ("model registry aliases", bool(aliases)),
        ], (f"registry {aliases}" if aliases else None)),
        _challenge(3, "evaluation", [
            ("evaluate stage", "evaluate" in ev.stages()),
            ("retrieval evaluation", "evaluate_retrieval" in ev.stages()),
            ("gate against floors and the champion", ev.section("gate.versus_champion") is not None),
        ], _fmt(evaluate, "perplexity", "rouge_l") or _fmt(ev.metrics(ev.section("evaluate_retrieval.metrics")),
                                                         "recall_at_5", "mrr")),
        _challenge(4, "latency", [
            ("batched serving", ev.section("serve.batching.mode") in ("continuous", "naive")),
            ("latency and TTFT histograms exported", "llmops_time_to_first_token_seconds" in
             ev.text("pipelines/serving/metrics.py")),
            ("response cache", (ev.section("serve.cache.max_entries") or 0) > 0),
        ], _latest_bench(ev, "serv")),
        _challenge(5, "bias and toxicity", [
            ("audit stage (red-team prompts)", "audit" in ev.stages()),
            ("toxicity in online evaluation", ev.section("online_eval.thresholds.max_toxic_rate") is not None),
            ("gate on attack success rate", ev.section("gate.floors.max_attack_success_rate") is not None),
        ], _fmt(audit, "attack_success_rate")),
        _challenge(6, "scalability", [
            ("infra manifests validate", infra is not None and not infra.errors),
            ("Spark standalone cluster test", ev.exists("tests/test_spark_cluster.py")),
            ("multi-node Ray test", ev.exists("tests/test_ray_cluster.py")),
        ], (f"{len(infra.files)} infra files, {len(infra.errors)} errors" if infra is not None else None)),
        _challenge(7, "secure API and compatibility", [
            ("API keys / auth", ev.exists("pipelines/serving/auth.py")),
            ("request limits", ev.section("serve.limits") is not None),
            ("OpenAI-client compatibility tests", bool(ev.tests_mentioning(r"\bopenai\b"))),
        ], None if not ev.tests_mentioning(r"\bopenai\b") else "openai client tests present"),
        _ab_feedback(ev),
        _challenge(9, "privacy, PII and input validation", [
            ("PII redaction at ingest", bool(ev.section("ingest.pii_entities"))),
            ("PII rate gated after curation", ev.section("validate.max_pii_rate") is not None),
            ("PII leak rate in online evaluation", ev.section("online_eval.thresholds.max_pii_leak_rate") is not None),
        ], _fmt(validate, "success") and f"max_pii_rate {ev.section('validate.max_pii_rate')} gated"),
        _challenge(10, "cost", [
            ("price table", ev.section("cost.price_per_cpu_hour") is not None),
            ("every stage metered (run_stage -> resources)", "ResourceMeter" in ev.text("pipelines/stages/registry.py")),
            ("cost metrics exported by serving", "llmops_cost_per_1k_tokens_usd" in
             ev.text("pipelines/serving/metrics.py")),
        ], _run_cost(ev)),
    ]
    return out


def _ab_feedback(ev: Evidence) -> Criterion:
    """Challenge 8 from a recorded canary decision (advance, complete or rollback) taken on user feedback of both
    arms; a decision without ratings (or only holds): partial. No config key scores it."""
    from pipelines.maturity.rollout_evidence import describe, figure

    r = _rollouts(ev)
    fed, decided = r["latest_feedback_decision"], r["latest_decided"]
    status = "pass" if fed else "partial" if (decided or r["live"]) else "fail"
    return Criterion("Challenge 8", "A/B tests and feedback", status, [
        f"canary decisions taken on user feedback of both arms: {'yes' if fed else 'no'}"
        + (f" ({describe(fed, 'negative_feedback_rate')})" if fed else ""),
        f"rollout decisions on live traffic: {r['decided']} (looks recorded: {r['records']})",
    ], figure(fed, "negative_feedback_rate") if fed else None)


def _run_cost(ev: Evidence) -> str | None:
    """The latest run's cost: the `resources` blocks run_stage wrote into the stages' metrics files."""
    blocks = [r for st in ev.stages() if isinstance(r := (ev.metrics(ev.section(f"{st}.metrics")) or {}).get(
        "resources"), dict) and "cost_usd" in r]
    if not blocks:
        return None
    return (f"run {sum(b['cost_usd'] for b in blocks):.4g} USD, {sum(b['cpu_seconds'] for b in blocks):.0f} CPU s "
            f"over {len(blocks)} metered stages")


def _latest_bench(ev: Evidence, stem: str) -> str | None:
    results = sorted((ev.root / "bench/results").glob(f"*{stem}*.json"), key=lambda p: p.stat().st_mtime)
    return f"see {results[-1].relative_to(ev.root)}" if results else None


# ------------------------------------------------------------------------------------------------------- scorecard

LEVEL_1: list[Callable[[Evidence], Criterion]] = [ci_cd, basic_monitoring, prompt_versioning]
LEVEL_2: list[Callable[[Evidence], Criterion]] = [end_to_end, realtime_evaluation, auto_scaling]


def scorecard(root: str | Path, params: dict | None = None) -> dict:
    ev = Evidence(Path(root).resolve(), params)
    level1 = [f(ev) for f in LEVEL_1]
    level2 = [f(ev) for f in LEVEL_2]
    chall = challenges(ev)
    every = level1 + level2 + chall
    level = 0
    if all(c.status == "pass" for c in level1):
        level = 1
        if all(c.status == "pass" for c in level2):
            level = 2
    return {
        "level": level,
        "score": round(sum(c.points for c in every), 2),
        "max_score": float(len(every)),
        "level1_score": sum(c.points for c in level1),
        "level2_score": sum(c.points for c in level2),
        "challenges_score": sum(c.points for c in chall),
        "criteria": [asdict(c) | {"points": c.points} for c in every],
    }


def table(card: dict) -> str:
    """The terminal table."""
    rows = [("group", "criterion", "status", "latest figure")]
    rows += [(c["group"], c["name"], c["status"], c["figure"] or "-") for c in card["criteria"]]
    widths = [min(max(len(str(r[i])) for r in rows), w) for i, w in enumerate((12, 36, 8, 60))]
    lines = []
    for i, r in enumerate(rows):
        lines.append("  ".join(str(v)[:w].ljust(w) for v, w in zip(r, widths)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    lines.append(f"maturity level {card['level']}  score {card['score']:g}/{card['max_score']:g}  "
                 f"(Level 1 {card['level1_score']:g}/3, Level 2 {card['level2_score']:g}/3, "
                 f"challenges {card['challenges_score']:g}/10)")
    return "\n".join(lines)


def write_html(card: dict, path: str | Path) -> Path:
    from pipelines.io import write_text
    from pipelines.reports import render

    path = Path(path)
    write_text(path, render(TEMPLATE, card=card))
    return path


