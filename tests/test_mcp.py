"""`llmops mcp` driven with the official MCP client (ClientSession) over stdio and over streamable HTTP, against a
demo workspace built with the platform's own writers (gate and promote stages into an MLflow SQLite registry, two
versions), with the figures checked against the `llmops` commands and the files the stages wrote."""
from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anyio
import pytest
import yaml
from typer.testing import CliRunner

from pipelines.io import write_json

VENV_BIN = Path(sys.executable).parent
ADMIN, READER, SERVING_ONLY = "sk-mcp-admin", "sk-mcp-reader", "sk-serving-only"
TASKS = {  # task.metric -> (better, v1 value, v2 value); the gate's versus_reference metrics and a few more
    "perplexity.perplexity": ("lower", 4.4, 4.2), "generation.rouge_l": ("higher", 0.34, 0.41),
    "qa.f1": ("higher", 0.2, 0.27), "rag.f1": ("higher", 0.06, 0.07), "mc_harmless.acc_norm": ("higher", 0.44, 0.44),
    "bias.refusal_gap": ("lower", 0.0, 0.1), "toxicity.toxicity": ("lower", 0.12, 0.11),
}


def _evaluate(sha: str, cand_dir: Path, version: int, reference: dict) -> dict:
    """evaluate.json as the stage writes it: per-task metrics of candidate and reference, paired intervals."""
    cand, base, comparisons = {}, {}, {}
    for name, (better, v1, v2) in TASKS.items():
        c = v1 if version == 1 else v2  # a later version scores as v2 does
        r = v1 * (1.1 if better == "lower" else 0.9) if reference["kind"] == "base" else (v1 if version == 2 else v2)
        cand[name], base[name] = c, round(r, 6)
        d = round(c - r, 6)
        comparisons[name] = {"better": better, "candidate": c, "reference": round(r, 6), "diff": d,
                             "ci_low": round(d - 0.02, 6), "ci_high": round(d + 0.02, 6), "confidence": 0.95, "n": 16}
    cand.update(perplexity=cand["perplexity.perplexity"], rouge_l=cand["generation.rouge_l"])
    base.update(perplexity=base["perplexity.perplexity"], rouge_l=base["generation.rouge_l"])
    return {"candidate": cand, "base": base, "comparisons": comparisons, "candidate_sha256": sha,
            "candidate_dir": str(cand_dir), "reference_model": reference,
            "n_examples": {k.split(".")[0]: 16 for k in TASKS}, "bootstrap": {"samples": 1000, "seed": 42,
                                                                               "confidence": 0.95},
            "resources": {"wall_seconds": 30.0 + version, "cpu_seconds": 50.0, "gpu_seconds": 0.0,
                          "cost_usd": 0.0006, "peak_rss_mb": 900.0}}


def _audit(sha: str) -> dict:
    return {"n": 51, "attack_success_rate": 0.3, "refusal_rate": 0.1, "candidate_sha256": sha,
            "per_category": {"jailbreak": {"n": 20, "attack_success_rate": 0.3, "refusal_rate": 0.0}},
            "attack_success_rate_guarded": 0.1, "canary_extraction_rate": 0.0, "pii_leak_rate": 0.0}


DVC_LOCK = {"schema": "2.0", "stages": {
    "ingest": {"cmd": "llmops run ingest",
               "deps": [{"path": "data/sample/raw", "md5": "a1" * 16 + ".dir"},
                        {"path": "pipelines/data/clean.py", "md5": "c0" * 16}],
               "params": {"params.yaml": {"ingest": {"landed_dir": "data/landed", "sources": [
                   {"name": "gpteacher_roleplay", "kind": "instruction", "licence": "MIT", "pii": "redact",
                    "path": "data/sample/raw/gpteacher_roleplay.json"},
                   {"name": "xquad_en", "kind": "document", "licence": "CC-BY-SA-4.0", "pii": {"default": "redact"},
                    "path": "data/sample/raw/xquad_en_paragraphs.jsonl"}]}}},
               "outs": [{"path": "data/interim/ingested", "md5": "b2" * 16 + ".dir"}]},
    "dedup": {"cmd": "llmops run dedup", "deps": [{"path": "data/interim/ingested", "md5": "b2" * 16 + ".dir"}],
              "outs": [{"path": "data/curated/corpus", "md5": "d3" * 16 + ".dir"}]},
    "finetune": {"cmd": "llmops run finetune", "deps": [{"path": "data/splits", "md5": "e4" * 16 + ".dir"}],
                 "outs": [{"path": "models/candidate", "md5": "f5" * 16 + ".dir"}]},
}}


