"""finetune on a real two-node Ray cluster: a head and one worker node started with `ray start` on loopback.

Both nodes are started with `--node-ip-address=127.0.0.1` (and RAY_NODE_IP_ADDRESS=127.0.0.1 for every process);
Ray 2.60 still registers both under the machine's interface address (ray-project/ray#59110, measured: 192.0.2.2),
so the test asserts that every node is this machine, not that the pin held. Each node offers one CPU, and finetune runs its two Ray Train workers with `placement_strategy: STRICT_SPREAD`: Ray must place
exactly one worker on each node or fail the run. The stage runs in a subprocess through `llmops run finetune --params`
(what a person pointing params.yaml at a cluster gets), joining the cluster with `engines.ray.address: auto` and
RAY_ADDRESS. The cluster has its own temp dir and ports; `ray stop` is not used (it would stop every Ray on the
machine, others' too): the test stops exactly the processes of this cluster (found by its own temp dir).
Ray 2.60's head enables token authentication; the nodes and the driver share a token file made for this cluster.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
RAW = REPO / "data" / "sample" / "raw" / "gpteacher_roleplay.json"
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ray(args: list[str], env: dict, log: Path) -> subprocess.CompletedProcess:
    with open(log, "ab") as fh:
        return subprocess.run([str(BIN / "ray"), *args], env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=120)


def _split(path: Path, start: int, n: int) -> Path:
    records = json.loads(RAW.read_text(encoding="utf-8"))[start:start + n]
    pd.DataFrame([{"doc_id": f"gp{start + i}", "kind": "instruction",
                   "prompt": r["instruction"] + (f"\n\n{r['input']}" if r["input"] else ""),
                   "response": r["response"], "text": r["response"]} for i, r in enumerate(records)]).to_parquet(path)
    return path


def _own_addresses() -> set[str]:
    """This host's addresses: loopback and those of its interfaces (`hostname -I`)."""
    found = {"127.0.0.1"}
    out = subprocess.run(["hostname", "-I"], capture_output=True, text=True)
    found.update(out.stdout.split())
    return found


def _ray_pids(temp_dir: Path) -> set[int]:
    """Every process whose command line names this cluster's temp dir (raylets, GCS, workers, agents)."""
    pids = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if str(temp_dir).encode() in (proc / "cmdline").read_bytes():
                    pids.add(int(proc.name))
            except OSError:
                pass
    return pids


