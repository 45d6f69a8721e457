"""The Level-2 loop on real processes: data drift triggers retraining on a real Airflow scheduler.

In the reproduced e2e workspace (tests/e2e_support.py) this starts the serving API on the current champion and
`llmops airflow up` (scheduler, dag-processor, triggerer, API server on loopback, temporary AIRFLOW_HOME), then
drops batches into the landing inbox exactly as a producer would (data files, then the `_READY` flag) and follows
what happens through Airflow's REST API, with bounded waits:

1. a same-distribution batch with a corrupt file beside it: the corrupt file is refused into rejects with its
   reason and named in the approval; the rest is approved, landed, monitored: no drift, no retrain;
2. a drifted batch (a topic shift): approved through the REST API, landed, monitor reports drift, the lifecycle
   retrains (evaluate, audit and gate run), the promotion is approved through the REST API, promote moves the
   alias, and the running server answers with the new version;
3. a second drifted batch inside the cooldown: drift again, but the retrain policy skips the lifecycle;
4. the Airflow UI in headless Chromium renders the lifecycle run's graph and the LLMOps plugin view;
5. `llmops airflow down` leaves no process behind (checked when the session's `airflow_loop` fixture stops).
"""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from e2e_support import mark

# The first test carries the workspace's reproduction and Airflow's start-up.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

DATA = Path(__file__).resolve().parents[1] / "data" / "sample" / "landing"  # the shipped drifted batches


def _drop(ws: Path, source: str, rows: list[dict], manifest: dict, *, name: str = "batch.jsonl",
          raw: bytes | None = None) -> None:
    folder = ws / "data" / "landing" / source
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "source.yaml").write_text(yaml.safe_dump(manifest))
    data = raw if raw is not None else "".join(json.dumps(r) + "\n" for r in rows).encode()
    (folder / name).write_bytes(data)
    (ws / "data" / "landing" / "_READY").write_text("")  # last: the watcher fires on it


T0_MANIFEST = {"kind": "instruction", "format": "jsonl", "licence": "Apache-2.0", "pii": "redact",
               "fields": {"prompt": "prompt", "response": "completion"}}
XQUAD_MANIFEST = {"kind": "document", "format": "jsonl", "licence": "CC-BY-SA-4.0", "pii": "redact",
                  "fields": {"text": "text", "title": "title", "id": "id"}}
GPTEACHER_MANIFEST = {"kind": "instruction", "format": "json", "licence": "MIT", "pii": "redact",
                      "fields": {"prompt": ["instruction", "input"], "response": "response"}}


@pytest.fixture
def loop(airflow_loop):
    """The session's server + Airflow (tests/conftest.py `airflow_loop`), shared with tests/test_e2e_rollout.py."""
    return airflow_loop


def _champion(ws: Path) -> int | None:
    from pipelines.models.registry import RegistryConfig, find_champion

    params = yaml.safe_load((ws / "params.yaml").read_text())
    old = os.environ.get("LLMOPS_ROOT")
    os.environ["LLMOPS_ROOT"] = str(ws)
    try:
        info = find_champion(RegistryConfig(**params["registry"])).info
    finally:
        os.environ.pop("LLMOPS_ROOT") if old is None else os.environ.__setitem__("LLMOPS_ROOT", old)
    return info["version"] if info else None


def test_airflow_up_is_loopback_and_fitted_to_the_machine(loop):
    listening = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True).stdout
    port = loop["api"].base.rsplit(":", 1)[1]
    lines = [line for line in listening.splitlines() if f":{port} " in line]
    assert lines and all("127.0.0.1:" in line for line in lines), lines
    env = loop["env"]
    from pipelines.orchestration.airflow_services import AirflowConfig, airflow_env

    params = yaml.safe_load((loop["ws"] / "params.yaml").read_text())
    settings = airflow_env(AirflowConfig(**params["airflow"]), loop["ws"])
    assert int(settings["AIRFLOW__CORE__PARALLELISM"]) == (os.cpu_count() or 2)
    assert env["AIRFLOW_HOME"] == str(loop["home"])
    # the running dag-processor got the session's parse interval (airflow.dag_reparse_s)
    from pipelines.orchestration.airflow_services import STATE_FILE

    services = {s["name"]: s["pid"] for s in json.loads((loop["home"] / STATE_FILE).read_text())}
    environ = Path(f"/proc/{services['dag-processor']}/environ").read_bytes().split(b"\0")
    assert f"AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL={params['airflow']['dag_reparse_s']}".encode() in environ


