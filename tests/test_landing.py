"""The landing inbox (pipelines/data/landing.py) and the retrain policy, on files made here; one test ingests an
approved landed batch through Spark with the real ingest stage."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pyarrow.dataset as ds
import pytest
import yaml

from pipelines.data import landing
from pipelines.orchestration.monitor_run import build_data_window
from pipelines.orchestration.retrain_policy import RetrainConfig, decide
from pipelines.stages import ingest
from pipelines.stages.registry import stage_config

ROWS = [{"instruction": f"Explain topic number {i} in two sentences.", "input": "",
         "response": f"Topic {i} is explained here in plain words, with one example sentence."} for i in range(6)]
MANIFEST = {"kind": "instruction", "format": "jsonl", "licence": "MIT", "pii": "redact",
            "fields": {"prompt": ["instruction", "input"], "response": "response"}}


def _cfg(tmp_path, **overrides) -> landing.LandingConfig:
    values = {"inbox": str(tmp_path / "inbox"), "s3_inbox": None, "flag_file": "_READY", "poke_interval_s": 1,
              "landed_dir": str(tmp_path / "landed"), "rejects_dir": str(tmp_path / "rejects"),
              "pii_scan_rows": 100, "max_bad_line_fraction": 0.5, "dvc_track": True, **overrides}
    return landing.LandingConfig(**values)


def _drop(cfg, source: str, files: dict[str, bytes | str], manifest: dict | None = MANIFEST) -> None:
    folder = landing.root_path(cfg.inbox) / source
    folder.mkdir(parents=True, exist_ok=True)
    if manifest is not None:
        (folder / landing.MANIFEST).write_text(yaml.safe_dump(manifest))
    for name, content in files.items():
        (folder / name).write_bytes(content if isinstance(content, bytes) else content.encode())


def _jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def test_new_source_needs_approval_with_licence_and_pii_summary(tmp_path):
    cfg = _cfg(tmp_path)
    rows = ROWS + [{"instruction": "Mail me", "input": "", "response": "Write to jane.doe@corp-mail.com today."}]
    _drop(cfg, "support_tickets", {"batch1.jsonl": _jsonl(rows)})
    scan = landing.scan_inbox(cfg)
    assert scan["needs_approval"] == ["support_tickets"] and scan["refused"] == []
    batch = scan["batches"][0]
    assert batch["rows"] == 7 and batch["licence"] == "MIT" and batch["pii_summary"] == {"EMAIL": 1}
    assert "licence: **MIT**" in scan["approval_body"] and "EMAIL: 1" in scan["approval_body"]

    # Not approved: nothing moves.
    report = landing.accept(cfg, scan, run_id="r1", approved_by=None, approved_sources=[])
    assert report["accepted"] == [] and (tmp_path / "inbox" / "support_tickets" / "batch1.jsonl").exists()
    assert landing.landed_sources(cfg.landed_dir) == []

    report = landing.accept(cfg, scan, run_id="r1", approved_by="alice", approved_sources=["support_tickets"])
    assert report["rows"] == 7 and not (tmp_path / "inbox" / "support_tickets" / "batch1.jsonl").exists()
    approvals = landing.load_approvals(cfg.landed_dir)
    assert approvals["support_tickets"]["approved_by"] == "alice" and approvals["support_tickets"]["licence"] == "MIT"
    [source] = landing.landed_sources(cfg.landed_dir)
    assert source.name == "support_tickets" and source.path.endswith("support_tickets/*.jsonl")

    # The next drop of the same source (same licence) needs no approval; another licence does.
    _drop(cfg, "support_tickets", {"batch2.jsonl": _jsonl(ROWS)})
    assert landing.scan_inbox(cfg)["needs_approval"] == []
    _drop(cfg, "support_tickets", {"batch2.jsonl": _jsonl(ROWS)}, {**MANIFEST, "licence": "CC-BY-NC-4.0"})
    assert landing.scan_inbox(cfg)["needs_approval"] == ["support_tickets"]


def test_corrupt_files_and_unlicensed_sources_are_refused_with_reasons(tmp_path):
    cfg = _cfg(tmp_path)
    _drop(cfg, "good", {"ok.jsonl": _jsonl(ROWS), "binary.jsonl": bytes(range(256)) * 4,
                        "garbage.jsonl": "not json\n{also not\n" + json.dumps(ROWS[0]) + "\n",
                        "wrong.csv": "a,b\n1,2\n"})
    _drop(cfg, "no_licence", {"a.jsonl": _jsonl(ROWS)}, {k: v for k, v in MANIFEST.items() if k != "licence"})
    _drop(cfg, "no_manifest", {"a.jsonl": _jsonl(ROWS)}, manifest=None)
    _drop(cfg, "broken_json", {"a.json": "[{\"instruction\": "}, {**MANIFEST, "format": "json"})
    scan = landing.scan_inbox(cfg)
    reasons = {r["file"]: r["reason"] for r in scan["refused"]}
    assert "not UTF-8" in reasons["good/binary.jsonl"]
    assert "2 of 3 lines are not JSON objects (first: line 1)" in reasons["good/garbage.jsonl"]
    assert "does not match the declared format jsonl" in reasons["good/wrong.csv"]
    assert "licence" in reasons["no_licence/a.jsonl"]
    assert "no source.yaml" in reasons["no_manifest/a.jsonl"]
    assert "not valid JSON (line 1" in reasons["broken_json/a.json"]
    assert [b["source"] for b in scan["batches"]] == ["good"] and scan["batches"][0]["files"] == ["good/ok.jsonl"]

    report = landing.accept(cfg, scan, run_id="manual__2026-12-02T10:00", approved_by="bob",
                            approved_sources=["good"])
    assert len(report["refused"]) == 6
    rejects = next((tmp_path / "rejects").iterdir())
    recorded = json.loads((rejects / "reason.json").read_text())
    assert {r["file"] for r in recorded} == set(reasons)
    assert (rejects / "good" / "binary.jsonl").exists()
    # Every refused file left the inbox; only the manifests stay, so the next drop starts clean.
    left = sorted(str(p.relative_to(tmp_path / "inbox")) for p in (tmp_path / "inbox").rglob("*") if p.is_file())
    assert all(p.endswith(landing.MANIFEST) for p in left), left


def test_data_window_composes_texts_as_ingest_does(tmp_path):
    cfg = _cfg(tmp_path)
    _drop(cfg, "t", {"b.jsonl": _jsonl(ROWS[:2])})
    scan = landing.scan_inbox(cfg)
    report = landing.accept(cfg, scan, run_id="r", approved_by="x", approved_sources=["t"])
    window = build_data_window(cfg.landed_dir, report["accepted"][0]["files"] + ["t/missing.jsonl"],
                               tmp_path / "w.jsonl")
    lines = [json.loads(line) for line in (tmp_path / "w.jsonl").read_text().splitlines()]
    assert window["rows"] == 2 and lines[0]["text"] == f"{ROWS[0]['instruction']}\n\n{ROWS[0]['response']}"
    assert window["skipped"][0]["file"] == "t/missing.jsonl"
    assert build_data_window(cfg.landed_dir, [], tmp_path / "empty.jsonl")["path"] is None


def test_ingest_reads_approved_landed_batches_as_sources(tmp_path, spark):
    cfg = _cfg(tmp_path)
    _drop(cfg, "landed_faq", {"b.jsonl": _jsonl(ROWS)})
    landing.accept(cfg, landing.scan_inbox(cfg), run_id="r", approved_by="x", approved_sources=["landed_faq"])
    raw = tmp_path / "raw.jsonl"
    raw.write_text(json.dumps({"text": "Paris is the capital of France and a large city."}) + "\n")
    sources = [{"name": "docs", "path": str(raw), "format": "jsonl", "kind": "document", "licence": "MIT",
                "pii": "redact", "fields": {"text": "text"}}]
    out = tmp_path / "out"
    icfg = stage_config("ingest", sources=sources, landed_dir=cfg.landed_dir, input_dir=str(tmp_path),
                        output_dir=str(out / "ingested"), rejects_dir=str(out / "rejects"),
                        metrics=str(out / "m.json"), language={"allowed": [], "min_confidence": 0.0, "min_chars": 0})
    report = ingest.run(icfg, spark=spark)
    assert report["sources"]["landed_faq"]["out"] == len(ROWS)
    table = ds.dataset(str(out / "ingested")).to_table().to_pylist()
    assert {r["source"] for r in table} == {"docs", "landed_faq"}
    assert {r["licence"] for r in table if r["source"] == "landed_faq"} == {"MIT"}

    with pytest.raises(ValueError, match="reuse the name"):
        ingest.with_landed_sources(stage_config("ingest", sources=[{**sources[0], "name": "landed_faq"}],
                                                landed_dir=cfg.landed_dir))
    assert landing.allowed_with_landed(["docs"], cfg.landed_dir, "name") == ["docs", "landed_faq"]
    assert landing.allowed_with_landed(None, cfg.landed_dir, "name") is None


def _policy(tmp_path, **kw) -> RetrainConfig:
    return RetrainConfig(**{"cooldown_minutes": 60, "max_per_day": 2, "history": str(tmp_path / "h.json"),
                            "promotion_approval": False, **kw})


def test_retrain_policy_cooldown_cap_and_retries(tmp_path):
    cfg = _policy(tmp_path)
    t0 = datetime(2026, 12, 2, 10, 0, tzinfo=timezone.utc)
    assert decide(cfg, run_id="a", at=t0)["allowed"]
    inside = decide(cfg, run_id="b", at=t0 + timedelta(minutes=20))
    assert not inside["allowed"] and inside["reason"].startswith("cooldown") and "2400 s" in inside["reason"]
    assert decide(cfg, run_id="a", at=t0 + timedelta(minutes=21))["allowed"], "a retried task is not blocked"
    assert decide(cfg, run_id="c", at=t0 + timedelta(minutes=61))["allowed"]
    capped = decide(cfg, run_id="d", at=t0 + timedelta(minutes=125))
    assert not capped["allowed"] and "daily cap" in capped["reason"] and capped["retrains_last_24h"] == 2
    assert decide(cfg, run_id="e", at=t0 + timedelta(hours=25))["allowed"]
    assert [h["run_id"] for h in json.loads((tmp_path / "h.json").read_text())] == ["a", "c", "e"]


# --- the S3 inbox, end to end on moto_server ----------------------------------------------------------------

WATCH = r'''
import asyncio, importlib, json, sys
import boto3
from llmops_airflow.assets import LANDING_INBOX

(watcher,) = LANDING_INBOX.watchers
path, kwargs = watcher.trigger.serialize()          # what the triggerer stores and rebuilds the trigger from
module, name = path.rsplit(".", 1)
make = lambda: getattr(importlib.import_module(module), name)(**kwargs)
bucket, prefix = sys.argv[1], sys.argv[2]
s3 = boto3.client("s3")
for key, body in json.loads(sys.argv[3]).items():  # the producer: data and manifest first ...
    s3.put_object(Bucket=bucket, Key=prefix + key, Body=body.encode())

async def first_event(timeout):
    gen = make().run()
    try:
        return (await asyncio.wait_for(gen.__anext__(), timeout)).payload
    except asyncio.TimeoutError:
        return None
    finally:
        await gen.aclose()

early = asyncio.run(first_event(1.0))                # no flag yet: the watcher must not fire
s3.put_object(Bucket=bucket, Key=prefix + "_READY", Body=b"")  # ... the flag last
fired = asyncio.run(first_event(10.0))
left = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))
print(json.dumps({"trigger": path, "uri": kwargs["uri"], "early": early, "fired": fired, "left": left}))
'''


@pytest.mark.slow
def test_s3_inbox_watcher_fires_on_the_flag_and_the_batch_lands(tmp_path, s3_bucket, s3_server, repo_root,
                                                                monkeypatch):
    """The S3 inbox on a real S3 server: the Asset's watcher is built from params.yaml (`landing.s3_inbox`), its
    trigger is rebuilt from its serialized form as Airflow's triggerer does and run until the producer's flag
    appears (then deleted); the ingest DAG's tasks' functions then pull the drop, scan it and land it."""
    import os
    import subprocess
    import sys

    bucket, client = s3_bucket
    s3_env = {"AWS_ENDPOINT_URL": s3_server["endpoint_url"], "AWS_ACCESS_KEY_ID": s3_server["aws_access_key_id"],
              "AWS_SECRET_ACCESS_KEY": s3_server["aws_secret_access_key"],
              "AWS_DEFAULT_REGION": s3_server["region_name"]}
    for k, v in s3_env.items():
        monkeypatch.setenv(k, v)
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["landing"].update(inbox=str(tmp_path / "inbox"), s3_inbox=f"s3://{bucket}/drops/", poke_interval_s=0.2,
                             landed_dir=str(tmp_path / "landed"), rejects_dir=str(tmp_path / "rejects"))
    root = tmp_path / "root"
    root.mkdir()
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    drop = {"faq_s3/source.yaml": yaml.safe_dump(MANIFEST), "faq_s3/batch#1.jsonl": _jsonl(ROWS),
            "broken/b.jsonl": _jsonl(ROWS[:1])}  # no manifest: refused
    env = dict(os.environ, **s3_env, AIRFLOW_HOME=str(tmp_path / "airflow"), AIRFLOW__CORE__LOAD_EXAMPLES="False",
               LLMOPS_ROOT=str(root), PYTHONPATH=os.pathsep.join([str(repo_root / "plugins"), str(repo_root)]))
    out = subprocess.run([sys.executable, "-c", WATCH, bucket, "drops/", json.dumps(drop)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["trigger"] == "llmops_airflow.triggers.S3FlagTrigger" and seen["uri"] == f"s3://{bucket}/drops/"
    assert seen["early"] is None and seen["fired"] == {"uri": f"s3://{bucket}/drops/", "flag": "_READY"}
    assert "drops/_READY" not in seen["left"] and len(seen["left"]) == 3  # the flag is taken, the drop is not

    # The ingest DAG: scan_inbox (pull + scan), the approval ("Approve"), land_batches (accept).
    cfg = landing.LandingConfig(**params["landing"])
    pulled = landing.pull_s3_inbox(cfg)
    assert sorted(pulled) == sorted(drop)
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0  # moved, not copied
    scan = landing.scan_inbox(cfg)
    assert scan["needs_approval"] == ["faq_s3"] and [r["source"] for r in scan["refused"]] == ["broken"]
    report = landing.accept(cfg, scan, run_id="s3-run", approved_by="tester", approved_sources=scan["needs_approval"])
    assert report["rows"] == len(ROWS) and report["accepted"][0]["files"] == ["faq_s3/s3-run__batch#1.jsonl"]
    landed = tmp_path / "landed" / "faq_s3" / "s3-run__batch#1.jsonl"
    assert landed.read_text() == _jsonl(ROWS)
    assert [s.name for s in landing.landed_sources(cfg.landed_dir)] == ["faq_s3"]
    assert (tmp_path / "rejects" / "s3-run" / "broken" / "b.jsonl").exists()