def _running(pid: int) -> bool:
    """Still there and not a zombie (exited, not yet reaped: waiting cannot change that)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.fixture(scope="module")
def two_node_ray(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ray_cluster")
    temp_dir = Path("/tmp") / f"ray_llmops_{os.getpid()}"  # short: Ray's socket paths must stay < 108 bytes
    port = _free_port()
    # Ray 2.60's `ray start --head` turns token authentication on, and a joining `ray start` only sends a token
    # in token mode: both (and the driver) get this cluster's own token, not ~/.ray/auth_token.
    token = tmp / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_NODE_IP_ADDRESS": "127.0.0.1",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    log = tmp / "ray.log"
    head = _ray(["start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=1",
                 "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp_dir}",
                 f"--node-manager-port={_free_port()}", f"--object-manager-port={_free_port()}",
                 f"--ray-client-server-port={_free_port()}", "--min-worker-port=20000", "--max-worker-port=20999"],
                env, log)
    address = f"127.0.0.1:{port}"
    try:
        assert head.returncode == 0, log.read_text()[-3000:]
        worker = _ray(["start", f"--address={address}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                       f"--node-manager-port={_free_port()}", f"--object-manager-port={_free_port()}",
                       "--min-worker-port=21000", "--max-worker-port=21999", "--disable-usage-stats"], env, log)
        assert worker.returncode == 0, log.read_text()[-3000:]
        yield {"address": address, "env": {**env, "RAY_ADDRESS": address}, "tmp": tmp, "temp_dir": temp_dir,
               "log": log}
    finally:
        # SIGTERM, then SIGKILL, to exactly this cluster's processes (found by its temp dir), never `ray stop`.
        # (5 s of grace: measured, the raylets and the GCS outlive SIGTERM by more than 15 s)
        pids = _ray_pids(temp_dir)
        for sig, grace_s in ((signal.SIGTERM, 5), (signal.SIGKILL, 15)):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline and (pids := {p for p in pids if _running(p)}):
                time.sleep(0.5)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not _ray_pids(temp_dir), "ray processes left behind"


def test_nodes_are_pinned_to_loopback(two_node_ray):
    probe = ("import json, ray; ray.init(address='auto', log_to_driver=False); "
             "print(json.dumps([{'ip': n['NodeManagerAddress'], 'alive': n['Alive'], 'cpu': n['Resources'].get('CPU')}"
             " for n in ray.nodes()]))")
    out = subprocess.run([sys.executable, "-c", probe], env=two_node_ray["env"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    nodes = [n for n in json.loads(out.stdout.strip().splitlines()[-1]) if n["alive"]]
    assert len(nodes) == 2
    assert [n["cpu"] for n in nodes] == [1.0, 1.0]
    # Measured with Ray 2.60 here: both nodes register the machine's interface address (192.0.2.2 on eth0), not
    # 127.0.0.1, although `--node-ip-address=127.0.0.1` and RAY_NODE_IP_ADDRESS=127.0.0.1 are given (the GCS and
    # the head's ports do listen on 127.0.0.1, which is how the worker joined). What can be asserted is that no node
    # is anywhere but this machine: each registered address is one of this host's own.
    ips = {n["ip"] for n in nodes}
    assert len(ips) == 1 and ips <= _own_addresses(), (ips, _own_addresses())


def test_finetune_one_worker_per_node(two_node_ray, base_model_dir):
    tmp = two_node_ray["tmp"]
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["engines"]["ray"].update(address="auto", num_cpus=None, warm_pool=False)
    params["registry"].update(tracking_uri=f"sqlite:///{tmp / 'mlruns.db'}", artifact_root=str(tmp / "mlart"))
    params["finetune"].update(
        base_model_dir=str(base_model_dir), train_path=str(_split(tmp / "train.parquet", 0, 8)),
        eval_path=str(_split(tmp / "eval.parquet", 100, 4)), output_dir=str(tmp / "candidate"),
        num_workers=2, cpus_per_worker=1, placement_strategy="STRICT_SPREAD", max_steps=2, checkpoint_every=0,
        eval_every=0, max_failures=0, per_device_batch_size=1, max_length=64, max_eval_examples=2,
        storage_path=str(tmp / "ray-storage"), mlflow={"enabled": False},
        metrics=str(tmp / "finetune.json"), loss_plot=str(tmp / "loss.csv"))
    (tmp / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    t0 = time.monotonic()
    out = subprocess.run([str(BIN / "llmops"), "run", "finetune", "--params", str(tmp / "params.yaml")],
                         env=two_node_ray["env"], cwd=REPO, capture_output=True, text=True, timeout=240)
    seconds = time.monotonic() - t0
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-4000:])
    report = json.loads((tmp / "finetune.json").read_text())
    assert report["steps"] == 2
    meta = json.loads((tmp / "candidate" / "training_meta.json").read_text())
    assert meta["world_size"] == 2  # two DDP ranks: STRICT_SPREAD put one on each of the two 1-CPU nodes
    assert (tmp / "candidate" / "adapter_config.json").exists()
    print(f"two-node finetune: {seconds:.1f} s wall, {report.get('tokens_per_second')} tok/s")


def _untrained_adapter(base_model_dir: Path, out: Path) -> Path:
    """A LoRA adapter straight from peft (B = 0: it scores as the base does), so evaluate has a candidate without
    a training run."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_model_dir)
    get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")).save_pretrained(out)
    return out


def test_evaluate_runs_its_actors_on_both_nodes(two_node_ray, base_model_dir):
    tmp = two_node_ray["tmp"]
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["engines"]["ray"].update(address="auto", num_cpus=None, warm_pool=False)
    params["registry"].update(tracking_uri=f"sqlite:///{tmp / 'mlruns-eval.db'}", artifact_root=str(tmp / "mlart"))
    split = {"perplexity": _split(tmp / "eval-ppl.parquet", 200, 2), "generation": _split(tmp / "eval-gen.parquet", 210, 2)}
    for task in params["evaluate"]["tasks"]:
        task["enabled"] = task["name"] in split
        if task["enabled"]:
            task.update(path=str(split[task["name"]]), max_examples=2, max_new_tokens=min(task["max_new_tokens"], 4))
    params["evaluate"].update(
        base_model_dir=str(base_model_dir), candidate_dir=str(_untrained_adapter(base_model_dir, tmp / "adapter")),
        ray={"actors": 2, "threads_per_actor": 1, "use_gpu": False},  # 1 CPU each: one actor per 1-CPU node
        batch_size=1, guard_dir=None, mlflow=False, metrics=str(tmp / "evaluate.json"),
        report=str(tmp / "evaluate.html"), plot=str(tmp / "evaluate_diffs.csv"))
    (tmp / "params-eval.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = subprocess.run([str(BIN / "llmops"), "run", "evaluate", "--params", str(tmp / "params-eval.yaml")],
                         env=two_node_ray["env"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-4000:])
    metrics = json.loads((tmp / "evaluate.json").read_text())
    assert metrics["ray"]["actors"] == 2 and metrics["ray"]["nodes"] == 2  # each node's actor ran blocks
    assert metrics["n_examples"] == {"perplexity": 2, "generation": 2}
    # B = 0: the adapter scores exactly as the base, across nodes
    assert metrics["delta"]["perplexity.perplexity"] == pytest.approx(0.0, abs=1e-4)