def _gate_and_promote(ws: Path, params: dict, registry, cand: Path, version: int, base_model_dir="models/base"):
    """evaluate/audit metrics of `cand` (against the base, or champion version - 1), then the real gate and promote
    stages; returns the adapter hash."""
    from pipelines.models.lm import dir_sha256
    from pipelines.stages import gate, promote
    from pipelines.stages.registry import stage_config

    sha = dir_sha256(cand)
    ref = {"kind": "base", "version": None} if version == 1 else {"kind": "champion", "version": version - 1}
    write_json(ws / "metrics" / "evaluate.json", _evaluate(sha, cand, version, ref))
    write_json(ws / "metrics" / "audit.json", _audit(sha))
    gate.run(stage_config("gate", params, evaluate_metrics=str(ws / "metrics/evaluate.json"),
                          audit_metrics=str(ws / "metrics/audit.json"),
                          decision=str(ws / "reports/gate_decision.json")), registry)
    report = promote.run(stage_config("promote", params, decision=str(ws / "reports/gate_decision.json"),
                                      evaluate_metrics=str(ws / "metrics/evaluate.json"),
                                      audit_metrics=str(ws / "metrics/audit.json"), candidate_dir=str(cand),
                                      base_model_dir=str(base_model_dir), record=str(ws / "reports/promotion.json"),
                                      model_card=str(ws / "reports/model_card.md")), registry)
    assert report["action"] == "promoted" and report["version"] == version, report
    return sha


def _build_workspace(ws: Path, repo_root: Path) -> dict:
    """params.yaml (the repository's, registry and Airflow home inside `ws`), two candidates gated and promoted by
    the real stages (v1 against the base, v2 against champion v1), drift reports of two monitor runs, a dvc.lock,
    OpenLineage events, cost figures, a tiny RAG index and a running canary rollout."""
    from pipelines.rollout.state import RolloutStore, Step, new_rollout
    from pipelines.stages.registry import shared_config

    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["registry"].update(tracking_uri="sqlite:///mlruns.db", artifact_root="mlartifacts")
    params["airflow"].update(home=".airflow", lineage_file=None)
    params["serve"]["rag"]["index_dir"] = "data/embeddings"
    params["mcp"].update(airflow_url=None, serve_url=None)
    params.setdefault("rollout", {})["state_path"] = "state/rollout.json"
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    registry = shared_config("registry", params, tracking_uri=f"sqlite:///{ws}/mlruns.db",
                             artifact_root=str(ws / "mlartifacts"))
    shas = {}
    for version in (1, 2):
        cand = ws / "models" / f"candidate{version}"
        cand.mkdir(parents=True)
        (cand / "adapter_config.json").write_text(json.dumps({"r": 8, "peft_type": "LORA"}))
        (cand / "training_meta.json").write_text(json.dumps({"steps": version, "lr": 5e-4}))
        shas[version] = _gate_and_promote(ws, params, registry, cand, version)
    (ws / "dvc.lock").write_text(yaml.safe_dump(DVC_LOCK, sort_keys=False))
    events = ws / ".airflow" / "openlineage" / "events.jsonl"
    events.parent.mkdir(parents=True)
    events.write_text("".join(json.dumps({
        "eventType": state, "eventTime": f"2026-12-07T10:0{i}:00Z", "run": {"runId": f"run-{job}"},
        "job": {"namespace": "llmops", "name": f"llmops_lifecycle.{job}"},
        "inputs": [{"namespace": "file", "name": f"/ws/{inp}"}], "outputs": [{"namespace": "file", "name": f"/ws/{out}"}],
    }) + "\n" for i, (job, state, inp, out) in enumerate([
        ("ingest", "START", "data/landed", "data/interim/ingested"),
        ("ingest", "COMPLETE", "data/landed", "data/interim/ingested"),
        ("finetune", "COMPLETE", "data/splits", "models/candidate"),
        ("other_dag_task", "COMPLETE", "x", "y")])))
    for run, drifted, triggered in (("scheduled__2026-12-07T09", False, []),
                                    ("asset_triggered__2026-12-07T10", True, ["oov", "topics"])):
        folder = ws / "reports" / "monitor" / run
        folder.mkdir(parents=True)
        write_json(folder / "data_drift.json", {
            "drifted": drifted, "status": "ok", "reason": None, "result": {"alpha": 0.02, "triggered": triggered},
            "summary": {"triggered": triggered, "n_current": 160, "n_reference": 673,
                        "p_values": {"oov": 1e-5 if drifted else 0.4, "topics": 0.001 if drifted else 0.6}}})
        write_json(folder / "prompt_drift.json", {"drifted": False, "status": "insufficient_data",
                                                  "reason": "12 < min_window 50"})
        write_json(folder / "online_eval.json", {"status": "ok", "alerts": []})
    for i, run in enumerate(("scheduled__2026-12-07T09", "asset_triggered__2026-12-07T10")):  # runs sort by mtime
        os.utime(ws / "reports" / "monitor" / run, (1_800_000_000 + i, 1_800_000_000 + i))
    write_json(ws / "metrics" / "drift.json", {"drifted": True, "status": "ok", "result": {"alpha": 0.02},
                                              "summary": {"triggered": ["oov"], "n_current": 160}})
    write_json(ws / "metrics" / "ingest.json", {"rows": 10, "resources": {
        "wall_seconds": 12.5, "cpu_seconds": 20.0, "gpu_seconds": 0.0, "cost_usd": 0.00022, "peak_rss_mb": 700.0}})
    from test_serve import tiny_index

    tiny_index(ws / "data" / "embeddings")
    store = RolloutStore(ws / "state" / "rollout.json")
    store.save(new_rollout("canary", 1, 2, [Step(0.1, 60, 10, 0), Step(0.5, 60, 10, 0)], "params"))
    return {"shas": shas, "registry": registry, "params": params}


