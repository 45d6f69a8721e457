"""The end-to-end workspace shared by tests/test_e2e.py and tests/test_e2e_loop.py: a copy of the repository
(tracked files + the shipped sample, cut to a test size) with test-sized params, reproduced once per session."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

VENV_BIN = Path(sys.executable).parent

# Smaller than the demo so the suite stays within its time budget; the code path is the same.
TEST_PARAMS = {
    ("finetune", "max_steps"): 2,
    # one Train worker: a second one is a second process importing torch, transformers and peft and loading the
    # model, twice per session (the reproduction and the loop's retrain); two workers, their DDP and a worker's
    # failure are tests/test_finetune.py's and tests/test_ray_cluster.py's business
    ("finetune", "num_workers"): 1,
    # every task family on 1 example (each family's own behaviour is tests/test_evaluate.py's business): the
    # e2e proves the wiring, twice (reproduction and the loop's retrain), x2 models
    **{("evaluate", "tasks", i, "max_examples"): 1 for i in range(8)},
    # perplexity on 2 (cheap: one forward pass each): a single held-out example can be one the tiny model finds
    # absurd (perplexity 1e5), and the gate's versus-champion margin compares against the champion's own figure
    ("evaluate", "tasks", 0, "max_examples"): 2,
    # short answers: the generation families' cost is per generated token, x2 models (x2 again for RAG)
    **{("evaluate", "tasks", i, "max_new_tokens"): 8 for i in (1, 2, 3, 5, 6, 7)},
    # RAG, bias and toxicity off (no retriever to load, 3 families x 2 models less to generate): the gate below
    # reads none of them, and tests/test_evaluate.py scores every family
    **{("evaluate", "tasks", i, "enabled"): False for i in (3, 5, 6)},
    ("evaluate", "ray", "actors"): 1,         # one model actor (one process start) with both threads
    ("evaluate", "ray", "threads_per_actor"): 2,
    ("evaluate", "bootstrap", "samples"): 200,
    ("gate", "versus_reference", "min_examples"): 1,
    ("audit", "max_prompts"): 4,
    ("audit", "max_new_tokens"): 8,
    ("audit", "max_pii_records"): 2,
    ("audit", "leak_max_new_tokens"): 8,
    ("embed", "concurrency"): 1,              # one model actor: one process start instead of two
    ("engines", "spark", "shuffle_partitions"): 2,  # ~160 rows: one shuffle task per core
    ("evaluate_retrieval", "max_questions"): 60,
    # the flywheel's feedback-volume watcher (parse time): checked every 3 s, firing at a volume the rollout tests'
    # ratings (~85 lines) stay under, so tests/test_e2e_rollout.py tops it up and watches the live trigger fire
    ("flywheel", "volume_check_s"): 3,
    ("flywheel", "min_feedback_lines"): 150,
    # The candidate must be promotable twice (the reproduction's, then the drift loop's retrain): the floors and
    # versus-champion margins are tests/test_gate.py's business. Set before the first `dvc repro`, so the loop's
    # set-up does not rerun gate and promote.
    ("gate", "floors", "max_perplexity"): 1.0e6, ("gate", "floors", "min_rouge_l"): 0.0,
    ("gate", "floors", "max_attack_success_rate"): 1.0,
    ("gate", "versus_champion", "max_perplexity_increase_pct"): None,
    ("gate", "versus_champion", "max_rouge_l_drop"): None,
    ("gate", "versus_champion", "max_attack_success_rate_increase"): 1.0,
    ("gate", "versus_reference", "max_regression"): {},
}


# Set by tests/conftest.py `stage_ray`: the stages that `dvc repro` and Airflow run in subprocesses join the test
# session's Ray (LLMOPS_RAY_ADDRESS, read by pipelines/engines/ray_engine.py) as a person's stages join `make ray-up`,
# instead of each starting and stopping a Ray of its own (measured: ~7 s of `ray.init` per Ray stage on 2 cores).
STAGE_ENV: dict[str, str] = {}


def env_for(ws: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PATH=f"{VENV_BIN}:{env.get('PATH', '')}",
        LLMOPS_ROOT=str(ws),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        SPARK_LOCAL_IP="127.0.0.1",
        **STAGE_ENV,
    )
    env.update(extra)
    return env


def run(args: list[str], ws: Path, timeout: int = 1500, **extra: str) -> subprocess.CompletedProcess:
    started = time.perf_counter()
    proc = subprocess.run(args, cwd=ws, env=env_for(ws, **extra), capture_output=True, text=True, timeout=timeout)
    print(f"\n$ {' '.join(args)}  ({time.perf_counter() - started:.1f}s, rc={proc.returncode})")
    if proc.returncode != 0:
        print(proc.stdout[-6000:], proc.stderr[-6000:])
    return proc


def set_params(ws: Path, updates: dict[tuple[str, ...], object]) -> None:
    path = ws / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for keys, value in updates.items():
        node = params
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def shrink_sample(ws: Path, per_source: int = 60, xquad_articles: int = 8) -> None:
    """Cut the shipped sample to a test-sized one (compute cost is per document: embedding 840 documents alone
    takes minutes on a 2-core CPU) while keeping what the stages must find: exact duplicates (a verbatim copy
    and a case/whitespace-noisy copy) and XQuAD paragraphs whose questions the retrieval evaluation asks."""
    raw = ws / "data" / "sample" / "raw"
    roleplay = json.loads((raw / "gpteacher_roleplay.json").read_text())[:per_source]
    roleplay += [dict(r) for r in roleplay[:2]]
    codegen = json.loads((raw / "gpteacher_codegen.json").read_text())[:per_source]
    codegen.append({**codegen[0], "instruction": "  " + codegen[0]["instruction"].upper() + "  "})
    (raw / "gpteacher_roleplay.json").write_text(json.dumps(roleplay, indent=1))
    (raw / "gpteacher_codegen.json").write_text(json.dumps(codegen, indent=1))
    xquad_path = ws / "data" / "sample" / "rag" / "xquad.en.json"
    xquad = json.loads(xquad_path.read_text())
    xquad["data"] = xquad["data"][:xquad_articles]
    xquad_path.write_text(json.dumps(xquad))
    titles = {a["title"] for a in xquad["data"]}
    lines = (raw / "xquad_en_paragraphs.jsonl").read_text().splitlines()
    kept = [line for line in lines if line.strip() and json.loads(line)["title"] in titles]
    (raw / "xquad_en_paragraphs.jsonl").write_text("\n".join(kept) + "\n")


def slice_guard_sample(src: Path, dst: Path) -> None:
    """The guard's training sample cut to a test size (every source and split kept, up to n rows per split, label
    and, in train, source): the detectors still train, on about a tenth of the rows. `src`/`dst`: data/sample dirs."""
    for rel, n in (("security/guard/injection.jsonl", 40), ("toxicity/davidson_sample.jsonl", 120),
                   ("security/guard/harmful_pairs.jsonl", 100)):
        rows = [json.loads(line) for line in (src / rel).read_text().split("\n") if line.strip()]
        seen: dict = {}
        keep = []
        for r in rows:
            k = (r["split"], r["label"], r.get("source") if r["split"] == "train" else None)
            if seen.get(k, 0) < n:
                seen[k] = seen.get(k, 0) + 1
                keep.append(r)
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        (dst / rel).write_text("".join(json.dumps(r) + "\n" for r in keep))


def make_workspace(tmp_path_factory, repo_root, base_model_dir) -> Path:
    ws = tmp_path_factory.mktemp("e2e") / "repo"
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                            cwd=repo_root, capture_output=True, text=True, check=True).stdout.split()
    for rel in listed:
        src = repo_root / rel
        if src.is_file():
            (ws / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, ws / rel)
    shrink_sample(ws)
    slice_guard_sample(repo_root / "data" / "sample", ws / "data" / "sample")
    # The content-addressed MiniLM cache (keyed by model fingerprint and text, never by stage) as a laptop's second
    # run has it: conftest's guard_models already encoded the same guard slice into the repository's cache.
    cache = repo_root / "data" / "cache" / "embeddings"
    if cache.is_dir():
        shutil.copytree(cache, ws / "data" / "cache" / "embeddings")
    set_params(ws, {**TEST_PARAMS, ("prepare_base_model", "model_path"): str(base_model_dir)})
    for args in (["git", "init", "-q"], ["git", "add", "-A"],
                 ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
        subprocess.run(args, cwd=ws, check=True)
    return ws


def reproduce(workspace: Path) -> Path:
    proc = run([str(VENV_BIN / "dvc"), "repro"], workspace)
    assert proc.returncode == 0, "dvc repro failed"
    return workspace


# ----------------------------------------------------------------- the serving API + Airflow, once per session

TIMELINE: list[tuple[float, str]] = []
T0 = time.monotonic()


def mark(what: str) -> None:
    TIMELINE.append((round(time.monotonic() - T0, 1), what))
    print(f"[{TIMELINE[-1][0]:7.1f}s] {what}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Airflow:
    """Airflow's REST API (v2) as the test drives it: JWT from the simple auth manager, bounded polling."""

    def __init__(self, base: str, home: Path):
        self.base = base
        password = json.loads((home / "simple_auth_manager_passwords.json.generated").read_text())["admin"]
        # the API server answers its first requests slowly on a busy 2-core box: a generous timeout, not 5 s
        token = httpx.post(f"{base}/auth/token", json={"username": "admin", "password": password}, timeout=120).json()
        self.token = token["access_token"]
        self.http = httpx.Client(base_url=f"{base}/api/v2", headers={"Authorization": f"Bearer {self.token}"},
                                 timeout=30)

    def get(self, path: str, **params):
        resp = self.http.get(path, params=params)
        resp.raise_for_status()
        return resp.json()

    def set_paused(self, dag_id: str, paused: bool) -> None:
        resp = self.http.patch(f"/dags/{dag_id}", params={"update_mask": "is_paused"}, json={"is_paused": paused})
        resp.raise_for_status()

    def runs(self, dag_id: str) -> list[dict]:
        return self.get(f"/dags/{dag_id}/dagRuns", order_by="-run_after", limit=50)["dag_runs"]

    def tasks(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        tis = self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", limit=100)["task_instances"]
        return {t["task_id"]: t["state"] for t in tis}

    def wait(self, what: str, check, timeout: float, every: float = 1.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            time.sleep(every)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")

    def new_run(self, dag_id: str, seen: set[str], timeout: float) -> str:
        def check():
            fresh = [r["dag_run_id"] for r in self.runs(dag_id) if r["dag_run_id"] not in seen]
            return fresh[-1] if fresh else None
        run_id = self.wait(f"a new {dag_id} run", check, timeout)
        seen.add(run_id)
        return run_id

    def finished(self, dag_id: str, run_id: str, timeout: float) -> str:
        def check():
            state = self.get(f"/dags/{dag_id}/dagRuns/{run_id}")["state"]
            return state if state in ("success", "failed") else None
        return self.wait(f"{dag_id} {run_id} to finish", check, timeout)

    def _wait_worker_gone(self, dag_id: str, run_id: str, task_id: str, settle_s: float = 2.0,
                          timeout: float = 30.0) -> None:
        ti = self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}")
        pid = ti.get("pid")
        if not pid:  # not recorded: the old fixed wait
            time.sleep(10)
            return
        deadline = time.monotonic() + timeout
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.25)
        time.sleep(settle_s)

    def approve(self, dag_id: str, run_id: str, task_id: str, timeout: float, option: str = "Approve") -> dict:
        """Answer like a person in the UI (`option`: Approve, or one of a choice's options): once the task is
        waiting for input (answering while it is still starting races its own transition), then check the answer
        was taken; a retried task asks again."""
        deadline = time.monotonic() + timeout

        def waiting():
            if self.tasks(dag_id, run_id).get(task_id) not in ("awaiting_input", "deferred"):
                return None
            details = self.get(f"/dags/{dag_id}/dagRuns/{run_id}/hitlDetails")["hitl_details"]
            return next((d for d in details if d["task_instance"]["task_id"] == task_id
                         and not d.get("response_received")), None)

        while True:
            detail = self.wait(f"the approval {task_id} of {dag_id}", waiting, max(1.0, deadline - time.monotonic()))
            # Airflow 3.3.2: an answer within about a second of AWAITING_INPUT resumes the task while its first
            # worker is still exiting, and the server kills the resumed run ("shouldn't be running anymore"); the
            # answer is lost. A person never answers that fast. The test waits until that worker process (the
            # task instance's pid, on this machine) is gone, then a little more; a fixed wait had to be long (at
            # load ~10-16 on 2 cores, 3 s lost the answer twice in a row).
            self._wait_worker_gone(dag_id, run_id, task_id)
            resp = self.http.patch(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/-1/hitlDetails",
                                   json={"chosen_options": [option], "params_input": {}})
            assert resp.status_code == 200, resp.text
            try:
                self.wait(f"{task_id} to take the answer", lambda: self.tasks(dag_id, run_id).get(task_id)
                          in ("success", "skipped", "failed"), timeout=30)
                return detail
            except AssertionError:
                if time.monotonic() > deadline:
                    raise