def test_same_distribution_batch_lands_without_retrain_and_a_corrupt_file_beside_it_is_refused(loop):
    ws, api, seen = loop["ws"], loop["api"], loop["seen"]
    # A seeded sample of the shipped sources' held-out rows, in the proportions the workspace trained on (it took
    # the first 60 role-play and code rows and the paragraphs of the first 8 XQuAD articles). A random sample, not
    # the next rows: the files are ordered, and rows 60-100 alone are a shifted subpopulation the detector flags.
    shipped = Path(__file__).resolve().parents[1] / "data" / "sample"
    rng = random.Random(1)
    rows = rng.sample(json.loads((shipped / "raw" / "gpteacher_roleplay.json").read_text())[60:], 40)
    rows += rng.sample(json.loads((shipped / "raw" / "gpteacher_codegen.json").read_text())[60:], 40)
    titles = [a["title"] for a in json.loads((shipped / "rag" / "xquad.en.json").read_text())["data"]][8:]
    paragraphs = [json.loads(line) for line in (shipped / "raw" / "xquad_en_paragraphs.jsonl").read_text().splitlines()
                  if line.strip()]
    paragraphs = [p for p in paragraphs if p["title"] in titles][:26]
    inbox = ws / "data" / "landing"
    for source, manifest, name, payload in (
            ("gpteacher_more", GPTEACHER_MANIFEST, "batch.json", json.dumps(rows)),
            ("xquad_more", XQUAD_MANIFEST, "batch.jsonl", "".join(json.dumps(p) + "\n" for p in paragraphs))):
        (inbox / source).mkdir(parents=True, exist_ok=True)
        (inbox / source / "source.yaml").write_text(yaml.safe_dump(manifest))
        (inbox / source / name).write_text(payload)
    # In the same drop, a producer's broken file: refused into rejects with its reason, while the rest lands.
    (inbox / "broken_feed").mkdir(parents=True, exist_ok=True)
    (inbox / "broken_feed" / "source.yaml").write_text(yaml.safe_dump(T0_MANIFEST))
    (inbox / "broken_feed" / "batch.jsonl").write_bytes(b"\x00\xff\xfe binary \x00" * 50)
    (inbox / "_READY").write_text("")
    mark("same-distribution drop written, with a corrupt file beside it")
    run_id = api.new_run("llmops_ingest", seen["llmops_ingest"], timeout=90)
    mark("watcher fired (ingest run)")
    detail = api.approve("llmops_ingest", run_id, "approve_new_sources", timeout=180)
    assert "licence: **MIT**" in detail["body"] and "broken_feed/batch.jsonl" in detail["body"], detail["body"]
    mark("new source approved through the REST API (the approval lists the refused file)")
    assert api.finished("llmops_ingest", run_id, timeout=180) == "success"
    assert api.tasks("llmops_ingest", run_id)["land_batches"] == "success"
    rejected = list((ws / "data" / "rejects" / "landing").rglob("reason.json"))
    assert rejected and any("not UTF-8" in r.read_text() for r in rejected)
    assert not (ws / "data" / "landing" / "broken_feed" / "batch.jsonl").exists()
    assert not (ws / "data" / "landed" / "broken_feed").exists()
    mark("corrupt file in rejects, not landed")
    monitor = api.new_run("llmops_monitor", seen["llmops_monitor"], timeout=120)
    assert api.finished("llmops_monitor", monitor, timeout=300) == "success"
    tasks = api.tasks("llmops_monitor", monitor)
    assert tasks["data_drift"] == "success" and tasks["emit_drift"] == "skipped", tasks
    mark("monitor: no drift")
    time.sleep(10)  # the asset-triggered lifecycle would have been created within a scheduler loop or two
    assert [r for r in api.runs("llmops_lifecycle") if r["dag_run_id"] not in seen["llmops_lifecycle"]] == []
    mark("no retrain")