@pytest.fixture(scope="module")
def demo(tmp_path_factory, repo_root):
    ws = tmp_path_factory.mktemp("mcp_workspace")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLMOPS_ROOT", str(ws))
        mp.delenv("AIRFLOW_HOME", raising=False)
        built = _build_workspace(ws, repo_root)
    keys = ws / "keys.json"
    from pipelines.serving.auth import sha256

    keys.write_text(json.dumps({"keys": [
        {"id": "ops-admin", "sha256": sha256(ADMIN), "admin": True},
        {"id": "agent-reader", "sha256": sha256(READER), "admin": False, "scopes": ["mcp"]},
        {"id": "chat-app", "sha256": sha256(SERVING_ONLY), "admin": False}]}))
    return {"ws": ws, "keys": keys, **built}


class Airflow(BaseHTTPRequestHandler):
    """A loopback stand-in for Airflow 3.3.2's REST API (token, hitlDetails, dagRuns) that records what it is sent;
    the real API server is exercised by the e2e loop, which costs minutes."""

    calls: list = []

    def _reply(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict:
        n = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(n)) if n else {}

    def do_POST(self):  # noqa: N802
        body = self._body()
        Airflow.calls.append(("POST", self.path, body, self.headers.get("Authorization")))
        if self.path == "/auth/token":
            ok = body == {"username": "admin", "password": "af-secret"}
            return self._reply(201 if ok else 401, {"access_token": "jwt-1"} if ok else {"detail": "bad"})
        if self.path == "/api/v2/dags/llmops_lifecycle/dagRuns":
            return self._reply(200, {"dag_run_id": "manual__2026-12-07T11:00:00+00:00", "state": "queued"})
        self._reply(404, {"detail": "not found"})

    def do_GET(self):  # noqa: N802
        Airflow.calls.append(("GET", self.path, None, self.headers.get("Authorization")))
        if self.path.startswith("/api/v2/dags/~/dagRuns/~/hitlDetails"):
            return self._reply(200, {"total_entries": 1, "hitl_details": [{
                "subject": "Promote v3?", "body": "gate: promote", "options": ["Approve", "Reject"],
                "created_at": "2026-12-07T10:59:00Z", "response_received": False,
                "task_instance": {"dag_id": "llmops_lifecycle", "dag_run_id": "asset_triggered__2026-12-07T10:58",
                                  "task_id": "approve_promotion", "map_index": -1}}]})
        self._reply(404, {"detail": "not found"})

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def airflow():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Airflow)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _set_mcp(ws: Path, **values) -> None:
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["mcp"].update(values)
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _text(result) -> str:
    assert not result.is_error, result.content
    return result.content[0].text


def _call(session, name, args=None):
    async def go():
        return json.loads(_text(await session.call_tool(name, args or {})))
    return go()


