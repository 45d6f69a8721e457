"""Score the platform against the seed's maturity model from evidence only.

Every criterion is a function of the repository and the deployment state it can read: files that exist and parse,
the tests and DAGs that cover a behaviour, params.yaml switches, the latest metrics files, the infra validation
(pipelines/infra/validate.py) and the MLflow registry's aliases (read from its SQLite store without importing
MLflow). A criterion is `pass` (1 point), `partial` (0.5: the code is there but no run has produced its figure yet,
or one of its parts is missing) or `fail` (0). Nothing is taken from a config flag that merely claims a level.

A `pass` always rests on evidence of behaviour: a figure a run measured (a stage's metrics, a benchmark result, a
rollout decision record, the registry) or a recorded test run (`make test` writes `reports/tests.xml`: the named
tests passed there). Code, a file or a config key being present makes a criterion `partial` at most, and each
criterion's `figure` is what it read, with where it read it ("no recorded run" when there is none).

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
TEST_REPORT = "reports/tests.xml"  # `make test` writes it (pytest --junitxml): the recorded test run
NO_RUN = "no recorded run"
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

    def __init__(self, root: Path, params: dict | None = None, test_report: str | Path | None = None):
        self.root = root
        self.params = params if params is not None else yaml.safe_load((root / "params.yaml").read_text())
        self._infra = None
        self.test_report = Path(test_report) if test_report else root / TEST_REPORT
        self._tests: dict | None = None

    def test_run(self) -> dict:
        """The recorded test run (JUnit XML of `make test`): {"cases": {"module::name": outcome}, "when", "path"};
        empty cases when there is none. Outcome: passed | failed | skipped."""
        if self._tests is None:
            import xml.etree.ElementTree as ET

            cases: dict[str, str] = {}
            when = None
            try:
                tree = ET.parse(self.test_report)
                for suite in tree.iter("testsuite"):
                    when = when or suite.get("timestamp")
                for case in tree.iter("testcase"):
                    tags = {child.tag for child in case}
                    outcome = "failed" if tags & {"failure", "error"} else "skipped" if "skipped" in tags else "passed"
                    cases[f"{case.get('classname', '')}::{case.get('name', '')}"] = outcome
            except (OSError, ET.ParseError):
                pass
            try:
                rel = str(self.test_report.relative_to(self.root))
            except ValueError:
                rel = str(self.test_report)
            self._tests = {"cases": cases, "when": (when or "")[:16], "path": rel}
        return self._tests

    def tests_passed(self, pattern: str) -> tuple[int, int]:
        """(passed, run) among the recorded test run's cases whose module::name matches `pattern`."""
        rx = re.compile(pattern)
        hits = [o for k, o in self.test_run()["cases"].items() if rx.search(k) and o != "skipped"]
        return sum(o == "passed" for o in hits), len(hits)

    def registry_version_tags(self, version: int) -> dict[str, str]:
        """The tags of a registered model version, read from MLflow's SQLite store ({} when not readable)."""
        uri, model = self.section("registry.tracking_uri"), self.section("registry.model_name")
        if not isinstance(uri, str) or not uri.startswith("sqlite:///"):
            return {}
        path = Path(uri[len("sqlite:///"):])
        path = path if path.is_absolute() else self.root / path
        if not path.exists():
            return {}
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
                rows = db.execute("SELECT key, value FROM model_version_tags WHERE name = ? AND version = ?",
                                  (model, str(version)))
                return dict(rows)
        except sqlite3.Error:
            return {}

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


def _status(parts: list[bool], figure_present: bool) -> str:
    """pass: every part AND a measured figure or recorded run behind it; code or config alone is partial at most."""
    if all(parts) and figure_present:
        return "pass"
    return "partial" if any(parts) or figure_present else "fail"


def _recorded_tests(ev: Evidence, label: str, pattern: str) -> tuple[bool, str]:
    """(every matching test ran and passed, "label: 3/3 passed") from the recorded test run."""
    passed, run = ev.tests_passed(pattern)
    return run > 0 and passed == run, f"{label}: {passed}/{run} passed" if run else f"{label}: not in the recorded run"


def _test_run_note(ev: Evidence) -> str:
    t = ev.test_run()
    return f"{t['path']}, {t['when']}" if t["cases"] else f"{NO_RUN}: no {t['path']} (`make test` writes it)"


# --------------------------------------------------------------------------------------------------------- Level 1

