"""`make loop` (`llmops demo loop`): the platform's headline, watched as it happens, after `make demo`.

It starts Airflow (`airflow_services.up`) and the serving API on the current champion, drops a drifted batch from
the shipped sample into the landing inbox exactly as a producer would (`source.yaml`, the data file, then the
`_READY` flag), and follows what the three DAGs do through Airflow's REST API, one line per step:

  1. the watcher fired (an `llmops_ingest` run)             5. the lifecycle retrains, stage by stage
  2. the approval of the new source (automatic, or a person  6. the gate's decision and its failed checks
     in Airflow's Required actions page: `--interactive`)   7. promotion (the alias moved) and deployment
  3. the batch landed                                       8. the running server answers with the new version
  4. the monitor found drift, naming the tests that fired

It ends with the UI pages to open, then stops what it started (or leaves it up with `keep`). Every step is also
written as one JSON event to `logs/demo_loop/events.jsonl`; `render` turns an event into its line, so the
reporting is tested on a recorded stream (tests/test_demo_loop.py) while tests/test_e2e_loop.py runs the loop.

No Airflow import: this talks to Airflow's REST API and starts its command line, like a user would.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from pipelines.config import load_params, parse_section, project_root
from pipelines.data.landing import LandingConfig
from pipelines.models.registry import RegistryConfig, find_champion
from pipelines.orchestration import airflow_services
from pipelines.orchestration.retrain_policy import RetrainConfig, decide

# The shipped drifted batch: 80 T0 review prompts, a topic shift against the sample the demo trained on
# (role-play, code, Wikipedia paragraphs); see data/sample/landing/README.md.
SAMPLE_BATCH = "data/sample/landing/reviews_batch.jsonl"
SAMPLE_SOURCE = "t0_reviews"
SAMPLE_MANIFEST = {"kind": "instruction", "format": "jsonl", "licence": "Apache-2.0", "pii": "redact",
                   "fields": {"prompt": "prompt", "response": "completion"}}
DAGS = ("llmops_ingest", "llmops_monitor", "llmops_lifecycle")
EVENTS = "logs/demo_loop/events.jsonl"
TERMINAL = {"success", "failed", "skipped", "upstream_failed", "removed"}
WAITING = {"awaiting_input", "deferred"}
# The numbered steps of the headline, in the order they happen.
STEPS = {"watcher": 1, "approval": 2, "landed": 3, "monitor": 4, "lifecycle": 5, "gate": 6, "promoted": 7,
         "served": 8}


class LoopError(RuntimeError):
    """The loop cannot start or cannot go on; the message says why and what to do."""


# --- rendering: one event -> its lines (pure, tested on a recorded stream) ------------------------------------

def _p(value: Any) -> str:
    return "-" if value is None else f"{float(value):.2g}"


def render(event: dict[str, Any]) -> list[str]:
    """The lines a user sees for one event (`t`: seconds since the loop started)."""
    kind = event["kind"]
    stamp = f"[{event.get('t', 0.0):6.1f}s]"
    step = f"{STEPS[kind]}. " if kind in STEPS else ""
    head = f"{stamp} {step}"
    if kind == "start":
        return [f"{stamp} Airflow {event['airflow']} ({'started' if event['airflow_started'] else 'already up'}), "
                f"server {event['serve']} ({'started' if event['serve_started'] else 'already up'}) "
                f"serving champion version {event['champion']}"]
    if kind == "dropped":
        return [f"{stamp} dropped {event['rows']} rows of '{event['source']}' into {event['inbox']} "
                f"(source.yaml, {event['file']}, then {event['flag']})"]
    if kind == "watcher":
        return [f"{head}watcher fired: llmops_ingest run {event['run_id']} ({event['after_s']:.0f} s after the flag)"]
    if kind == "approval_waiting":
        who = "answering automatically" if event["mode"] == "auto" else "waiting for you in Airflow"
        lines = [f"{head}approval required: {event['subject']} ({who})"]
        if event["mode"] != "auto":
            lines += [f"           open {event['url']}",
                      f"           (log in as admin, password in {event['password_file']})"]
        return lines
    if kind == "approval":
        if event.get("needed") is False:
            return [f"{head}approval: not needed ({', '.join(event.get('sources', [])) or 'every source'} "
                    f"approved before)"]
        return [f"{head}approval of {event['task']}: {event['answer']} by {event['by']}"]
    if kind == "landed":
        if not event.get("sources"):
            return [f"{head}nothing landed ({event.get('reason') or 'see the llmops_ingest run'})"]
        return [f"{head}landed: {event['rows']} rows of {', '.join(event['sources'])} into {event['landed_dir']}"]
    if kind == "monitor":
        if not event["drifted"]:
            return [f"{head}monitor run {event['run_id']}: no drift ({event.get('status')}); nothing to retrain"]
        tests = ", ".join(f"{name} (p={_p(event['p_values'].get(name))})" for name in event["triggered"])
        return [f"{head}monitor run {event['run_id']}: DRIFT in the landed data; tests under the threshold "
                f"{_p(event.get('threshold'))}: {tests}", f"           report: {event['report']}"]
    if kind == "lifecycle":
        return [f"{head}lifecycle run {event['run_id']} triggered by landed data & drift: retraining"]
    if kind == "policy":
        if event["allowed"]:
            return [f"{stamp}    retrain policy: allowed"]
        return [f"{stamp}    retrain policy: REFUSED ({event.get('reason') or 'cooldown or daily cap'}): "
                f"every stage skipped"]
    if kind == "stage":
        state, name = event["state"], event["task"]
        if state == "running":
            return [f"{stamp}    > {name}"]
        took = f" {event['seconds']:.1f} s" if event.get("seconds") is not None else ""
        mark = {"success": "ok", "skipped": "skipped", "failed": "FAILED", "upstream_failed": "not run"}.get(state,
                                                                                                               state)
        return [f"{stamp}    {mark:<7} {name}{took}"]
    if kind == "gate":
        lines = [f"{head}gate: {str(event['decision']).upper()} ({event['passed']}/{event['checks']} checks passed, "
                 f"versus champion {event.get('champion')})"]
        lines += [f"           FAIL {c}" for c in event.get("failed", [])]
        return lines
    if kind == "promoted":
        if not event.get("promoted"):
            return [f"{head}not promoted: the champion stays version {event.get('previous')}"]
        return [f"{head}promoted: champion {event.get('previous')} -> {event['version']}; deploy "
                f"{event.get('deploy') or '-'}"]
    if kind == "served":
        same = event["version"] == event.get("champion_before")
        return [f"{head}server {event['url']} answers with version {event['version']}"
                f"{' (unchanged)' if same else ''}: fingerprint {event['fingerprint']}, "
                f"reply {json.dumps(event['reply'][:60])}"]
    if kind == "pages":
        return ["", "Open these pages:"] + [f"  {title:<28} {where}" for title, where in event["pages"]]
    if kind == "done":
        verdict = "new champion serving" if event.get("new_version") else "no new champion"
        return ["", f"loop finished in {event['t']:.0f} s ({event['t'] / 60:.1f} min): {verdict}; "
                    f"events in {event['events']}"]
    if kind == "stopped":
        return [f"{stamp} stopped: {', '.join(event['what']) or 'nothing (all of it was already up)'}"]
    if kind == "kept":
        return [f"{stamp} left running: {', '.join(event['what'])} (`make airflow-down` and Ctrl-C / kill "
                f"{event.get('serve_pid')} to stop)"]
    if kind == "error":
        return [f"{stamp} ERROR: {event['message']}"]
    return [f"{stamp} {kind}: {json.dumps({k: v for k, v in event.items() if k not in ('kind', 't')})}"]


class TaskTracker:
    """Turns successive task-instance snapshots of one DAG run into stage events: a stage that starts, a stage
    that ends (with its duration); each transition is reported once, in the order the stages ran."""

    def __init__(self, ignore: Iterable[str] = ()):
        self.seen: dict[str, str] = {}
        self.ignore = set(ignore)

    def update(self, task_instances: list[dict[str, Any]]) -> list[dict[str, Any]]:
        events = []
        ordered = sorted(task_instances, key=lambda ti: (ti.get("start_date") or "~", ti.get("end_date") or "~",
                                                         ti["task_id"]))
        for ti in ordered:
            name, state = ti["task_id"], ti.get("state")
            if name in self.ignore or state is None:
                continue
            # queued/scheduled: waiting for the lifecycle's one task slot (max_active_tasks=1), not started yet
            shown = "running" if state in ("running", "restarting") else state
            if shown not in TERMINAL and shown != "running":
                continue
            previous = self.seen.get(name)
            if previous == shown or previous in TERMINAL:
                continue
            if shown in TERMINAL and shown != "skipped" and previous is None and ti.get("start_date"):
                events.append({"kind": "stage", "task": name, "state": "running"})  # started and ended between polls
            self.seen[name] = shown
            events.append({"kind": "stage", "task": name, "state": shown,
                           "seconds": ti.get("duration") if shown in TERMINAL else None})
        return events


# --- Airflow's REST API ------------------------------------------------------------------------------------------

class AirflowAPI:
    """Airflow's REST API (v2) with the simple auth manager's admin token, and bounded polling."""

    def __init__(self, base: str, home: Path):
        import httpx

        self.base = base
        self.password_file = home / "simple_auth_manager_passwords.json.generated"
        password = json.loads(self.password_file.read_text())["admin"]
        token = httpx.post(f"{base}/auth/token", json={"username": "admin", "password": password}, timeout=120)
        token.raise_for_status()
        self.http = httpx.Client(base_url=f"{base}/api/v2", timeout=60,
                                 headers={"Authorization": f"Bearer {token.json()['access_token']}"})

    def get(self, path: str, **params: Any) -> Any:
        resp = self.http.get(path, params=params)
        resp.raise_for_status()
        return resp.json()

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        return self.get(f"/dags/{dag_id}/dagRuns", order_by="-run_after", limit=50)["dag_runs"]

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self.get(f"/dags/{dag_id}/dagRuns/{run_id}")["state"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        return self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", limit=200)["task_instances"]

    def states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        return {t["task_id"]: t["state"] for t in self.task_instances(dag_id, run_id)}

    def xcom(self, dag_id: str, run_id: str, task_id: str) -> Any:
        resp = self.http.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value")
        if resp.status_code == 404:
            return None
        resp.raise_for_status()
        value = resp.json().get("value")
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                return value
        return value

    def hitl(self, dag_id: str, run_id: str, task_id: str) -> dict[str, Any] | None:
        details = self.get(f"/dags/{dag_id}/dagRuns/{run_id}/hitlDetails")["hitl_details"]
        return next((d for d in details if d["task_instance"]["task_id"] == task_id), None)

    def answer(self, dag_id: str, run_id: str, task_id: str, option: str = "Approve") -> None:
        resp = self.http.patch(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/-1/hitlDetails",
                               json={"chosen_options": [option], "params_input": {}})
        resp.raise_for_status()

    def dag_ready(self, dag_id: str) -> bool:
        return self.http.get(f"/dags/{dag_id}").status_code == 200


def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 2.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise LoopError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


# --- the loop ----------------------------------------------------------------------------------------------------

@dataclass
class LoopOptions:
    interactive: bool = False  # approvals wait for a person in Airflow's Required actions page
    keep: bool = False  # leave Airflow and the server running at the end
    batch: str = SAMPLE_BATCH  # JSONL of T0-shaped rows (prompt, completion)
    source: str = SAMPLE_SOURCE  # the landing folder (= source name)
    step_timeout_s: float = 1800.0  # the longest any one step (or one stage of the retrain) may take
    events: str = EVENTS


@dataclass
class _Started:
    airflow: bool = False
    server: subprocess.Popen | None = None
    server_log: Any = None
    what: list[str] = field(default_factory=list)


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def _health(url: str) -> dict[str, Any] | None:
    import httpx

    try:
        resp = httpx.get(f"{url}/health", timeout=5)
        return resp.json() if resp.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


def task_url(airflow: str, dag_id: str, run_id: str, task_id: str) -> str:
    return (f"{airflow}/dags/{dag_id}/runs/{urllib.parse.quote(run_id, safe='')}/tasks/{task_id}"
            f"/required_actions")


class DemoLoop:
    def __init__(self, opts: LoopOptions, echo: Callable[[str], None] = print):
        self.opts = opts
        self.echo = echo
        self.root = project_root()
        self.params = load_params()
        self.t0 = time.monotonic()
        self.events: list[dict[str, Any]] = []
        self.events_path = self.root / opts.events
        self.registry = parse_section(self.params, "registry", RegistryConfig)
        self.landing = parse_section(self.params, "landing", LandingConfig)
        self.airflow_cfg = parse_section(self.params, "airflow", airflow_services.AirflowConfig)
        serve = self.params["serve"]
        self.serve_url = f"http://{serve['host']}:{serve['port']}"
        self.airflow_url = f"http://{self.airflow_cfg.api_host}:{self.airflow_cfg.api_port}"
        self.started = _Started()
        self.runs: dict[str, str] = {}

    def emit(self, kind: str, **data: Any) -> dict[str, Any]:
        event = {"kind": kind, "t": round(time.monotonic() - self.t0, 1), **data}
        self.events.append(event)
        with open(self.events_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(event, default=str) + "\n")
        for line in render(event):
            self.echo(line)
        return event

    # -- before anything starts
    def preflight(self) -> int:
        champion = find_champion(self.registry).info
        if champion is None:
            raise LoopError("no champion in the registry yet: run `make demo` first (it trains and promotes one)")
        batch = self.root / self.opts.batch
        if not batch.is_file():
            raise LoopError(f"the drifted batch {batch} is missing")
        retrain = parse_section(self.params, "retrain", RetrainConfig)
        verdict = decide(retrain, run_id="demo-loop-preflight", at=datetime.now(timezone.utc), record=False)
        if not verdict["allowed"]:
            raise LoopError(f"a drift-triggered retrain would be refused now ({verdict['reason']}; "
                            f"retrain.cooldown_minutes / max_per_day in params.yaml): try again later")
        inbox = self.root / self.landing.inbox
        if (inbox / self.landing.flag_file).exists():
            raise LoopError(f"{inbox / self.landing.flag_file} is already there: a drop is pending")
        return int(champion["version"])

    def start(self) -> tuple[int, "AirflowAPI"]:
        champion = self.preflight()
        serve = self.params["serve"]
        if _health(self.serve_url) is None:
            if not _port_free(serve["host"], int(serve["port"])):
                raise LoopError(f"port {serve['port']} is taken by something that is not the serving API "
                                f"(serve.port in params.yaml)")
            self.started.server_log = open(self.events_path.parent / "serve.log", "ab")
            self.started.server = subprocess.Popen(
                [str(Path(sys.executable).parent / "llmops"), "serve"], cwd=self.root, stdout=self.started.server_log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                env={**os.environ, "LLMOPS_ROOT": str(self.root)})
            self.started.what.append(f"server (pid {self.started.server.pid})")
        running = airflow_services.status(self.airflow_cfg)
        if not all(running.values()):
            if any(running.values()):
                raise LoopError(f"Airflow of {airflow_services.airflow_home(self.airflow_cfg)} is half up "
                                f"({running}): `make airflow-down` first")
            if not _port_free(self.airflow_cfg.api_host, self.airflow_cfg.api_port):
                raise LoopError(f"port {self.airflow_cfg.api_port} is taken (airflow.api_port in params.yaml)")
            self.echo("starting Airflow (scheduler, dag-processor, triggerer, API server) and the server ...")
            airflow_services.up(self.airflow_cfg, self.root, echo=lambda line: self.echo(f"  {line}"))
            self.started.airflow = True
            self.started.what.append("Airflow")
        api = AirflowAPI(self.airflow_url, airflow_services.airflow_home(self.airflow_cfg))
        wait_for("the three DAGs to be parsed", lambda: all(api.dag_ready(d) for d in DAGS), timeout=300)
        for dag_id in DAGS:  # runs from before the drop (a first cron run of the monitor) are not ours
            self.runs[f"seen:{dag_id}"] = json.dumps([r["dag_run_id"] for r in api.runs(dag_id)])
        health = wait_for("the server to answer /health", lambda: _health(self.serve_url), timeout=300, every=1)
        self.emit("start", airflow=self.airflow_url, serve=self.serve_url, champion=health.get("version", champion),
                  airflow_started=self.started.airflow, serve_started=self.started.server is not None)
        return champion, api

    def _new_run(self, api: AirflowAPI, dag_id: str, timeout: float) -> str:
        """The next run of `dag_id` that our drop caused: Asset-triggered (the monitor's hourly cron runs, and
        runs from before the drop, are not ours)."""
        seen = set(json.loads(self.runs[f"seen:{dag_id}"]))

        def fresh():
            new = [r["dag_run_id"] for r in api.runs(dag_id)
                   if r["dag_run_id"] not in seen and r.get("run_type") in ("asset_triggered", None)]
            return new[-1] if new else None
        run_id = wait_for(f"a new {dag_id} run", fresh, timeout)
        self.runs[f"seen:{dag_id}"] = json.dumps(sorted(seen | {run_id}))
        return run_id

    def drop(self) -> float:
        rows = [line for line in (self.root / self.opts.batch).read_text(encoding="utf-8").splitlines() if line.strip()]
        inbox = self.root / self.landing.inbox
        folder = inbox / self.opts.source
        folder.mkdir(parents=True, exist_ok=True)
        name = f"batch-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}.jsonl"
        (folder / "source.yaml").write_text(yaml.safe_dump(SAMPLE_MANIFEST), encoding="utf-8")
        (folder / name).write_text("\n".join(rows) + "\n", encoding="utf-8")
        (inbox / self.landing.flag_file).write_text("")  # last: the watcher fires on it
        self.emit("dropped", source=self.opts.source, rows=len(rows), file=name, flag=self.landing.flag_file,
                  inbox=str(Path(self.landing.inbox) / self.opts.source))
        return time.monotonic()

    def approval(self, api: AirflowAPI, dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
        """An HITL task of ours is waiting: answer it (auto) or wait for a person (interactive)."""
        detail = wait_for(f"the approval {task_id}", lambda: api.states(dag_id, run_id).get(task_id) in WAITING
                          and api.hitl(dag_id, run_id, task_id), timeout=300)
        self.emit("approval_waiting", dag=dag_id, run_id=run_id, task=task_id, subject=detail.get("subject"),
                  mode="interactive" if self.opts.interactive else "auto",
                  url=task_url(self.airflow_url, dag_id, run_id, task_id),
                  password_file=str(airflow_services.airflow_home(self.airflow_cfg)
                                    / "simple_auth_manager_passwords.json.generated"))
        if not self.opts.interactive:
            # Airflow 3.3.2: an answer within about a second of AWAITING_INPUT is lost while the task's first
            # worker exits (tests/test_e2e_loop.py); a person never answers that fast, and neither does this.
            time.sleep(3)
            api.answer(dag_id, run_id, task_id)
        wait_for(f"{task_id} to be answered", lambda: api.states(dag_id, run_id).get(task_id) in TERMINAL,
                 timeout=self.opts.step_timeout_s if not self.opts.interactive else 7 * 86400, every=2)
        detail = api.hitl(dag_id, run_id, task_id) or {}
        user = detail.get("responded_by_user") or detail.get("responded_by") or {}
        answer = ", ".join(detail.get("chosen_options") or []) or api.states(dag_id, run_id).get(task_id)
        by = (user.get("name") if isinstance(user, dict) else str(user)) or "?"
        return self.emit("approval", task=task_id, answer=answer,
                         by=f"{by} (automatic)" if not self.opts.interactive else by)

    def ingest(self, api: AirflowAPI, dropped_at: float) -> dict[str, Any]:
        run_id = self._new_run(api, "llmops_ingest", timeout=180)
        self.emit("watcher", run_id=run_id, after_s=time.monotonic() - dropped_at)

        def routed():
            states = api.states("llmops_ingest", run_id)
            if states.get("approve_new_sources") in WAITING | TERMINAL - {"skipped"}:
                return "approve"
            if states.get("no_approval_needed") == "success" or states.get("approve_new_sources") == "skipped":
                return "known"
            return None
        if wait_for("the ingest run to route the drop", routed, timeout=self.opts.step_timeout_s) == "approve":
            self.approval(api, "llmops_ingest", run_id, "approve_new_sources")
        else:
            self.emit("approval", needed=False, sources=[self.opts.source])
        state = wait_for("the ingest run to finish", lambda: (s := api.run_state("llmops_ingest", run_id))
                         in ("success", "failed") and s, timeout=self.opts.step_timeout_s)
        report = api.xcom("llmops_ingest", run_id, "land_batches") or {}
        accepted = report.get("accepted") or []
        return self.emit("landed", run_id=run_id, state=state, rows=report.get("rows", 0),
                         sources=[a["source"] for a in accepted], landed_dir=self.landing.landed_dir,
                         reason=None if accepted else f"ingest run {state}; refused: {report.get('refused')}")

    def monitor(self, api: AirflowAPI) -> dict[str, Any]:
        run_id = self._new_run(api, "llmops_monitor", timeout=300)
        wait_for("the monitor run to finish", lambda: api.run_state("llmops_monitor", run_id) in ("success", "failed"),
                 timeout=self.opts.step_timeout_s)
        drift = api.xcom("llmops_monitor", run_id, "data_drift") or {}
        summary = drift.get("summary") or {}
        report = drift.get("report")
        threshold = None
        if report:
            metrics = Path(report).with_suffix(".json")
            if metrics.exists():
                threshold = json.loads(metrics.read_text()).get("result", {}).get("threshold")
        return self.emit("monitor", run_id=run_id, drifted=bool(drift.get("drifted")), status=drift.get("status"),
                         triggered=list(drift.get("triggered") or []), p_values=summary.get("p_values", {}),
                         threshold=threshold, report=report)

    def lifecycle(self, api: AirflowAPI) -> dict[str, Any]:
        run_id = self._new_run(api, "llmops_lifecycle", timeout=300)
        self.emit("lifecycle", run_id=run_id)
        tracker = TaskTracker()
        deadline = time.monotonic() + self.opts.step_timeout_s
        approved: set[str] = set()
        while True:
            tis = api.task_instances("llmops_lifecycle", run_id)
            events = tracker.update(tis)
            if events:  # progress: the timeout bounds one stage, not the whole retrain
                deadline = time.monotonic() + self.opts.step_timeout_s
            for event in events:
                if event["task"] == "retrain_policy" and event["state"] in TERMINAL:
                    allowed = api.xcom("llmops_lifecycle", run_id, "retrain_policy")
                    self.emit("policy", allowed=bool(allowed) and event["state"] == "success")
                    continue
                if event["task"] == "retrain_policy":
                    continue
                self.emit(**event)
                if event["task"] == "gate" and event["state"] in ("success", "failed"):  # fail_on_reject: failed
                    self.gate()
            for ti in tis:
                if ti.get("state") == "awaiting_input" and ti["task_id"] not in approved:
                    approved.add(ti["task_id"])
                    self.approval(api, "llmops_lifecycle", run_id, ti["task_id"])
                    deadline = time.monotonic() + self.opts.step_timeout_s
            state = api.run_state("llmops_lifecycle", run_id)
            if state in ("success", "failed"):
                for event in tracker.update(api.task_instances("llmops_lifecycle", run_id)):
                    if event["task"] != "retrain_policy":
                        self.emit(**event)
                return {"run_id": run_id, "state": state, "deploy": api.xcom("llmops_lifecycle", run_id, "deploy")}
            if time.monotonic() > deadline:
                raise LoopError(f"the lifecycle run {run_id} made no progress for {self.opts.step_timeout_s:.0f} s")
            time.sleep(3)

    def gate(self) -> None:
        path = self.root / self.params["gate"]["decision"]
        if not path.exists():
            return
        decision = json.loads(path.read_text())
        checks = [c for c in decision.get("reasons", decision.get("checks", [])) if isinstance(c, dict)]
        failed = [str(f) for f in decision.get("failed") or []] or [
            f"{c.get('check')} {c.get('metric') or ''}: observed {c.get('observed')} vs {c.get('threshold')}"
            for c in checks if not c.get("passed")]
        passed = sum(1 for c in checks if c.get("passed"))
        self.emit("gate", decision=decision.get("decision"), checks=len(checks), passed=passed,
                  failed=failed, champion=decision.get("champion"))

    def served(self, before: int) -> dict[str, Any]:
        import httpx

        health = wait_for("the server's /health", lambda: _health(self.serve_url), timeout=60, every=1)
        reply = httpx.post(f"{self.serve_url}/v1/chat/completions", timeout=300, json={
            "messages": [{"role": "user", "content": "Write one sentence about a restaurant you liked."}],
            "max_tokens": 24}).json()
        text = ((reply.get("choices") or [{}])[0].get("message") or {}).get("content") or json.dumps(reply)[:80]
        version = health.get("version")
        return self.emit("served", url=self.serve_url, version=int(version) if version is not None else None,
                         champion_before=before,
                         fingerprint=reply.get("system_fingerprint"), reply=text)

    def pages(self, monitor: dict[str, Any] | None, lifecycle: dict[str, Any] | None) -> None:
        a = self.airflow_url

        def run_page(dag_id: str, run_id: str, tab: str = "") -> str:
            return f"{a}/dags/{dag_id}/runs/{urllib.parse.quote(run_id, safe='')}{tab}"
        pages = [("Airflow UI (admin)", f"{a}/"), ("Required actions", f"{a}/required_actions")]
        if ingest := self.runs.get("ingest"):
            pages.append(("ingest run", run_page("llmops_ingest", ingest)))
        if monitor:
            pages.append(("monitor run", run_page("llmops_monitor", monitor["run_id"])))
        if lifecycle:
            pages.append(("lifecycle run (graph)", run_page("llmops_lifecycle", lifecycle["run_id"], "?tab=graph")))
        pages.append(("LLMOps status page", f"{a}/llmops/"))
        if monitor and monitor.get("report"):
            pages.append(("drift report", str(monitor["report"])))
        for title, rel in (("evaluation report", "reports/evaluate.html"),
                           ("gate decision", "reports/gate_decision.json"), ("model card", "reports/model_card.md")):
            if (self.root / rel).exists():
                pages.append((title, str(self.root / rel)))
        pages.append(("OpenAI-compatible API", f"{self.serve_url}/v1/models"))
        pages.append(("MLflow registry", f"{Path(sys.executable).parent / 'mlflow'} ui --backend-store-uri "
                                         f"{self.registry.tracking_uri} --host 127.0.0.1"))
        self.emit("pages", pages=pages)

    def stop(self) -> None:
        what = []
        if self.opts.keep:
            kept = list(self.started.what) or ["nothing was started by the loop"]
            self.emit("kept", what=kept, serve_pid=self.started.server.pid if self.started.server else None)
            return
        if self.started.airflow:
            airflow_services.down(self.airflow_cfg)
            what.append("Airflow")
        if self.started.server is not None:
            try:
                os.killpg(self.started.server.pid, signal.SIGTERM)
                self.started.server.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.started.server.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            what.append("server")
        if self.started.server_log:
            self.started.server_log.close()
        self.emit("stopped", what=what)

    def run(self) -> dict[str, Any]:
        monitor = lifecycle = None
        before = None
        outcome: dict[str, Any] = {"ok": False}
        self.events_path.parent.mkdir(parents=True, exist_ok=True)
        self.events_path.write_text("")
        try:
            before, api = self.start()
            dropped_at = self.drop()
            landed = self.ingest(api, dropped_at)
            self.runs["ingest"] = landed["run_id"]
            if landed["sources"]:
                monitor = self.monitor(api)
                if monitor["drifted"]:
                    lifecycle = self.lifecycle(api)
                    champion = find_champion(self.registry).info
                    after = int(champion["version"]) if champion else None
                    deploy = lifecycle.get("deploy") or {}
                    self.emit("promoted", promoted=after != before, version=after, previous=before,
                              deploy=deploy.get("status") if isinstance(deploy, dict) else None)
            served = self.served(before)
            outcome = {"ok": lifecycle is None or lifecycle["state"] == "success", "champion_before": before,
                       "served_version": served["version"], "new_version": served["version"] != before}
        except LoopError as exc:
            self.emit("error", message=str(exc))
            outcome = {"ok": False, "error": str(exc)}
        finally:
            if before is not None or self.started.what:
                self.pages(monitor, lifecycle)
                self.stop()
        if self.events:
            self.emit("done", events=str(self.events_path), new_version=outcome.get("new_version", False))
        outcome["seconds"] = round(time.monotonic() - self.t0, 1)
        return outcome


def run_loop(opts: LoopOptions | None = None, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole demo loop; `ok` is False when a step failed or timed out (the message says which)."""
    return DemoLoop(opts or LoopOptions(), echo).run()


def replay(events_path: str | Path) -> list[str]:
    """The lines of a recorded loop (`logs/demo_loop/events.jsonl`), as they were printed."""
    lines: list[str] = []
    for raw in Path(events_path).read_text(encoding="utf-8").splitlines():
        if raw.strip():
            lines += render(json.loads(raw))
    return lines