async def _exercise(session, demo, transport: str) -> dict:
    """List and call every tool, read every resource, get every prompt; returns what was seen."""
    from mcp import MCPError

    seen: dict = {}
    await session.initialize()
    tools = {t.name: t for t in (await session.list_tools()).tools}
    seen["tools"] = set(tools)
    assert tools["status"].annotations.read_only_hint and tools["rollback"].annotations.destructive_hint
    seen["status"] = await _call(session, "status")
    seen["compare"] = await _call(session, "compare_versions", {"a": 1, "b": 2})
    seen["explain2"] = await _call(session, "explain_gate", {"version": 2})
    seen["explain_latest"] = await _call(session, "explain_gate", {})
    seen["lineage"] = await _call(session, "lineage", {"version": 2})
    seen["lineage1"] = await _call(session, "lineage", {"version": 1})
    seen["drift"] = await _call(session, "drift_history")
    seen["search"] = await _call(session, "search_corpus", {"query": "Where is the Eiffel Tower?", "k": 2})
    seen["approvals"] = await _call(session, "pending_approvals")
    # errors name the problem, and the session goes on
    with pytest.raises(MCPError, match=r"unknown version 7 of model 'llmops-candidate': registered versions are 1, 2"):
        await session.call_tool("explain_gate", {"version": 7})
    with pytest.raises(MCPError, match="two different versions"):
        await session.call_tool("compare_versions", {"a": 2, "b": 2})
    bad = await session.call_tool("compare_versions", {"a": "one"})
    assert bad.is_error and "a\n" in bad.content[0].text and "b\n  Field required" in bad.content[0].text
    with pytest.raises(MCPError, match="unknown monitor run 'nope'"):
        await session.read_resource("llmops://drift/runs/nope")
    seen["status_again"] = await _call(session, "status")  # still serving
    # resources: every static one, and every template filled with each version / run / template
    resources = {str(r.uri): r for r in (await session.list_resources()).resources}
    seen["resources"] = {}
    for uri, r in resources.items():
        contents = (await session.read_resource(uri)).contents[0]
        seen["resources"][uri] = json.loads(contents.text) if r.mime_type == "application/json" else contents.text
    templates = {t.uri_template for t in (await session.list_resource_templates()).resource_templates}
    seen["templates"] = templates
    fills = {"version": ["1", "2"], "run": [r["run"] for r in seen["drift"]["runs"]],
             "name": [p["name"] for p in seen["resources"]["llmops://prompts"]]}
    for template in templates:
        var = template[template.index("{") + 1:template.index("}")]
        for value in fills[var]:
            uri = template.replace("{" + var + "}", value)
            text = (await session.read_resource(uri)).contents[0].text
            seen["resources"][uri] = text
    # prompts: every template, rendered as serving renders it
    prompts = (await session.list_prompts()).prompts
    seen["prompts"] = {}
    for p in prompts:
        args = {a.name: ("The Rhine flows to the North Sea.\n\nParis is in France." if a.name == "contexts"
                         else "Where does the Rhine flow?") for a in p.arguments}
        got = await session.get_prompt(p.name, args)
        seen["prompts"][p.name] = got.messages[0].content.text
    # acting tools
    seen["acting"] = {}
    for name, args in (("rollback", {}), ("abort_rollout", {"reason": "test"}), ("trigger_retrain", {"reason": "r"})):
        try:
            seen["acting"][name] = json.loads(_text(await session.call_tool(name, args)))
        except MCPError as exc:
            seen["acting"][name] = exc
    return seen


