"""Cost accounting: the stage meter (real processes: CPU of the driver and of its children, peak RSS of the tree),
run_stage writing `resources` into a stage's metrics file, the single price table, the request-log summary and
`llmops cost` comparing two git revisions."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from pipelines.config import load_params, parse_section
from pipelines.cost.meter import ResourceMeter
from pipelines.cost.prices import PriceTable
from pipelines.stages.registry import SHARED_SECTIONS

LLMOPS = str(Path(sys.executable).parent / "llmops")
PRICES = PriceTable(price_per_cpu_hour=3.6, price_per_gpu_hour=36.0)  # 1 USD per 1000 CPU-seconds
SPIN = "import time, sys\nt = time.process_time()\nwhile time.process_time() - t < float(sys.argv[1]): pass\n"
NO_GPU = not (Path("/dev/nvidiactl").exists() or Path("/proc/driver/nvidia").exists())


def _spin_here(seconds: float) -> None:
    t = time.process_time()
    while time.process_time() - t < seconds:
        pass


def test_meter_counts_a_reaped_child_once(tmp_path):
    """A child that burns 1.5 CPU-seconds and is waited for: sampled while it ran AND in RUSAGE_CHILDREN after;
    counted once (a double count would be ~2.5 s or more)."""
    with ResourceMeter() as m:
        subprocess.run([sys.executable, "-c", SPIN, "1.5"], check=True)
    u = m.usage
    print(f"\nreaped child: {u}")
    assert 1.4 <= u.cpu_seconds < 2.2, u
    assert u.processes >= 2 and u.wall_seconds >= 1.4


def test_meter_counts_a_grandchild_reaped_by_its_parent():
    """A grandchild (shell -> python) that exits before the end: it reaches this process through the child's
    RUSAGE_CHILDREN (the shell waited for it), or through the samples."""
    with ResourceMeter() as m:
        subprocess.run(["sh", "-c", f'"{sys.executable}" -c "$0" 1.0', SPIN], check=True)
    assert m.usage.cpu_seconds >= 0.9, m.usage


def test_meter_counts_a_child_still_running_at_the_end():
    """No RUSAGE_CHILDREN for a child that is still alive: only the samples see it."""
    child = subprocess.Popen([sys.executable, "-c", SPIN, "60"])
    try:
        time.sleep(0.3)  # started before the meter: only what it burns while metered counts
        with ResourceMeter() as m:
            time.sleep(1.6)
        u = m.usage
    finally:
        child.kill()
        child.wait()
    print(f"\nrunning child: {u}")
    # the child spins on one core for the 1.6 s (on a loaded box it gets less than a full core)
    assert 0.7 <= u.cpu_seconds <= 2.0, u


def test_meter_counts_the_driver_and_prices_it():
    with ResourceMeter() as m:
        _spin_here(1.0)
    res = m.resources(PRICES)
    print(f"\ndriver: {res}")
    assert 0.9 <= res["cpu_seconds"] < 1.5, res
    assert res["cost_usd"] == pytest.approx(res["cpu_seconds"] / 3600 * 3.6, rel=1e-3)  # = cpu_s / 1000 here
    assert res["price_per_cpu_hour"] == 3.6 and res["wall_seconds"] >= 0.9
    if NO_GPU:
        assert res["gpu_seconds"] == 0.0


def test_peak_rss_includes_a_child_allocating_200_mb():
    base = psutil.Process().memory_info().rss / 2**20
    code = "import time\nb = b'x' * (200 << 20)\ntime.sleep(1.5)\n"  # b'x' * n writes every page: resident
    with ResourceMeter() as m:
        subprocess.run([sys.executable, "-c", code], check=True)
    print(f"\npeak {m.usage.peak_rss_mb:.0f} MB, this process {base:.0f} MB")
    assert m.usage.peak_rss_mb - base >= 180, m.usage
    with ResourceMeter() as quiet:
        time.sleep(0.6)
    assert quiet.usage.peak_rss_mb < m.usage.peak_rss_mb - 150  # the peak is this run's, not the process's


def test_price_table_is_written_once(repo_root):
    """params.yaml `cost` is the only place a price is written; evaluate.cost and serve.cost are its aliases."""
    text = (repo_root / "params.yaml").read_text()
    assert text.count("price_per_cpu_hour:") == 1 and text.count("price_per_gpu_hour:") == 1
    params = load_params(repo_root / "params.yaml")
    prices = parse_section(params, *SHARED_SECTIONS["cost"])
    assert params["evaluate"]["cost"] == params["serve"]["cost"] == prices.model_dump()


def _tiny_corpus(path: Path, n: int = 40) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.schema import corpus_schema

    rows = [{"doc_id": f"{i:05d}", "source": "s", "licence": "MIT", "kind": "document", "text": f"text {i}",
             "prompt": None, "response": None, "title": None, "n_chars": 6} for i in range(n)]
    path.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=corpus_schema()), path / "part-0.parquet")


def test_run_stage_writes_resources_into_the_metrics_file(repo_root, tmp_path):
    """`llmops run split` (run_stage, as dvc repro and Airflow call it) on a 40-row corpus: the metrics file the stage
    wrote gets the resources block, the stage's own figures kept."""
    _tiny_corpus(tmp_path / "corpus")
    params = load_params(repo_root / "params.yaml")
    params["split"] = {**params["split"], "input_dir": str(tmp_path / "corpus"), "output_dir": str(tmp_path / "out"),
                       "metrics": str(tmp_path / "metrics" / "split.json")}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = subprocess.run([LLMOPS, "run", "split", "--params", str(tmp_path / "params.yaml")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    metrics = json.loads((tmp_path / "metrics" / "split.json").read_text())
    res = metrics["resources"]
    print(f"\nsplit resources: {res}")
    assert metrics["in"] == 40 and sum(metrics["splits"].values()) == 40  # the stage's own metrics are kept
    assert report["resources"] == res
    assert res["wall_seconds"] > 0 and res["cpu_seconds"] > 0 and res["peak_rss_mb"] > 50
    assert res["cost_usd"] == pytest.approx(res["cpu_seconds"] * params["cost"]["price_per_cpu_hour"] / 3600,
                                            rel=1e-2, abs=1e-9)
    if NO_GPU:
        assert res["gpu_seconds"] == 0.0
    assert not list((tmp_path / "metrics").glob(".*tmp*"))  # written through a temp file and renamed


# --------------------------------------------------------------------------------------------------- llmops cost

def _resources(wall: float, cpu: float, peak: float, **extra) -> dict:
    return {"wall_seconds": wall, "cpu_seconds": cpu, "peak_rss_mb": peak, "gpu_seconds": 0.0,
            "cost_usd": round(cpu * 0.04 / 3600, 8), "price_per_cpu_hour": 0.04, "price_per_gpu_hour": 0.0,
            "processes": 3, **extra}


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                   capture_output=True)


@pytest.fixture
def two_revisions(tmp_path):
    """A git repo with two commits of metrics files: A has no resources (before the meter) for split and figures
    for finetune; B has figures for both."""
    repo = tmp_path / "repo"
    (repo / "metrics").mkdir(parents=True)
    params = {"cost": {"price_per_cpu_hour": 0.04, "price_per_gpu_hour": 0.0},
              "split": {"metrics": "metrics/split.json"}, "finetune": {"metrics": "metrics/finetune.json"},
              "serve": {"request_log": "logs/requests.jsonl"}}
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    (repo / "metrics" / "split.json").write_text(json.dumps({"in": 40}))
    (repo / "metrics" / "finetune.json").write_text(json.dumps(
        {"steps": 4, "resources": _resources(100.0, 150.0, 2048.0, tokens=4000,
                                             cost_per_1k_tokens_usd=150 * 0.04 / 3600 / 4)}))
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "A")
    (repo / "metrics" / "split.json").write_text(json.dumps({"in": 40, "resources": _resources(2.5, 3.0, 300.0)}))
    (repo / "metrics" / "finetune.json").write_text(json.dumps(
        {"steps": 8, "resources": _resources(180.0, 270.0, 2560.0, tokens=8000)}))
    _git(repo, "commit", "-qam", "B")
    return repo