def test_drifted_batch_retrains_and_the_server_answers_with_the_new_champion(loop):
    ws, api, seen = loop["ws"], loop["api"], loop["seen"]
    before = _champion(ws)
    assert before is not None, "the workspace has a champion before the loop"
    health = httpx.get(f"{loop['serve']}/health", timeout=10).json()
    assert int(health["version"]) == before
    rows = [json.loads(line) for line in (DATA / "reviews_batch.jsonl").read_text().splitlines()]
    _drop(ws, "t0_reviews", rows, T0_MANIFEST)
    mark("drifted drop written (reviews: topic shift)")
    run_id = api.new_run("llmops_ingest", seen["llmops_ingest"], timeout=90)
    mark("1. watcher fired")
    api.approve("llmops_ingest", run_id, "approve_new_sources", timeout=180)
    assert api.finished("llmops_ingest", run_id, timeout=180) == "success"
    mark("2. ingest DAG landed the batch")
    monitor = api.new_run("llmops_monitor", seen["llmops_monitor"], timeout=120)
    assert api.finished("llmops_monitor", monitor, timeout=300) == "success"
    assert api.tasks("llmops_monitor", monitor)["emit_drift"] == "success"
    mark("3. monitor reported drift")
    lifecycle = api.new_run("llmops_lifecycle", seen["llmops_lifecycle"], timeout=120)
    mark("4. lifecycle triggered (landed & drift)")
    api.approve("llmops_lifecycle", lifecycle, "approve_promotion", timeout=1500)
    tasks = api.tasks("llmops_lifecycle", lifecycle)
    for stage in ("retrain_policy", "ingest", "finetune", "evaluate", "audit", "gate"):
        assert tasks[stage] == "success", (stage, tasks)
    mark("5. retrained; evaluate, audit and gate ran; promotion approved through the REST API")
    assert api.finished("llmops_lifecycle", lifecycle, timeout=600) == "success", api.tasks("llmops_lifecycle",
                                                                                             lifecycle)
    after = _champion(ws)
    assert after is not None and after > before
    mark(f"6. promote moved the alias: version {before} -> {after}")
    health = httpx.get(f"{loop['serve']}/health", timeout=10).json()
    assert int(health["version"]) == after
    reply = httpx.post(f"{loop['serve']}/v1/chat/completions", timeout=120, json={
        "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8}).json()
    assert reply["system_fingerprint"].endswith(f":{after}"), reply
    import pyarrow.dataset as ds

    landed = {r["source"] for r in ds.dataset(str(ws / "data" / "curated" / "corpus")).to_table(
        columns=["source"]).to_pylist()}
    assert {"t0_reviews", "gpteacher_more", "xquad_more"} <= landed
    mark("7. the running server answers with the new version")

    # Lineage: OpenLineage events of this lifecycle run, raw data in, model out, deployment last.
    events = [json.loads(line) for line in (loop["home"] / "openlineage" / "events.jsonl").read_text().splitlines()]
    done = {e["job"]["name"]: e for e in events if e.get("eventType") == "COMPLETE"}
    ingest_inputs = {d["name"] for d in done["llmops_lifecycle.ingest"].get("inputs", [])}
    finetune_outputs = {d["name"] for d in done["llmops_lifecycle.finetune"].get("outputs", [])}
    assert any(name.endswith("data/landed") for name in ingest_inputs), ingest_inputs
    assert any(name.endswith("models/candidate") for name in finetune_outputs), finetune_outputs
    assert "llmops_lifecycle.deploy" in done
    card = (ws / "reports" / "model_card.md").read_text()
    assert f"version **{after}**" in card and "t0_reviews" in card and "data/landed" in card
    mark("lineage: OpenLineage events from landed data to the deployed model; model card written")


def test_second_drift_inside_the_cooldown_does_not_retrain(loop):
    ws, api, seen = loop["ws"], loop["api"], loop["seen"]
    champion = _champion(ws)
    rows = [json.loads(line) for line in (DATA / "news_batch.jsonl").read_text().splitlines()]
    _drop(ws, "t0_news", rows, T0_MANIFEST)
    mark("second drifted drop (news) inside the cooldown")
    run_id = api.new_run("llmops_ingest", seen["llmops_ingest"], timeout=90)
    api.approve("llmops_ingest", run_id, "approve_new_sources", timeout=180)
    assert api.finished("llmops_ingest", run_id, timeout=180) == "success"
    monitor = api.new_run("llmops_monitor", seen["llmops_monitor"], timeout=120)
    assert api.finished("llmops_monitor", monitor, timeout=300) == "success"
    assert api.tasks("llmops_monitor", monitor)["emit_drift"] == "success"
    lifecycle = api.new_run("llmops_lifecycle", seen["llmops_lifecycle"], timeout=120)
    assert api.finished("llmops_lifecycle", lifecycle, timeout=300) == "success"
    tasks = api.tasks("llmops_lifecycle", lifecycle)
    assert tasks["retrain_policy"] == "success" and tasks["ingest"] == "skipped" and tasks["promote"] == "skipped"
    assert _champion(ws) == champion
    mark("drift inside the cooldown: lifecycle skipped by the retrain policy (one retrain)")


def test_ui_renders_the_lifecycle_graph_and_the_plugin_view(loop, tmp_path):
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    assert Path(chromium).exists(), "Debian's chromium is installed by `make test` (see Makefile: browser)"
    from playwright.sync_api import sync_playwright

    api = loop["api"]
    lifecycle = next(r["dag_run_id"] for r in api.runs("llmops_lifecycle") if r["state"] == "success")
    shots = loop["home"] / "screenshots"
    shots.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        context.add_cookies([{"name": "_token", "value": api.token, "url": api.base}])
        page = context.new_page()
        page.goto(f"{api.base}/dags/llmops_lifecycle/runs/{lifecycle}?tab=graph", wait_until="networkidle")
        page.get_by_text("finetune", exact=True).first.wait_for(timeout=60_000)
        assert page.get_by_text("approve_promotion").count() >= 1
        page.screenshot(path=str(shots / "lifecycle_graph.png"))
        page.goto(f"{api.base}/llmops/", wait_until="networkidle")
        assert page.locator("#aliases .version").first.inner_text().strip() == str(_champion(loop["ws"]))
        assert "promote" in page.locator("#gate").inner_text()
        page.screenshot(path=str(shots / "plugin_status.png"), full_page=True)
        page.goto(f"{api.base}/plugin/llmops", wait_until="networkidle")
        frame = page.frame_locator("iframe").first
        frame.locator("#aliases").wait_for(timeout=60_000)
        page.screenshot(path=str(shots / "plugin_in_airflow_ui.png"))
        browser.close()
    mark("UI: graph and plugin view rendered in headless Chromium")