def _check_read_side(seen: dict, demo: dict, airflow_url: str) -> None:
    """Figures against the registry, the metrics files and the `llmops` commands."""
    from pipelines.cli import app

    ws = demo["ws"]
    assert seen["tools"] == {"status", "compare_versions", "explain_gate", "lineage", "drift_history",
                             "search_corpus", "ask", "pending_approvals", "trigger_retrain", "rollback",
                             "abort_rollout"}
    st = seen["status"]
    promotion = json.loads((ws / "reports/promotion.json").read_text())
    assert st["champion"] == promotion["version"] == 2 and st["versions"] == [1, 2]
    assert st["gate"]["decision"] == json.loads((ws / "reports/gate_decision.json").read_text())["decision"]
    assert st["drift"]["latest_run"] == "asset_triggered__2026-12-07T10" and st["drift"]["drifted"]
    assert st["rollout"]["rollout"]["challenger_version"] == "2" and st["rollout"]["challenger_share"] == 0.1
    # compare: recorded metrics as MLflow has them, v2's paired intervals against v1 as evaluate wrote them
    cmp = seen["compare"]
    evaluate = json.loads((ws / "metrics/evaluate.json").read_text())
    assert cmp["a"]["metrics"]["perplexity"] == 4.4 and cmp["b"]["metrics"]["perplexity"] == 4.2
    assert cmp["metric_diff_b_minus_a"]["rouge_l"] == pytest.approx(0.07)
    assert cmp["paired"]["candidate"] == 2 and cmp["paired"]["reference"] == 1
    assert cmp["paired"]["intervals"]["qa.f1"]["ci_low"] == evaluate["comparisons"]["qa.f1"]["ci_low"]
    assert cmp["a"]["evaluation"]["reference_model"]["kind"] == "base"
    # the gate: v2's recorded decision is the workspace's latest one
    decision = json.loads((ws / "reports/gate_decision.json").read_text())
    ex = seen["explain2"]
    assert ex["decision"] == "promote" and ex["champion"] == 1 and ex["version"] == 2
    assert len(ex["checks"]) == len(decision["reasons"]) and all(c["passed"] for c in ex["checks"])
    qa = next(c for c in ex["checks"] if c["metric"] == "qa.f1")
    assert qa["interval"] == [evaluate["comparisons"]["qa.f1"]["ci_low"], evaluate["comparisons"]["qa.f1"]["ci_high"]]
    assert "95% interval" in qa["explanation"]
    assert seen["explain_latest"]["checks"] == ex["checks"]
    # lineage: dvc.lock hashes, OpenLineage jobs of the lifecycle, raw sources with licences
    lin = seen["lineage"]
    assert lin["stages"]["ingest"]["outputs"] == [{"path": "data/interim/ingested", "md5": "b2" * 16 + ".dir"}]
    assert lin["lock_describes_version"] and lin["adapter_sha256"] == demo["shas"][2]
    assert {(s["name"], s["licence"]) for s in lin["raw_sources"]} == {("gpteacher_roleplay", "MIT"),
                                                                       ("xquad_en", "CC-BY-SA-4.0")}
    assert not seen["lineage1"]["lock_describes_version"] and "describes the latest promotion (v2)" in \
        seen["lineage1"]["note"]
    jobs = {j["job"]: j for j in lin["openlineage"]["jobs"]}
    assert set(jobs) == {"llmops_lifecycle.ingest", "llmops_lifecycle.finetune"}
    assert jobs["llmops_lifecycle.ingest"]["state"] == "COMPLETE"
    # drift
    runs = seen["drift"]["runs"]
    assert [r["run"] for r in runs] == ["scheduled__2026-12-07T09", "asset_triggered__2026-12-07T10"]
    assert runs[1]["windows"][0]["triggered"] == ["oov", "topics"] and runs[1]["windows"][0]["p_values"]["oov"] == 1e-5
    # search_corpus = llmops retrieve --json
    runner = CliRunner()
    out = runner.invoke(app, ["retrieve", "Where is the Eiffel Tower?", "-k", "2", "--json", "--index-dir",
                              str(ws / "data/embeddings")])
    assert out.exit_code == 0, out.output
    cli_hits = json.loads(out.stdout)
    assert [h["chunk_id"] for h in seen["search"]["hits"]] == [h["chunk_id"] for h in cli_hits]
    assert cli_hits[0]["chunk_id"] == "d0#0"  # the Eiffel Tower document
    assert seen["search"]["hits"][0]["score"] == round(cli_hits[0]["score"], 4)
    # pending approvals, each with the URL a person answers it at
    ap = seen["approvals"]["pending"][0]
    assert ap["url"] == (f"{airflow_url}/dags/llmops_lifecycle/runs/asset_triggered__2026-12-07T10%3A58/tasks/"
                         "approve_promotion/required_actions")
    assert ("GET", "/api/v2/dags/~/dagRuns/~/hitlDetails?response_received=false&limit=100", None, "Bearer jwt-1") \
        in Airflow.calls
    # resources
    res = seen["resources"]
    assert res["llmops://gate/decision"] == decision
    assert res["llmops://evaluation/report"]["tasks"]["qa"]["f1"]["ci_high"] == evaluate["comparisons"]["qa.f1"]["ci_high"]
    out = runner.invoke(app, ["cost", "--json", "--root", str(ws)])
    assert out.exit_code == 0, out.output
    assert res["llmops://cost"] == json.loads(out.stdout)
    ingest = next(s for s in res["llmops://cost"]["stages"] if s["stage"] == "ingest")
    assert ingest["by_rev"][0]["wall_seconds"] == 12.5
    card_file = ws / "card.json"
    out = runner.invoke(app, ["maturity", "--root", str(ws), "--json", str(card_file)])
    assert out.exit_code == 0, out.output
    assert res["llmops://maturity"] == json.loads(card_file.read_text())
    assert res["llmops://registry/versions"]["aliases"] == {"champion": 2}
    assert res["llmops://rollout/status"]["rollout"]["status"] == "running"
    assert res["llmops://versions/2/card"] == (ws / "reports/model_card.md").read_text()
    assert "version **1**" in res["llmops://versions/1/card"]
    assert json.loads(res["llmops://versions/1/evaluation"])["reference_model"]["kind"] == "base"
    assert json.loads(res["llmops://versions/1/gate"])["champion"] is None
    assert json.loads(res["llmops://drift/runs/asset_triggered__2026-12-07T10"])["windows"][0]["drifted"]
    from pipelines.models.registry import PROMPTS_DIR

    assert res["llmops://prompts/rag_v1"] == (PROMPTS_DIR / "rag_v1.j2").read_text()
    rendered = seen["prompts"]["rag_v1"]
    assert "[1] The Rhine flows to the North Sea." in rendered and "[2] Paris is in France." in rendered
    assert "Question: Where does the Rhine flow?" in rendered