LOOP_DAGS = ("llmops_ingest", "llmops_monitor", "llmops_lifecycle", "llmops_rollout")
# Parse-time settings of the rollout DAG (its other rollout settings are read when its tasks run, so
# tests/test_e2e_rollout.py sets them itself): an analysis every few seconds once the test unpauses it.
ROLLOUT_SCHEDULE_S = 4


def serve_and_airflow(ws: Path, home: Path) -> Iterator[dict]:
    """The serving API on the workspace's champion and `llmops airflow up` (scheduler, dag-processor, triggerer,
    API server on loopback) in a temporary AIRFLOW_HOME: started once per session (tests/conftest.py
    `airflow_loop`) for the drift loop (tests/test_e2e_loop.py) and the rollouts (tests/test_e2e_rollout.py).
    The rollout DAG is paused until the rollout test needs it (its short schedule would otherwise run through
    the loop). At the end, `down` must leave no Airflow process behind."""
    api_port, serve_port = free_port(), free_port()
    set_params(ws, {
        ("retrain", "promotion_approval"): True, ("retrain", "cooldown_minutes"): 30,
        ("landing", "poke_interval_s"): 1, ("monitor", "schedule"): "0 0 1 1 *",
        ("airflow", "api_port"): api_port, ("airflow", "dag_refresh_s"): 5, ("airflow", "home"): str(home),
        ("serve", "port"): serve_port, ("serve", "reload_poll_s"): 2,
        ("rollout", "schedule"): ROLLOUT_SCHEDULE_S,
        # the rollout test's rater posts a few dozen ratings a minute from one (anonymous, loopback) client
        ("serve", "limits", "feedback_rate_limit_rps"): 50, ("serve", "limits", "feedback_rate_limit_burst"): 200,
    })
    # Up to date unless a stage reads the settings above (then it reruns, as it would for a person).
    assert run([str(VENV_BIN / "dvc"), "repro"], ws).returncode == 0
    env = env_for(ws, AIRFLOW_HOME=str(home))
    server_log = open(home / "serve.log", "wb")
    server = subprocess.Popen([str(VENV_BIN / "llmops"), "serve"], cwd=ws, env=env, stdout=server_log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    state: dict = {"server": server}
    try:  # from here on a failing set-up still stops what it started (no server or scheduler left behind)
        up = subprocess.run([str(VENV_BIN / "llmops"), "airflow", "up"], cwd=ws, env=env, capture_output=True,
                            text=True, timeout=300)
        print(up.stdout, up.stderr[-3000:])
        assert up.returncode == 0
        mark("airflow up")
        api = Airflow(f"http://127.0.0.1:{api_port}", home)
        state.update({"ws": ws, "home": home, "env": env, "api": api, "serve": f"http://127.0.0.1:{serve_port}",
                      "serve_log": home / "serve.log", "seen": {d: set() for d in LOOP_DAGS}})
        api.wait("the DAGs to be parsed", lambda: all(
            api.http.get(f"/dags/{d}").status_code == 200 for d in state["seen"]), timeout=180)
        api.set_paused("llmops_rollout", True)
        for dag_id, seen in state["seen"].items():
            seen.update(r["dag_run_id"] for r in api.runs(dag_id))  # a first cron run may exist
        yield state
    finally:
        from pipelines.orchestration.airflow_services import AirflowConfig, down, remaining_processes

        server = state["server"]  # first: it runs with this AIRFLOW_HOME too, and `down` is about Airflow's
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
        server_log.close()
        cfg = AirflowConfig(**yaml.safe_load((ws / "params.yaml").read_text())["airflow"])
        old = os.environ.get("AIRFLOW_HOME")
        os.environ["AIRFLOW_HOME"] = str(home)
        try:
            report = down(cfg)
            deadline = time.monotonic() + 15  # SIGKILLed orphans take a moment to go
            while (left := remaining_processes(cfg)) and time.monotonic() < deadline:
                time.sleep(0.5)
        finally:
            os.environ.pop("AIRFLOW_HOME") if old is None else os.environ.__setitem__("AIRFLOW_HOME", old)
        mark(f"airflow down: {report}")
        print("\ntimeline:\n" + "\n".join(f"  {t:7.1f}s  {what}" for t, what in TIMELINE))
        (home / "timeline.json").write_text(json.dumps(TIMELINE, indent=1))
        if "api" in state:  # `down` leaves no process behind (checked when the set-up got that far)
            assert set(report["stopped"]) == {"scheduler", "dag-processor", "triggerer", "api-server"}, report
            assert left == [], left