def _cost(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([LLMOPS, "cost", "--root", str(repo), *args], capture_output=True, text=True, timeout=120)


def test_llmops_cost_compares_two_revisions(two_revisions):
    proc = _cost(two_revisions, "--rev", "HEAD~1", "--rev", "HEAD")
    print("\n" + proc.stdout)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("revisions: A = HEAD~1 (") and "B = HEAD (" in lines[0]
    split = next(line.split() for line in lines if line.startswith("split "))
    finetune = next(line.split() for line in lines if line.startswith("finetune "))
    # wall A B diff | CPU A B diff | peak A B diff | GPU A B diff | cost A B diff
    assert split[1:4] == ["-", "2.5", "-"] and split[4:7] == ["-", "3.0", "-"]  # A predates the meter
    assert finetune[1:4] == ["100.0", "180.0", "+80.0"] and finetune[4:7] == ["150.0", "270.0", "+120.0"]
    assert finetune[7:10] == ["2048", "2560", "+512"]
    total = next(line.split() for line in lines if line.startswith("total "))
    assert total[1:4] == ["100.0", "182.5", "+82.5"]  # A: finetune only; B: both stages
    assert "totals over the stages with figures: A 1, B 2" in proc.stdout
    missing = next(line for line in lines if line.startswith("no resources recorded"))
    listed = missing.split(": ", 1)[1].split(", ")
    assert "ingest" in listed and "split" not in listed  # no metrics file: listed, not a row of dashes
    per_1k = next(line for line in lines if line.startswith("  finetune"))  # the cost per 1k tokens block
    assert f"{150 * 0.04 / 3600 / 4:.8f}" in per_1k and "4000 / 8000" in per_1k


def test_llmops_cost_json_workspace_and_request_log(two_revisions):
    repo = two_revisions
    log = repo / "logs" / "requests.jsonl"
    log.parent.mkdir()
    lines = [{"status": 200, "prompt_tokens": 10, "completion_tokens": 30, "cpu_s": 0.5, "cost_usd": 0.5 * 0.04 / 3600},
             {"status": 200, "prompt_tokens": 10, "completion_tokens": 50, "cpu_s": 1.0},  # priced from the table
             {"status": 200, "prompt_tokens": 5, "completion_tokens": 5}]  # written before cpu_s was logged
    log.write_text("".join(json.dumps(x) + "\n" for x in lines))
    proc = _cost(repo, "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["revisions"] == [{"rev": "workspace", "commit": None}]
    by_stage = {s["stage"]: s["by_rev"][0] for s in out["stages"]}
    assert by_stage["split"]["cpu_seconds"] == 3.0 and by_stage["ingest"] is None
    s = out["serving"]
    assert s["requests"] == 3 and s["metered_requests"] == 2 and s["tokens"] == 110
    assert s["cost_per_1k_tokens_usd"] == pytest.approx(1.5 * 0.04 / 3600 / 100 * 1000)
    text = _cost(repo).stdout
    assert "serving (" in text and "3 requests, 2 with CPU-seconds" in text


def test_llmops_cost_unknown_revision_fails_cleanly(two_revisions):
    proc = _cost(two_revisions, "--rev", "nosuchrev")
    assert proc.returncode == 2 and "unknown revision 'nosuchrev'" in proc.stderr and "Traceback" not in proc.stderr