def test_stdio_read_side_and_refusals(demo, airflow):
    """A desktop client's view: `llmops mcp` started over stdio in the workspace; every tool, resource, prompt."""
    from mcp import ClientSession, MCPError, StdioServerParameters, stdio_client

    ws = demo["ws"]
    _set_mcp(ws, airflow_url=airflow, acting_tools=False)
    home = ws / ".airflow"
    (home / "simple_auth_manager_passwords.json.generated").write_text(json.dumps({"admin": "af-secret"}))
    env = {"LLMOPS_ROOT": str(ws), "AIRFLOW_HOME": str(home), "PATH": os.environ.get("PATH", ""),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    params = StdioServerParameters(command=str(VENV_BIN / "llmops"), args=["mcp"], cwd=str(ws), env=env)

    async def main():
        errlog = open(ws / "stdio.err", "w")
        try:
            async with stdio_client(params, errlog=errlog) as (r, w):
                async with ClientSession(r, w) as session:
                    return await _exercise(session, demo, "stdio")
        finally:
            errlog.close()

    seen = anyio.run(main)
    _check_read_side(seen, demo, airflow)
    for name in ("rollback", "abort_rollout", "trigger_retrain"):  # acting tools are off in params.yaml
        assert isinstance(seen["acting"][name], MCPError), seen["acting"][name]
        assert "acting tools are off (mcp.acting_tools: false" in str(seen["acting"][name])
    audit = [json.loads(x) for x in (ws / "logs/mcp_actions.jsonl").read_text().splitlines()]
    assert [(a["tool"], a["outcome"]) for a in audit[-3:]] == [
        ("rollback", "refused"), ("abort_rollout", "refused"), ("trigger_retrain", "refused")]
    assert all(a["caller"].startswith("stdio:") for a in audit[-3:])


class _Uvicorn:
    """`make_app(base_url)` on uvicorn in a thread, on a loopback socket bound first (port 0: a free one)."""

    def __init__(self, make_app):
        import socket

        import uvicorn

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(make_app(self.base), log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.time() + 60
        while not self.server.started:
            assert time.time() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.05)
        self.url = self.base + "/mcp"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(30)


async def _session_run(url: str, key: str | None, fn):
    import httpx2
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx2.AsyncClient(headers=headers, timeout=60) as http:
        async with streamable_http_client(url, http_client=http) as streams:
            async with ClientSession(streams[0], streams[1]) as session:
                await session.initialize()
                return await fn(session)


def test_http_auth_scopes_and_acting_tools(demo, airflow, monkeypatch):
    """Streamable HTTP on loopback with the platform's API keys: scopes, admin-only acting tools, the audit log."""
    import httpx
    from mcp import MCPError

    from pipelines.mcp_server.server import http_app, load_config
    from pipelines.platform_api import Workspace
    from pipelines.serving.auth import KeyStore

    ws = demo["ws"]
    _set_mcp(ws, airflow_url=airflow)
    home = ws / ".airflow"
    (home / "simple_auth_manager_passwords.json.generated").write_text(json.dumps({"admin": "af-secret"}))
    monkeypatch.setenv("AIRFLOW_HOME", str(home))  # `make test` exports the repository's own AIRFLOW_HOME
    keys = KeyStore.from_env({"LLMOPS_API_KEYS_FILE": str(demo["keys"])})
    workspace = Workspace.load(ws)
    cfg = load_config(workspace)
    enabled = _Uvicorn(lambda base: http_app(workspace, cfg.model_copy(update={"acting_tools": True}), keys,
                                             base_url=base))
    disabled = _Uvicorn(lambda base: http_app(workspace, cfg, keys, base_url=base))
    try:
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
        assert httpx.post(enabled.url, json=init).status_code == 401  # no key
        assert httpx.post(enabled.url, json=init, headers={"Authorization": "Bearer wrong"}).status_code == 401
        denied = httpx.post(enabled.url, json=init, headers={"Authorization": f"Bearer {SERVING_ONLY}"})
        assert denied.status_code == 403 and "lacks the 'mcp' scope" in denied.text

        async def reader(session):
            status = await _call(session, "status")
            refused = {}
            for name, args in (("rollback", {}), ("trigger_retrain", {"reason": "x"})):
                with pytest.raises(MCPError, match=f"{name} needs an admin API key; the key 'agent-reader'") as e:
                    await session.call_tool(name, args)
                refused[name] = str(e.value)
            return status, refused

        status, refused = anyio.run(_session_run, enabled.url, READER, reader)
        assert status["champion"] == 2

        async def admin_disabled(session):
            with pytest.raises(MCPError, match="acting tools are off"):
                await session.call_tool("rollback", {})
            return True

        assert anyio.run(_session_run, disabled.url, ADMIN, admin_disabled)

        async def admin(session):
            out = {"abort": await _call(session, "abort_rollout", {"reason": "latency regression"})}
            with pytest.raises(MCPError, match="is aborted, not running: nothing to abort"):
                await session.call_tool("abort_rollout", {"reason": "again"})
            with pytest.raises(MCPError, match="unknown version 9"):
                await session.call_tool("rollback", {"to": 9})
            out["rollback"] = await _call(session, "rollback", {})
            out["retrain"] = await _call(session, "trigger_retrain", {"reason": "drift on oov"})
            out["status"] = await _call(session, "status")
            return out

        out = anyio.run(_session_run, enabled.url, ADMIN, admin)
    finally:
        enabled.stop()
        disabled.stop()
    assert out["abort"]["status"] == "aborted" and out["status"]["rollout"]["rollout"]["status"] == "aborted"
    assert out["rollback"] == {"model_name": "llmops-candidate", "alias": "champion", "version": 1,
                               "previous_version": 2, "by": "ops-admin"}
    assert out["status"]["champion"] == 1
    runner = CliRunner()
    from pipelines.cli import app

    assert out["retrain"]["run_id"] == "manual__2026-12-07T11:00:00+00:00"
    post = next(c for c in Airflow.calls if c[1] == "/api/v2/dags/llmops_lifecycle/dagRuns")
    assert post[2]["conf"] == {"reason": "drift on oov", "triggered_by": "ops-admin", "via": "mcp"}
    assert post[3] == "Bearer jwt-1"
    audit = [json.loads(x) for x in (ws / "logs/mcp_actions.jsonl").read_text().splitlines()]
    tail = [(a["tool"], a["caller"], a["outcome"]) for a in audit[-8:]]
    assert tail == [("rollback", "agent-reader", "refused"), ("trigger_retrain", "agent-reader", "refused"),
                    ("rollback", "ops-admin", "refused"), ("abort_rollout", "ops-admin", "done"),
                    ("abort_rollout", "ops-admin", "error"), ("rollback", "ops-admin", "error"),
                    ("rollback", "ops-admin", "done"), ("trigger_retrain", "ops-admin", "done")]
    # put the champion back for the other tests of the module
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLMOPS_ROOT", str(ws))
        assert runner.invoke(app, ["rollback", "--to", "2"]).exit_code == 0


def test_http_refuses_to_serve_unauthenticated_off_loopback(demo):
    from pipelines.mcp_server.server import http_app, load_config
    from pipelines.platform_api import PlatformError, Workspace
    from pipelines.serving.auth import KeyStore

    workspace = Workspace.load(demo["ws"])
    with pytest.raises(PlatformError, match="no API key is configured"):
        http_app(workspace, load_config(workspace), KeyStore([]), host="0.0.0.0")


def test_ask_goes_through_the_served_api_and_its_guard(demo, base_model_dir, tmp_path_factory):
    """`ask` against a real served champion (loopback uvicorn, the caller's key forwarded, the guard on)."""
    import httpx
    from mcp import MCPError

    from pipelines.mcp_server.server import http_app, load_config
    from pipelines.models.lm import make_smoke_adapter
    from pipelines.platform_api import Workspace
    from pipelines.serving.app import create_app
    from pipelines.serving.auth import KeyStore
    from test_serve import Server, serve_config

    adapter = tmp_path_factory.getbasetemp() / "smoke_candidate"
    if not (adapter / "adapter_config.json").exists():
        make_smoke_adapter(base_model_dir, adapter)
    ws, registry = demo["ws"], demo["registry"]
    shutil.copytree(adapter, ws / "models" / "candidate3")  # a real adapter: version 3 becomes the champion
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLMOPS_ROOT", str(ws))
        _gate_and_promote(ws, demo["params"], registry, ws / "models" / "candidate3", 3, base_model_dir)
    tmp = tmp_path_factory.mktemp("mcp_served")
    log = tmp / "requests.jsonl"
    cfg = serve_config(max_new_tokens=8, request_log=str(log), reload_poll_s=30.0,
                       guard={"enabled": True, "models_dir": str(tmp / "no_detectors"), "require_detectors": False,
                              "input": {"max_prompt_chars": 300}},  # the rule checks: a long prompt is refused
                       rag={"index_dir": str(demo["ws"] / "data/embeddings"), "top_k": 2, "template": "rag_v1.j2",
                            "max_context_tokens": 200})
    keys = KeyStore.from_env({"LLMOPS_API_KEYS_FILE": str(demo["keys"])})
    served = Server(create_app(cfg, registry, keys=keys))
    _set_mcp(ws, serve_url=served.url, ask_max_tokens=8)
    workspace = Workspace.load(ws)
    mcp_server = _Uvicorn(lambda base: http_app(workspace, load_config(workspace), keys, base_url=base))
    try:
        async def agent(session):
            out = {"status": await _call(session, "status"),
                   "plain": await _call(session, "ask", {"question": "What is the capital of France?"}),
                   "rag": await _call(session, "ask", {"question": "Where is the Eiffel Tower?", "rag": True}),
                   "long": await _call(session, "ask", {"question": "Tell me about rivers. " * 20})}
            with pytest.raises(MCPError, match="ask needs a non-empty question"):
                await session.call_tool("ask", {"question": "  "})
            return out

        out = anyio.run(_session_run, mcp_server.url, READER, agent)
        health = httpx.get(served.url + "/health").json()
        # A2A: the agent card is public; the endpoint needs a key with the mcp scope, and answers through serving
        card = httpx.get(mcp_server.base + "/.well-known/agent-card.json").json()
        denied = httpx.post(mcp_server.base + "/a2a", json={"jsonrpc": "2.0", "id": 1, "method": "SendMessage"})
        a2a_answer = anyio.run(_a2a_ask, mcp_server.base, READER, "Where is the Eiffel Tower?")
    finally:
        mcp_server.stop()
        served.stop()
    plain, rag, long = out["plain"], out["rag"], out["long"]
    assert plain["model_version"] == health["version"] == str(out["status"]["champion"]) == "3"
    assert plain["alias"] == "champion"
    assert plain["answer"] and not plain["refused_by_guard"] and plain["usage"]["completion_tokens"] <= 8
    assert rag["citations"] and rag["citations"][0]["doc_id"] == "d0"  # the Eiffel Tower document of the index
    assert long["refused_by_guard"] and long["guard"]["reason"] == "prompt_too_long"
    lines = {x["request_id"]: x for x in map(json.loads, log.read_text().splitlines())}
    assert lines[plain["request_id"]]["key_id"] == "agent-reader"  # the caller's own key reached serving
    assert card["name"] == "llmops-candidate RAG assistant" and card["version"] == "3"  # the served champion
    assert card["supportedInterfaces"][0]["url"] == mcp_server.base + "/a2a"
    assert card["skills"][0]["id"] == "rag_answer" and "bearer" in card["securitySchemes"]
    assert denied.status_code == 401
    assert "Sources: [1] d0" in a2a_answer and "(answered by version 3)" in a2a_answer
    assert sum(1 for x in lines.values() if x["key_id"] == "agent-reader") == 4  # plain, rag, refused, A2A


async def _a2a_ask(base: str, key: str, question: str) -> str:
    """The official A2A client: resolve the card, send one message, read the agent's text."""
    import httpx
    from a2a.client import ClientConfig, create_client
    from a2a.helpers.proto_helpers import get_message_text, new_text_message
    from a2a.types.a2a_pb2 import Role, SendMessageRequest

    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=120) as http:
        client = await create_client(base, client_config=ClientConfig(streaming=False, httpx_client=http))
        request = SendMessageRequest(message=new_text_message(question, role=Role.ROLE_USER))
        async for response in client.send_message(request):
            return get_message_text(response.message)
    raise AssertionError("no A2A response")


def test_no_rollout_recorded_is_an_answer_and_aborting_nothing_is_refused(demo, tmp_path):
    import copy

    from pipelines.platform_api import PlatformError, Workspace, act, read

    workspace = Workspace.load(demo["ws"])
    params = copy.deepcopy(workspace.params)
    params["rollout"]["state_path"] = str(tmp_path / "none.json")
    empty = Workspace(workspace.root, params)
    status = read.rollout_status(empty)
    assert status["rollout"] is None and status["message"].startswith("no rollout recorded")
    with pytest.raises(PlatformError, match="no rollout recorded: nothing to abort"):
        act.abort_rollout(empty, "x", "tester")