def ci_cd(ev: Evidence) -> Criterion:
    ci = ev.text(".ci/run")
    make_test = re.search(r"^test:", ev.text("Makefile"), re.M) is not None
    tests = sorted(p.name for p in (ev.root / "tests").glob("test_*.py"))
    gate = "gate" in ev.stages() and ev.section("gate.floors") is not None
    deps_check = ev.tests_mentioning(r"dvc[-_]deps|code_deps")
    parts = [bool(ci) and "make test" in ci, make_test and bool(tests), gate, bool(deps_check)]
    run = ev.test_run()["cases"]
    failed = sum(o == "failed" for o in run.values())
    passed = sum(o == "passed" for o in run.values())
    decision = ev.metrics(ev.section("gate.decision")) or {}
    ran = bool(run) and failed == 0 and bool(decision.get("decision"))
    figure = (f"tests {passed} passed, {failed} failed ({_test_run_note(ev)}); "
              f"gate: {decision.get('decision') or NO_RUN}")
    return Criterion("Level 1", "CI/CD integration", _status(parts, ran), [
        f".ci/run runs `make test`: {'yes' if parts[0] else 'no'}",
        f"test files: {len(tests)}",
        f"automatic gate stage with floors in dvc.yaml/params.yaml: {'yes' if gate else 'no'}",
        f"stage-graph drift check (dvc-deps) in tests: {', '.join(deps_check) or 'none'}",
        f"recorded test run: {passed} passed, {failed} failed ({_test_run_note(ev)})",
        f"latest gate decision ({ev.section('gate.decision')}): {decision.get('decision') or NO_RUN}",
    ], figure)


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
    result = (drift or {}).get("result") or {}
    measured = bool(drift) and drift.get("status") == "ok" and bool(result.get("tests"))
    if measured:
        ps = [t["p_value"] for t in result["tests"].values() if t.get("p_value") is not None]
        figure = (f"drift {'DRIFTED' if drift.get('drifted') else 'none'}: {result.get('n_current')} texts vs "
                  f"{result.get('n_reference')}, {len(result['tests'])} tests, min p {min(ps):.3g} "
                  f"({ev.section('drift.metrics')})")
    else:
        figure = f"drift: {(drift or {}).get('status') or NO_RUN} ({ev.section('drift.metrics')})"
    return Criterion("Level 1", "basic monitoring", _status(parts, measured), [
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
    # The behaviour: the champion's registered version carries the hash of the templates it was promoted with.
    from pipelines.models.registry import PROMPT_TAG, PROMPTS_DIR, prompt_templates_sha256

    champion = (ev.registry_aliases() or {}).get("champion")
    recorded = ev.registry_version_tags(champion).get(PROMPT_TAG) if champion else None
    current = prompt_templates_sha256(ev.root / PROMPTS_DIR.relative_to(PROMPTS_DIR.parents[2]))
    if recorded:
        figure = (f"champion v{champion} {PROMPT_TAG} {recorded[:12]} "
                  f"({'= the templates served now' if recorded == current else 'differs from the templates now'})")
    else:
        figure = f"champion: {f'v{champion}, no {PROMPT_TAG} tag' if champion else NO_RUN} (registry)"
    return Criterion("Level 1", "prompt versioning",
                     _status([exists, tagged, bool(tested)], bool(recorded) and recorded == current), [
        f"prompt template serve.rag.template: {template} ({'found' if exists else 'missing'}, sha256 {digest})",
        f"its sha256 recorded with the served/registered version: {'yes' if tagged else 'no'}",
        f"tests: {', '.join(tested) or 'none'}",
        f"the champion's registered prompt hash: {figure}",
    ], figure)


# --------------------------------------------------------------------------------------------------------- Level 2

def end_to_end(ev: Evidence) -> Criterion:
    stages = ev.stages()
    missing = [s for s in LIFECYCLE if s not in stages]
    dag = ev.exists("dags/llmops_lifecycle.py")
    trigger = ev.exists("pipelines/orchestration/retrain_policy.py") and ev.exists("dags/llmops_monitor.py")
    e2e = ev.tests_mentioning(r"dvc.{0,10}repro|e2e_reproduced")
    produced = [s for s in LIFECYCLE if s in stages and ev.metrics(ev.section(f"{s}.metrics") or
                                                                  ev.section(f"{s}.decision"))]
    champion = (ev.registry_aliases() or {}).get("champion")
    e2e_ok, e2e_note = _recorded_tests(ev, "end-to-end loop tests", r"test_e2e")
    whole_run = len(produced) == len(LIFECYCLE) and champion is not None
    return Criterion("Level 2", "end-to-end pipeline", _status([not missing, dag, trigger, bool(e2e)],
                                                               whole_run and e2e_ok), [
        f"lifecycle stages in dvc.yaml: {len(LIFECYCLE) - len(missing)}/{len(LIFECYCLE)}"
        + (f" (missing {', '.join(missing)})" if missing else ""),
        f"Airflow DAG built from dvc.yaml: {'yes' if dag else 'no'}",
        f"drift-triggered retraining (monitor DAG + retrain policy): {'yes' if trigger else 'no'}",
        f"end-to-end tests: {', '.join(e2e) or 'none'}",
        f"stages with a metrics file from the latest run: {len(produced)}/{len(LIFECYCLE)}",
        f"champion in the registry: {f'v{champion}' if champion else 'none'}",
        f"{e2e_note} ({_test_run_note(ev)})",
    ], f"{len(produced)}/{len(LIFECYCLE)} stages measured, champion {f'v{champion}' if champion else 'none'}; "
       f"{e2e_note}")


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
    # The behaviour: the Ray Serve tests that scale replicas passed in the recorded test run.
    ran, note = _recorded_tests(ev, "Ray Serve scaling tests", r"test_serve_ray::.*(scal|replica)")
    return Criterion("Level 2", "auto-scaling", _status(parts, ran), [
        f"serve.ray replicas {r.get('min_replicas')}..{r.get('max_replicas')}: {'scales' if scales else 'fixed'}",
        f"Ray Serve app (pipelines/serving/ray_app.py): {'yes' if app else 'no'}",
        f"validated autoscaling RayService + RayCluster: {len(ok_files)}/2",
        f"tests: {', '.join(tested) or 'none'}",
        f"{note} ({_test_run_note(ev)})",
    ], f"{note} ({_test_run_note(ev)})")


# ------------------------------------------------------------------------------------------------------ challenges

def _challenge(n: int, name: str, checks: list[tuple[str, bool]], figure: str | None,
               measured: bool | None = None, read: str | None = None) -> Criterion:
    """`figure`: what a run measured (None: nothing recorded); `measured` overrides "a figure was read" when the
    figure itself says the behaviour failed; `read`: where the figure comes from, printed when there is none."""
    ok = figure is not None if measured is None else measured
    return Criterion(f"Challenge {n}", name, _status([ok for _, ok in checks], ok),
                     [f"{label}: {'yes' if ok else 'no'}" for label, ok in checks],
                     figure if figure is not None else f"{NO_RUN}" + (f" ({read})" if read else ""))


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
    lock = _lock_stages(ev)
    dedup = ev.metrics(ev.section("dedup.metrics")) or {}
    retrieval = ev.metrics(ev.section("evaluate_retrieval.metrics"))
    serve_bench = _serve_bench(ev)
    spark_ok, spark_note = _recorded_tests(ev, "Spark standalone cluster tests", r"test_spark_cluster::")
    ray_ok, ray_note = _recorded_tests(ev, "multi-node Ray tests", r"test_ray_cluster::")
    openai_ok, openai_note = _recorded_tests(ev, "OpenAI-client tests", r"openai")
    auth_ok, auth_note = _recorded_tests(ev, "API-key tests", r"test_serve::.*(401|auth|key)")
    redacted = _ingest_redacted(ev)
    out = [
        _challenge(1, "data quality and management", [
            ("GX suites gate ingested, curated and split data", all(s in ev.stages() for s in
                                                                    ("validate_raw", "validate", "validate_splits"))),
            ("every record accounted for (ingest/dedup balanced)", bool(dedup.get("balanced"))),
        ], _fmt(validate, "success", "failed_expectations", "row_count") and
           f"{_fmt(validate, 'success', 'failed_expectations', 'row_count')}; dedup {dedup.get('in')} -> "
           f"{dedup.get('out')} rows ({ev.section('validate.metrics')}, {ev.section('dedup.metrics')})",
           measured=bool(validate) and validate.get("success") is True, read=ev.section("validate.metrics")),
        _challenge(2, "versioning and reproducibility", [
            ("dvc.yaml stage graph with code deps", bool(ev.stages())),
            ("dvc.lock of a run", bool(lock)),
            ("model registry aliases", bool(aliases)),
        ], (f"dvc.lock records {len(lock)} stages; registry {aliases}" if lock and aliases else None),
           read=f"dvc.lock: {len(lock)} stages, registry: {aliases or 'none'}"),
        _challenge(3, "evaluation", [
            ("evaluate stage", "evaluate" in ev.stages()),
            ("retrieval evaluation", "evaluate_retrieval" in ev.stages()),
            ("gate against floors and the champion", ev.section("gate.versus_champion") is not None),
        ], _fmt(evaluate, "perplexity", "rouge_l") and
           f"{_fmt(evaluate, 'perplexity', 'rouge_l')}; {_fmt(retrieval, 'recall_at_5', 'mrr') or 'no retrieval run'}"
           f" ({ev.section('evaluate.metrics')})", read=ev.section("evaluate.metrics")),
        _challenge(4, "latency", [
            ("batched serving", ev.section("serve.batching.mode") in ("continuous", "naive")),
            ("latency and TTFT histograms exported", "llmops_time_to_first_token_seconds" in
             ev.text("pipelines/serving/metrics.py")),
            ("response cache", (ev.section("serve.cache.max_entries") or 0) > 0),
        ], serve_bench, read="bench/results/serve.json"),
        _challenge(5, "bias and toxicity", [
            ("audit stage (red-team prompts)", "audit" in ev.stages()),
            ("toxicity in online evaluation", ev.section("online_eval.thresholds.max_toxic_rate") is not None),
            ("gate on attack success rate", ev.section("gate.floors.max_attack_success_rate") is not None),
        ], _fmt(audit, "attack_success_rate") and
           f"{_fmt(audit, 'attack_success_rate', 'attack_success_rate_guarded', 'refusal_rate')} over "
           f"{(audit or {}).get('n')} prompts ({ev.section('audit.metrics')})", read=ev.section("audit.metrics")),
        _challenge(6, "scalability", [
            ("infra manifests validate", infra is not None and not infra.errors),
            ("Spark standalone cluster test", ev.exists("tests/test_spark_cluster.py")),
            ("multi-node Ray test", ev.exists("tests/test_ray_cluster.py")),
        ], f"{spark_note}, {ray_note} ({_test_run_note(ev)})"
           + (f"; {len(infra.files)} infra files, {len(infra.errors)} errors" if infra is not None else ""),
           measured=spark_ok and ray_ok),
        _challenge(7, "secure API and compatibility", [
            ("API keys / auth", ev.exists("pipelines/serving/auth.py")),
            ("request limits", ev.section("serve.limits") is not None),
            ("OpenAI-client compatibility tests", bool(ev.tests_mentioning(r"\bopenai\b"))),
        ], f"{openai_note}, {auth_note} ({_test_run_note(ev)})", measured=openai_ok and auth_ok),
        _ab_feedback(ev),
        _challenge(9, "privacy, PII and input validation", [
            ("PII redaction at ingest", bool(ev.section("ingest.pii_entities"))),
            ("PII rate gated after curation", ev.section("validate.max_pii_rate") is not None),
            ("PII leak rate in online evaluation", ev.section("online_eval.thresholds.max_pii_leak_rate") is not None),
        ], (f"ingest redacted {redacted} PII spans; curated corpus under max_pii_rate "
            f"{ev.section('validate.max_pii_rate')}: {_fmt(validate, 'success', 'failed_expectations')} "
            f"({ev.section('ingest.metrics')}, {ev.section('validate.metrics')})") if redacted is not None and validate
           else None, measured=redacted is not None and bool(validate) and validate.get("success") is True,
           read=f"{ev.section('ingest.metrics')}, {ev.section('validate.metrics')}"),
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


def _serve_bench(ev: Evidence) -> str | None:
    """The serving benchmark's measured latency (bench/bench_serve.py -> bench/results/serve.json)."""
    bench = ev.metrics("bench/results/serve.json") or {}
    medians = bench.get("medians") or {}
    level = next((k for k in ("batched@8", "batched@1") if isinstance(medians.get(k), dict)), None)
    if level is None:
        return None
    m = medians[level]
    return (f"{level}: p50 {m['p50_s']:.2f} s, p95 {m['p95_s']:.2f} s, TTFT p50 {m['ttft_p50_s']:.2f} s, "
            f"{m['req_per_s']:.2f} req/s, {m.get('errors', 0)} errors (bench/results/serve.json, {bench.get('date')})")


def _lock_stages(ev: Evidence) -> list[str]:
    try:
        return sorted(((yaml.safe_load(ev.text("dvc.lock")) or {}).get("stages") or {}))
    except yaml.YAMLError:
        return []


def _ingest_redacted(ev: Evidence) -> int | None:
    """PII spans ingest redacted, summed over its sources (metrics), or None without an ingest run."""
    ingest = ev.metrics(ev.section("ingest.metrics"))
    if not ingest or not isinstance(ingest.get("sources"), dict):
        return None
    return sum(sum((src.get("pii") or {}).get("redacted", {}).values()) for src in ingest["sources"].values()
               if isinstance(src, dict))


# ------------------------------------------------------------------------------------------------------- scorecard

LEVEL_1: list[Callable[[Evidence], Criterion]] = [ci_cd, basic_monitoring, prompt_versioning]
LEVEL_2: list[Callable[[Evidence], Criterion]] = [end_to_end, realtime_evaluation, auto_scaling]


def scorecard(root: str | Path, params: dict | None = None, test_report: str | Path | None = None) -> dict:
    """`test_report`: the recorded test run (JUnit XML); default `reports/tests.xml` under `root`."""
    ev = Evidence(Path(root).resolve(), params, test_report)
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


