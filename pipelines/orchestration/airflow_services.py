"""Airflow on one machine, fitted to it: `llmops airflow up` starts the scheduler, dag-processor, triggerer and API
server (what `airflow standalone` runs, without its surprises), `llmops airflow down` stops them all.

What `standalone` got wrong here, and what this does instead:
- 32 LocalExecutor workers on a 2-core box: `parallelism` defaults to the CPU count (tasks are `dvc repro`
  subprocesses that use every core they get; more slots only thrash).
- API server on 0.0.0.0: bound to 127.0.0.1 unless `api_host` says otherwise.
- A scheduler that ignored SIGTERM for over 20 s: every service runs in its own process group, `down` sends
  SIGTERM to the group, waits `stop_timeout_s`, then SIGKILLs the group, and finally kills any process that still
  carries this AIRFLOW_HOME in its environment (a task subprocess that left its group), so nothing is orphaned.

Settings come from the `airflow` section of params.yaml and reach Airflow as AIRFLOW__* environment variables
(an `airflow.cfg` in AIRFLOW_HOME still applies to anything not set here). The metadata DB is SQLite in
AIRFLOW_HOME by default; production sets `metadata_db` to PostgreSQL (docs/operations/airflow.md). The JWT secret that
the API server and the task runners share is generated once into AIRFLOW_HOME (never in the repository).

No Airflow import: this only runs the `airflow` command line.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TypedDict

from pydantic import Field

from pipelines.config import StageConfig, project_root

SERVICES = ("scheduler", "dag-processor", "triggerer", "api-server")
STATE_FILE = "llmops-services.json"


class AirflowConfig(StageConfig):
    """The `airflow` section of params.yaml."""

    home: str  # AIRFLOW_HOME (relative: from the repository root); the AIRFLOW_HOME environment variable wins
    api_host: str  # 127.0.0.1: the UI and REST API on loopback only
    api_port: int
    parallelism: int | None  # LocalExecutor task slots; null: the CPU count
    metadata_db: str | None  # SQLAlchemy URL; null: SQLite in AIRFLOW_HOME (production: postgresql+psycopg2://...)
    dag_refresh_s: int  # how often the dag-processor lists the dags folder for new files
    # how often each DAG file is parsed again (edits show after this); every parse is a process importing the file,
    # a steady CPU cost beside the tasks. Keep it short: in Airflow 3.3 a DAG's "max active runs exceeded" flag set
    # while it was paused clears only on a re-parse, and until then its asset-triggered runs wait (measured: an
    # interval of 3600 s held tests/test_e2e_rollout.py's triggered rollout for good)
    dag_reparse_s: int = Field(ge=1)
    start_timeout_s: int  # how long `up` waits for the API server to answer
    stop_timeout_s: int  # SIGTERM, then SIGKILL of a service's process group after this many seconds
    lineage_file: str | None  # OpenLineage file transport; null: AIRFLOW_HOME/openlineage/events.jsonl


class ServiceState(TypedDict):
    name: str
    pid: int
    log: str


class DownReport(TypedDict):
    stopped: dict[str, float]  # service -> seconds it took to exit
    killed: list[str]  # services that needed SIGKILL
    orphans_killed: int


def airflow_home(cfg: AirflowConfig) -> Path:
    if env := os.environ.get("AIRFLOW_HOME"):
        return Path(env).resolve()
    home = Path(cfg.home)
    return (home if home.is_absolute() else project_root() / home).resolve()


def _jwt_secret(home: Path) -> str:
    path = home / ".jwt_secret"
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


def airflow_env(cfg: AirflowConfig, root: Path | None = None) -> dict[str, str]:
    """The AIRFLOW__* settings of this project (plus AIRFLOW_HOME, LLMOPS_ROOT and PATH for the task commands)."""
    root = (root or project_root()).resolve()
    home = airflow_home(cfg)
    parallelism = cfg.parallelism or os.cpu_count() or 2
    lineage = Path(cfg.lineage_file) if cfg.lineage_file else home / "openlineage" / "events.jsonl"
    lineage = lineage if lineage.is_absolute() else root / lineage
    lineage.parent.mkdir(parents=True, exist_ok=True)
    api = f"http://{cfg.api_host}:{cfg.api_port}"
    venv_bin = str(Path(sys.executable).parent)
    env = {
        "AIRFLOW_HOME": str(home),
        "LLMOPS_ROOT": str(root),
        "PATH": f"{venv_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "AIRFLOW__CORE__DAGS_FOLDER": str(root / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(root / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # The DAGs are event-driven: paused at creation they would ignore the first drop and drift event.
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": str(parallelism),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
        "AIRFLOW__API__HOST": cfg.api_host,
        "AIRFLOW__API__PORT": str(cfg.api_port),
        "AIRFLOW__API__BASE_URL": api,
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API_AUTH__JWT_SECRET": _jwt_secret(home),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": str(cfg.dag_refresh_s),
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": str(cfg.dag_reparse_s),
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "True",
        "AIRFLOW__OPENLINEAGE__NAMESPACE": "llmops",
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps({"type": "file", "log_file_path": str(lineage),
                                                       "append": True}),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "SPARK_LOCAL_IP": "127.0.0.1",
    }
    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = cfg.metadata_db or f"sqlite:///{home / 'airflow.db'}"
    return env


def _state_path(home: Path) -> Path:
    return home / STATE_FILE


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by its parent) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _api_healthy(cfg: AirflowConfig) -> bool:
    url = f"http://{cfg.api_host}:{cfg.api_port}/api/v2/monitor/health"
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def status(cfg: AirflowConfig) -> dict[str, bool]:
    path = _state_path(airflow_home(cfg))
    state: list[ServiceState] = json.loads(path.read_text()) if path.exists() else []
    running = {s["name"]: _alive(s["pid"]) for s in state}
    return {name: running.get(name, False) for name in SERVICES}


def up(cfg: AirflowConfig, root: Path | None = None, *, echo=print) -> list[ServiceState]:
    """Migrate the metadata DB and start the four services; returns once the API server answers."""
    env = {**os.environ, **airflow_env(cfg, root)}
    home = Path(env["AIRFLOW_HOME"])
    if any(status(cfg).values()):
        raise RuntimeError(f"Airflow services of {home} are already running (llmops airflow down first)")
    logs = home / "logs" / "services"
    logs.mkdir(parents=True, exist_ok=True)
    airflow = str(Path(sys.executable).parent / "airflow")
    echo(f"airflow db migrate ({env['AIRFLOW__DATABASE__SQL_ALCHEMY_CONN'].split(':')[0]})")
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True, text=True)
    started: list[ServiceState] = []
    for name in SERVICES:
        log = logs / f"{name}.log"
        with open(log, "ab") as fh:
            proc = subprocess.Popen([airflow, name], env=env, stdout=fh, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, cwd=env["LLMOPS_ROOT"])
        started.append(ServiceState(name=name, pid=proc.pid, log=str(log)))
    _state_path(home).write_text(json.dumps(started, indent=2))
    deadline = time.monotonic() + cfg.start_timeout_s
    while time.monotonic() < deadline:
        dead = [s["name"] for s in started if not _alive(s["pid"])]
        if dead:
            down(cfg)
            raise RuntimeError(f"Airflow service(s) {dead} exited at start; see {logs}")
        if _api_healthy(cfg):
            echo(f"Airflow up: UI and REST API on http://{cfg.api_host}:{cfg.api_port} "
                 f"(parallelism {env['AIRFLOW__CORE__PARALLELISM']}, AIRFLOW_HOME {home})")
            return started
        time.sleep(1)
    down(cfg)
    raise TimeoutError(f"the Airflow API server did not answer within {cfg.start_timeout_s} s; see {logs}")


def _processes_of(home: Path) -> list[int]:
    """PIDs whose environment names this AIRFLOW_HOME (what is left of these services, wherever it went)."""
    marker = f"AIRFLOW_HOME={home}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return [p for p in pids if _alive(p)]


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def down(cfg: AirflowConfig) -> DownReport:
    home = airflow_home(cfg)
    path = _state_path(home)
    state: list[ServiceState] = json.loads(path.read_text()) if path.exists() else []
    for s in state:
        _signal_group(s["pid"], signal.SIGTERM)
    stopped: dict[str, float] = {}
    killed: list[str] = []
    t0 = time.monotonic()
    pending = {s["name"]: s["pid"] for s in state}
    while pending and time.monotonic() - t0 < cfg.stop_timeout_s:
        for name, pid in list(pending.items()):
            if not _alive(pid):
                stopped[name] = round(time.monotonic() - t0, 2)
                del pending[name]
        time.sleep(0.2)
    for name, pid in pending.items():
        _signal_group(pid, signal.SIGKILL)
        killed.append(name)
        stopped[name] = round(time.monotonic() - t0, 2)
    for s in state:  # children that outlived their leader keep the group id
        _signal_group(s["pid"], signal.SIGKILL)
    orphans = _processes_of(home)
    for pid in orphans:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if path.exists():
        path.unlink()
    return DownReport(stopped=stopped, killed=killed, orphans_killed=len(orphans))


def remaining_processes(cfg: AirflowConfig) -> list[int]:
    """What still runs with this AIRFLOW_HOME (a test asserts none after `down`)."""
    return _processes_of(airflow_home(cfg))
