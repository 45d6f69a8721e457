"""The data stages on a real Spark standalone cluster (a master and one worker started from the installed pyspark).

ingest and dedup run in a subprocess through `run_stage` (what `llmops run <stage> --params file` calls) with
`engines.spark.master: spark://127.0.0.1:<port>`: the tests' shared local session is left alone, and the stages
get exactly what a person pointing params.yaml at a cluster gets. The master's JSON API then shows the
application as completed on the cluster, and the worker's work dir holds its executor.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow.dataset as ds
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
APP = "llmops-cluster-test"

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).resolve().parent  # the pip package is a full Spark distribution


def _start(args: list[str], log: Path, env: dict) -> subprocess.Popen:
    # Own process group: stopping it stops the JVM that spark-class execs, and nothing else.
    spark_class = Path(env["SPARK_HOME"]) / "bin" / "spark-class"
    return subprocess.Popen([str(spark_class), *args], stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _master_state(ui_port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=5) as resp:
        return json.load(resp)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("spark_cluster")
    # SPARK_HOME explicit: the venv's bin/spark-class would look for it with whatever `python3` is on PATH.
    # C1 only in the daemons, as in the driver (engines.spark.driver_java_options): the test's jobs last seconds.
    env = {**os.environ, "SPARK_HOME": str(_spark_home()), "SPARK_LOCAL_IP": "127.0.0.1",
           "SPARK_DAEMON_JAVA_OPTS": "-XX:TieredStopAtLevel=1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    port, ui, worker_ui = _free_port(), _free_port(), _free_port()
    master = _start(["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
                     "--webui-port", str(ui)], tmp / "master.log", env)
    worker = _start(["org.apache.spark.deploy.worker.Worker", f"spark://127.0.0.1:{port}", "--host", "127.0.0.1",
                     "--cores", "1", "--memory", "1g", "--webui-port", str(worker_ui),
                     "--work-dir", str(tmp / "work")], tmp / "worker.log", env)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if any(w["state"] == "ALIVE" for w in _master_state(ui).get("workers", [])):
                    break
            except (OSError, ValueError):  # not listening yet, or the UI answered before it had state (empty body)
                pass
            if time.monotonic() > deadline or master.poll() is not None or worker.poll() is not None:
                raise RuntimeError(f"Spark master/worker did not come up; see {tmp}/master.log, worker.log")
            time.sleep(0.5)
        yield {"url": f"spark://127.0.0.1:{port}", "ui": ui, "tmp": tmp, "env": env}
    finally:
        _stop(worker)
        _stop(master)


def _tiny_source(path: Path) -> int:
    """30 real paragraphs + an exact duplicate and a one-word edit of the first one (a near-duplicate)."""
    lines = (REPO / "data" / "sample" / "raw" / "xquad_en_paragraphs.jsonl").read_text().splitlines()[:30]
    first = json.loads(lines[0])
    words = first["text"].split()
    words[len(words) // 2] = "remarkably"
    extra = [json.dumps({**first, "id": "copy"}), json.dumps({**first, "id": "edit", "text": " ".join(words)})]
    path.write_text("\n".join(lines + extra) + "\n")
    return len(lines) + len(extra)


def test_ingest_and_dedup_on_standalone_cluster(cluster):
    tmp = cluster["tmp"]
    n_lines = _tiny_source(tmp / "tiny.jsonl")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["engines"]["spark"].update(master=cluster["url"], app_name=APP, shuffle_partitions=2,
                                      driver_memory="1g",
                                      conf={"spark.executor.extraJavaOptions": "-XX:TieredStopAtLevel=1"})
    xquad = next(s for s in params["ingest"]["sources"] if s["name"] == "xquad_en")
    params["ingest"].update(sources=[{**xquad, "path": str(tmp / "tiny.jsonl")}], input_dir=str(tmp),
                            output_dir=str(tmp / "ingested"), rejects_dir=str(tmp / "rej_ingest"),
                            metrics=str(tmp / "ingest.json"))
    params["dedup"].update(input_dir=str(tmp / "ingested"), output_dir=str(tmp / "corpus"),
                           rejects_dir=str(tmp / "rej_dedup"), metrics=str(tmp / "dedup.json"),
                           cluster_report=str(tmp / "clusters.json"), cluster_html=str(tmp / "clusters.html"))
    params_file = tmp / "params.yaml"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))

    # One driver process runs both stages (what `llmops run ingest` then `llmops run dedup` do, minus a second
    # JVM and executor start-up); the stages build their session from engines.spark like any run.
    script = (
        "import sys; from pipelines.stages.registry import run_stage; "
        "[run_stage(s, sys.argv[1]) for s in ('ingest', 'dedup')]"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(params_file)],
                          cwd=REPO, env=cluster["env"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"ingest/dedup failed on the cluster:\n{proc.stderr[-4000:]}"

    ingest = json.loads((tmp / "ingest.json").read_text())["sources"]["xquad_en"]
    assert ingest["in"] == n_lines and ingest["balanced"]
    report = json.loads((tmp / "dedup.json").read_text())
    assert report["in"] == ingest["out"]
    assert report["in"] == report["out"] + report["dropped"] and report["balanced"]
    assert report["dropped_by_reason"] == {"exact_duplicate": 1, "near_duplicate": 1}
    rejects = ds.dataset(tmp / "rej_dedup", format="parquet").to_table().to_pylist()
    assert sorted(r["reason"] for r in rejects) == ["exact_duplicate", "near_duplicate"]
    assert ds.dataset(tmp / "corpus", format="parquet").count_rows() == report["out"]

    # The application ran on the cluster: the master lists it as completed, and the worker ran its executor.
    apps = _master_state(cluster["ui"]).get("completedapps", [])
    assert [a["name"] for a in apps] == [APP], apps
    assert len(list((tmp / "work").glob("app-*"))) == 1
