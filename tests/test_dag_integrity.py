"""DAG integrity: the DAG folder imports cleanly, fast, without heavy engines; the lifecycle mirrors dvc.yaml and
the ingest, monitor and lifecycle DAGs are chained by Assets (the watcher, landed data, drift)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from pipelines.orchestration.dvc_graph import load_stage_graph

HEAVY = ("torch", "pyspark", "ray", "great_expectations", "transformers", "dvc", "mlflow", "sentence_transformers")

PROBE = r"""
import json, sys, time
started = time.perf_counter()
from airflow.dag_processing.dagbag import DagBag
imported = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1])
parsed = time.perf_counter()
dag = bag.dags.get("llmops_lifecycle")
def assets_of(cond):
    if hasattr(cond, "objects"):  # AssetAll / AssetAny: flatten
        return [a for o in cond.objects for a in assets_of(o)]
    return [cond]
def schedule(d):
    cond = getattr(d.timetable, "asset_condition", None)
    cond = None if type(cond).__name__ == "_NullAsset" else cond  # a plain cron (llmops_flywheel)
    return {"timetable": type(d.timetable).__name__, "condition": type(cond).__name__ if cond is not None else None,
            "assets": sorted(a.name for a in assets_of(cond)) if cond is not None else []}
def watchers(d):
    cond = getattr(d.timetable, "asset_condition", None)
    cond = None if type(cond).__name__ == "_NullAsset" else cond
    return sorted(w.name for a in (assets_of(cond) if cond is not None else []) for w in (getattr(a, "watchers", None) or []))
print(json.dumps({
    "import_errors": {k: str(v) for k, v in bag.import_errors.items()},
    "dags": sorted(bag.dags),
    "airflow_import_s": imported - started,
    "dag_parse_s": parsed - imported,
    "heavy": [m for m in sys.argv[2].split(",") if m in sys.modules],
    "tasks": {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks} if dag else {},
    "commands": {t.task_id: t.python_callable() for t in dag.tasks if t.task_type == "_BashDecoratedOperator"} if dag else {},
    "schedules": {d: schedule(bag.dags[d]) for d in bag.dags},
    "watchers": {d: watchers(bag.dags[d]) for d in bag.dags},
    "outlets_of": {d: sorted({a.name for t in bag.dags[d].tasks for a in t.outlets}) for d in bag.dags},
    "asset_uris": sorted({(a.name, a.uri) for d in bag.dags.values() for t in d.tasks for a in [*t.inlets, *t.outlets]
                          if hasattr(a, "uri")} | {(a.name, a.uri) for d in bag.dags.values()
                          for a in (assets_of(d.timetable.asset_condition) if getattr(d.timetable, "asset_condition", None) is not None else [])
                          if hasattr(a, "uri")}),
    "outlets": {t.task_id: [a.uri for a in t.outlets] for t in dag.tasks} if dag else {},
}))
"""


def test_dag_folder_parses_without_errors_or_heavy_imports(repo_root, tmp_path):
    env = dict(os.environ, AIRFLOW_HOME=str(tmp_path), AIRFLOW__CORE__LOAD_EXAMPLES="False",
               AIRFLOW__CORE__PLUGINS_FOLDER=str(repo_root / "plugins"), LLMOPS_ROOT=str(repo_root))
    env["PYTHONPATH"] = os.pathsep.join([str(repo_root / "plugins"), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", PROBE, str(repo_root / "dags"), ",".join(HEAVY)],
                         env=env, capture_output=True, text=True, timeout=300, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"\nairflow import {result['airflow_import_s']:.2f}s, DAG folder parse {result['dag_parse_s']:.2f}s")
    assert result["import_errors"] == {}
    assert result["dags"] == ["llmops_flywheel", "llmops_ingest", "llmops_lifecycle", "llmops_monitor",
                              "llmops_rollout"]
    assert result["heavy"] == [], f"DAG parse imported heavy modules: {result['heavy']}"
    assert result["dag_parse_s"] < 10
    graph = load_stage_graph(repo_root)
    expected = {s.name: sorted(s.upstream) or ["retrain_policy"] for s in graph}
    assert {k: v for k, v in result["tasks"].items() if k in expected} == expected
    assert result["tasks"]["deploy"] == ["promote"]
    assert result["tasks"]["hand_over_to_rollout"] == ["promote"]  # canary/shadow: llmops_rollout takes over
    assert result["tasks"]["retrain_policy"] == []
    assert set(result["commands"]) == set(expected)
    for name, cmd in result["commands"].items():
        assert cmd == f"dvc repro --single-item {name}"
    assert all(uri.startswith("file://") for uris in result["outlets"].values() for uri in uris)
    assert result["outlets"]["dedup"], "stage outputs must be declared as Assets"


def test_dags_are_chained_by_assets(repo_root, tmp_path):
    env = dict(os.environ, AIRFLOW_HOME=str(tmp_path), AIRFLOW__CORE__LOAD_EXAMPLES="False", LLMOPS_ROOT=str(repo_root))
    env["PYTHONPATH"] = os.pathsep.join([str(repo_root / "plugins"), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", PROBE, str(repo_root / "dags"), ",".join(HEAVY)],
                         env=env, capture_output=True, text=True, timeout=300, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    schedules, outlets = result["schedules"], result["outlets_of"]
    # The watcher on the landing inbox starts ingest; ingest's landed data starts the monitor (or its cron);
    # the lifecycle needs landed data AND drift.
    assert schedules["llmops_ingest"]["assets"] == ["llmops/landing_inbox"]
    assert result["watchers"]["llmops_ingest"] == ["llmops_landing_ready"]
    assert "llmops/landed_data" in outlets["llmops_ingest"]
    assert schedules["llmops_monitor"]["timetable"] == "AssetOrTimeSchedule"
    assert schedules["llmops_monitor"]["assets"] == ["llmops/landed_data"]
    assert "llmops/drift_detected" in outlets["llmops_monitor"]
    # One URI, one Asset: Airflow deactivates Assets that share a URI under two names (a task with an inactive
    # inlet fails at start), so the stage inputs and the named Assets must not collide.
    names_by_uri: dict[str, set[str]] = {}
    for name, uri in result["asset_uris"]:
        names_by_uri.setdefault(uri, set()).add(name)
    assert {uri: names for uri, names in names_by_uri.items() if len(names) > 1} == {}
    assert schedules["llmops_lifecycle"]["condition"] == "AssetAll"
    assert schedules["llmops_lifecycle"]["assets"] == ["llmops/drift_detected", "llmops/landed_data"]
    # A canary/shadow promotion hands over to the rollout DAG, which also looks on its own clock.
    assert "llmops/challenger_deployed" in outlets["llmops_lifecycle"]
    assert schedules["llmops_rollout"]["timetable"] == "AssetOrTimeSchedule"
    assert schedules["llmops_rollout"]["assets"] == ["llmops/challenger_deployed"]
    # The flywheel harvests on its cron and on feedback volume (a watcher on the feedback log) into the landing
    # inbox; the inbox's watcher (above) starts ingest.
    assert schedules["llmops_flywheel"]["timetable"] == "AssetOrTimeSchedule"
    assert schedules["llmops_flywheel"]["assets"] == ["llmops/feedback_volume"]
    assert result["watchers"]["llmops_flywheel"] == ["llmops_feedback_volume"]
