"""The flywheel's harvest (issue 31): real request and feedback logs (written by serving's own writers, rotated,
two replicas), a real keys file and a real corpus -> a landing batch, every feedback line accounted for; consent,
PII, shadow lines, near-duplicates of the corpus and the poisoning bounds."""
from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipelines.config import config_from_params
from pipelines.data.near_duplicates import NearDuplicate
from pipelines.flywheel.config import load
from pipelines.flywheel.harvest import harvest
from pipelines.serving.auth import new_key
from pipelines.serving.feedback import FeedbackLog, FeedbackRequest
from pipelines.serving.request_log import RequestLog

CORPUS_TEXT = ("The capital of France is Paris, a city on the Seine known for the Louvre, the Eiffel Tower and its "
               "cafes, and it has been the seat of the French government for centuries.")


class Logs:
    """Serving as a replica does: one request log and one feedback log (small max_bytes: they rotate)."""

    def __init__(self, root: Path, replica: str, max_bytes: int = 4000):
        self.replica = replica
        self.requests = RequestLog(root / "requests" / f"{replica}.jsonl", max_bytes)
        self.feedback = FeedbackLog(root / "feedback" / f"{replica}.jsonl", max_bytes, 4)

    def answer(self, key: str | None, prompt: str, response: str, *, arm: str = "champion", status: int = 200,
               guard: dict | None = None, shadow_of: str | None = None) -> str:
        rid = uuid.uuid4().hex
        self.requests.record(request_id=rid, key_id=key, model="m", model_version="1", alias="champion",
                             mode="chat", status=status, prompt=prompt, response=response, prompt_tokens=3,
                             completion_tokens=3, latency_ms=1.0, ttft_ms=1.0, guard=guard, arm=arm,
                             replica=self.replica, shadow_of=shadow_of)
        return rid

    def rate(self, key: str | None, rid: str, rating: int, correction: str | None = None, arm: str = "champion"):
        fb = FeedbackRequest(request_id=rid, rating=rating, correction=correction)
        self.feedback.submit(fb, key_id=key, meta={"model_version": "1", "alias": "champion", "arm": arm},
                             replica=self.replica)


@pytest.fixture
def world(tmp_path, repo_root):
    keys = {"keys": []}
    for kid, consent in (("alice", True), ("bob", True), ("carol", True), ("dave", False), ("flood", True)):
        keys["keys"].append(new_key(kid, training_use=consent)[1])
    (tmp_path / "keys.json").write_text(json.dumps(keys))
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    pq.write_table(pa.table({"text": [CORPUS_TEXT, "Another unrelated document about rivers and lakes."]}),
                   corpus / "part-0.parquet")
    cfg, inbox, flag = load(repo_root / "params.yaml", request_log=str(tmp_path / "logs/requests"),
                            feedback_log=str(tmp_path / "logs/feedback"), keys_file=str(tmp_path / "keys.json"),
                            inbox=str(tmp_path / "inbox"), corpus_dir=str(corpus), min_distinct_keys=3,
                            min_feedback_lines=0, max_records_per_key=4, report=str(tmp_path / "report.json"))
    nd = config_from_params("dedup.near_duplicate", NearDuplicate, {}, repo_root / "params.yaml")
    a, b = Logs(tmp_path / "logs", "host-a_1"), Logs(tmp_path / "logs", "host-b_2")
    return {"cfg": cfg, "inbox": Path(inbox), "flag": flag, "nd": nd, "a": a, "b": b, "tmp": tmp_path}


def _run(w, until=None, **kw):
    until = until or datetime.now(timezone.utc) + timedelta(minutes=1)
    return harvest(w["cfg"], w["nd"], injection=None, inbox=str(w["inbox"]), flag_file=w["flag"], until=until, **kw)


def _records(inbox: Path, source: str) -> list[dict]:
    return [json.loads(x) for f in sorted((inbox / source).glob("*.jsonl")) for x in f.read_text().splitlines()]


def test_harvest_accounts_for_every_line_and_writes_a_landing_batch(world):
    a, b = world["a"], world["b"]
    # kept: a correction (SFT + pair), well-rated answers, two arms' answers to one prompt rated differently
    r = a.answer("alice", "What is 2+2?", "5")
    a.rate("alice", r, -1, correction="2+2 is 4.")
    for key, prompt, answer in (("bob", "Name a primary colour.", "Red is a primary colour."),
                                ("carol", "Which colour is the sky on a clear day?", "The sky is blue then.")):
        b.rate(key, b.answer(key, prompt, answer), 5)
    r1 = a.answer("bob", "Summarize the water cycle.", "Water evaporates, condenses and falls as rain.", arm="champion")
    r2 = b.answer("carol", "Summarize the water cycle.", "Water is wet.", arm="challenger")
    a.rate("bob", r1, 1)
    b.rate("carol", r2, -1, arm="challenger")
    # excluded, one reason each
    a.rate(None, a.answer(None, "open mode prompt", "an answer"), 1)                                # no_key
    a.rate("dave", a.answer("dave", "no consent prompt", "an answer"), 1)                          # no_consent
    a.rate("alice", a.answer("alice", "failed", "an error", status=500), 1)                        # status_not_200
    a.rate("alice", a.answer("alice", "ignore all rules", "I'm sorry", guard={"action": "block"}), 1)  # guard_blocked
    a.rate("bob", a.answer("bob", "my mail?", "It is jane.doe@example.com"), 5)                    # answer_pii
    a.rate("carol", a.answer("carol", "France?", CORPUS_TEXT), 5)                                  # near_dup corpus
    a.rate("alice", a.answer("alice", "Meh question", "meh answer"), 3)                            # not_useful
    shadow = a.answer(None, "Summarize the water cycle.", "shadow copy", arm="shadow", shadow_of=r1)
    a.feedback.log.append({"ts": datetime.now(timezone.utc).isoformat(), "feedback_id": "x" * 64,  # shadow
                           "request_id": shadow, "key_id": "alice", "rating": 1, "scale": "thumbs"})
    a.rate("alice", uuid.uuid4().hex, 1)                                                           # request_not_found
    assert any(p.name.startswith("host-a_1.") for p in (world["tmp"] / "logs/requests").iterdir()), "no rotation"

    rep = _run(world)
    assert rep["balanced"] and rep["lines"] == 14
    assert rep["excluded"] == {"answer_pii": 1, "guard_blocked": 1, "near_duplicate_corpus": 1, "no_consent": 1,
                               "no_key": 1, "not_useful": 1, "request_not_found": 1, "shadow": 1,
                               "status_not_200": 1}
    assert rep["harvested"] == 5 and rep["written"] and rep["keys"]["contributing"] == 3
    assert rep["records"] == {"instruction": 2, "preference": 2}
    inbox = world["inbox"]
    assert (inbox / world["flag"]).exists()
    sft, pref = _records(inbox, "flywheel_sft"), _records(inbox, "flywheel_preference")
    assert {x["response"] for x in sft} == {"Red is a primary colour.", "The sky is blue then."}
    assert {(x["prompt"], x["chosen"], x["rejected"]) for x in pref} == {
        ("What is 2+2?", "2+2 is 4.", "5"),
        ("Summarize the water cycle.", "Water evaporates, condenses and falls as rain.", "Water is wet.")}
    from pipelines.monitoring.windows import record_text  # the monitor's drift on landed data reads pairs as ingest

    assert all(record_text(x) == f"{x['prompt']}\n\n{x['chosen']}" for x in pref)
    texts = json.dumps(sft + pref)
    assert "shadow copy" not in texts and "no consent" not in texts and "jane.doe" not in texts
    manifest = yaml.safe_load((inbox / "flywheel_preference/source.yaml").read_text())
    assert manifest["kind"] == "preference" and manifest["licence"] == world["cfg"].licence
    assert manifest["fields"] == {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected", "id": "id"}
    assert json.loads((world["tmp"] / "report.json").read_text())["harvested"] == 5


def test_one_key_flooding_is_capped_and_too_few_keys_write_nothing(world):
    a = world["a"]
    for i in range(10):
        a.rate("flood", a.answer("flood", f"Flood prompt number {i} about topic {i * 7}.", f"Flood answer {i}."), 1)
    quiet = dict(world, cfg=world["cfg"].model_copy(update={"min_feedback_lines": 11}))
    rep = _run(quiet)  # feedback volume below the threshold: the run harvests nothing yet
    assert rep["skipped"] and rep["balanced"] and rep["excluded"] == {"below_volume": 10} and not rep["written"]
    rep = _run(world)
    assert rep["balanced"] and rep["lines"] == 10 and not rep["skipped"]
    assert not rep["written"] and rep["reason"].startswith("too_few_keys: 1 distinct key")
    assert rep["excluded"] == {"key_cap": 6, "too_few_keys": 4}
    assert not (world["inbox"] / world["flag"]).exists() and not world["inbox"].exists()
    for key in ("alice", "bob"):
        a.rate(key, a.answer(key, f"A fine question from {key}?", f"A fine answer for {key}."), 1)
    rep = _run(world)
    assert rep["written"] and rep["excluded"] == {"key_cap": 6}
    assert rep["keys"]["per_key_records"] == {"alice": 1, "bob": 1, "flood": 4} and rep["keys"]["capped"] == ["flood"]
    assert len(_records(world["inbox"], "flywheel_sft")) == 6


def test_training_use_is_parsed_from_the_keys_file_and_defaults_to_no_consent(tmp_path):
    from pipelines.serving.auth import KEYS_FILE_ENV, KeyStore

    _, yes = new_key("yes", training_use=True)
    _, no = new_key("no")
    assert "training_use" not in no  # an entry written before consent existed reads the same
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": [yes, no]}))
    store = KeyStore.from_env({KEYS_FILE_ENV: str(path)})
    assert {k.id: k.training_use for k in store.keys} == {"yes": True, "no": False}
    path.write_text(json.dumps({"keys": [{**yes, "training_use": "yes"}]}))
    with pytest.raises(ValueError, match="training_use must be true or false"):
        KeyStore.from_env({KEYS_FILE_ENV: str(path)})


@pytest.mark.slow
def test_harvested_batch_lands_and_ingests_consent_and_redaction_hold(world, spark):
    """Harvest -> landing (approval) -> the real ingest: a consenting key's correction with an e-mail address
    reaches the corpus redacted; a non-consenting key's records never do; preference rows keep their pair; a
    preference source's chosen and rejected answers are both PII-redacted; identical or incomplete pairs are
    rejected with a reason, every record accounted for."""
    import pyarrow.dataset as ds

    from pipelines.config import load_params
    from pipelines.data import landing
    from pipelines.data.clean import rules_off
    from pipelines.stages import ingest
    from pipelines.stages.registry import stage_config

    a, tmp = world["a"], world["tmp"]
    r = a.answer("alice", "How do I reach support about my invoice?", "Call the front desk.")
    a.rate("alice", r, -1, correction="Write to jane.doe@example.com with your invoice number.")
    r = a.answer("dave", "What is the secret marker?", "DAVEMARKER answer")
    a.rate("dave", r, 5, correction="DAVEMARKER corrected")
    for key, prompt, answer in (("bob", "Name a primary colour.", "Red is a primary colour."),
                                ("carol", "Which colour is the sky on a clear day?", "The sky is blue then.")):
        a.rate(key, a.answer(key, prompt, answer), 5)
    rep = _run(world)
    assert rep["written"] and rep["excluded"] == {"no_consent": 1} and rep["balanced"]

    lcfg = landing.LandingConfig(inbox=str(world["inbox"]), s3_inbox=None, flag_file=world["flag"],
                                 poke_interval_s=1, landed_dir=str(tmp / "landed"), rejects_dir=str(tmp / "lrej"),
                                 pii_scan_rows=100, max_bad_line_fraction=0.5, dvc_track=False)
    scan = landing.scan_inbox(lcfg)
    assert not scan["refused"] and sorted(scan["needs_approval"]) == ["flywheel_preference", "flywheel_sft"]
    assert {b["licence"] for b in scan["batches"]} == {world["cfg"].licence}
    landing.accept(lcfg, scan, run_id="r1", approved_by="tester", approved_sources=scan["needs_approval"])

    manual = tmp / "pairs.jsonl"
    manual.write_text("\n".join(json.dumps(x) for x in [
        {"q": "Who maintains the build?", "good": "Ask maintainer@example.org, who owns it.",
         "bad": "Mail root@example.net and hope."},
        {"q": "Same answers?", "good": "Yes, the same.", "bad": "Yes, the same."},
        {"q": "No rejected answer here.", "good": "Only a chosen one."},
    ]) + "\n")
    sources = [{"name": "pairs", "path": str(manual), "format": "jsonl", "kind": "preference", "licence": "MIT",
                "pii": "redact", "fields": {"prompt": "q", "chosen": "good", "rejected": "bad"}}]
    params = load_params()
    params["ingest"]["quality"] = rules_off()
    out = tmp / "out"
    icfg = stage_config("ingest", params, sources=sources, landed_dir=lcfg.landed_dir, input_dir=str(tmp),
                        output_dir=str(out / "ingested"), rejects_dir=str(out / "rejects"),
                        metrics=str(out / "m.json"), language={"allowed": [], "min_confidence": 0.0, "min_chars": 0})
    report = ingest.run(icfg, spark=spark)
    assert report["total"]["balanced"]
    assert report["sources"]["pairs"]["rejected_by_reason"] == {"missing_field": 1, "quality": 1}
    assert report["sources"]["flywheel_preference"]["out"] == 1 and report["sources"]["flywheel_sft"]["out"] == 2
    rows = ds.dataset(str(out / "ingested")).to_table().to_pylist()
    everything = json.dumps(rows)
    assert "DAVEMARKER" not in everything and "@example" not in everything
    fw = next(r for r in rows if r["source"] == "flywheel_preference")
    assert fw["kind"] == "preference" and fw["rejected"] == "Call the front desk."
    assert fw["response"] == "Write to <EMAIL> with your invoice number." and fw["text"].endswith(fw["response"])
    pair = next(r for r in rows if r["source"] == "pairs")
    assert pair["response"].count("<EMAIL>") == 1 and pair["rejected"].count("<EMAIL>") == 1
    assert all(r["rejected"] is None for r in rows if r["kind"] != "preference")
    rejects = ds.dataset(str(out / "rejects")).to_table().to_pylist()
    assert any(r["rule"].startswith("preference_identical") for r in rejects if r["source"] == "pairs")


def test_preference_source_fields_are_checked():
    from pydantic import ValidationError

    from pipelines.data.source_config import Source

    base = {"name": "p", "path": "p.jsonl", "format": "jsonl", "licence": "MIT", "pii": "redact"}
    ok = Source(**base, kind="preference", fields={"prompt": "q", "chosen": "a", "rejected": "b"})
    assert ok.fields.raw_fields() == ["q", "a", "b"]
    with pytest.raises(ValidationError, match="must map fields: rejected"):
        Source(**base, kind="preference", fields={"prompt": "q", "chosen": "a"})
    with pytest.raises(ValidationError, match="cannot map fields: response"):
        Source(**base, kind="preference", fields={"prompt": "q", "chosen": "a", "rejected": "b", "response": "c"})
    with pytest.raises(ValidationError, match="cannot map fields: chosen"):
        Source(**base, kind="instruction", fields={"prompt": "q", "response": "a", "chosen": "c"})


def test_splits_keep_preference_pairs(tmp_path):
    from pipelines.schema import CORPUS_COLUMNS
    from pipelines.stages import split
    from pipelines.stages.registry import stage_config

    schema = pa.schema([(c, pa.int32() if c == "n_chars" else pa.string()) for c in CORPUS_COLUMNS])
    rows = [{"doc_id": f"{i:04d}", "source": "flywheel_preference", "licence": "x", "kind": "preference",
             "text": f"q{i}\n\na{i}", "prompt": f"q{i}", "response": f"a{i}", "rejected": f"worse {i}", "title": None,
             "n_chars": 6} for i in range(200)]
    (tmp_path / "in").mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp_path / "in" / "part-0.parquet")
    cfg = stage_config("split", input_dir=str(tmp_path / "in"), output_dir=str(tmp_path / "out"),
                       metrics=str(tmp_path / "m.json"))
    report = split.run(cfg)
    out = [r for s in split.SPLITS for r in pq.read_table(tmp_path / "out" / f"{s}.parquet").to_pylist()]
    assert report["in"] == len(out) == 200 and sum(report["by_kind"]["preference"].values()) == 200
    assert sorted((r["doc_id"], r["rejected"]) for r in out) == [(f"{i:04d}", f"worse {i}") for i in range(200)]


def test_the_guards_input_checks_exclude_prompts_and_corrections(world, tmp_path, repo_root):
    """The guard as serving builds it (serve.guard, detectors from guard_models_dir; none here: its rule checks run
    and the report says the detector is missing); what it would block is excluded with the check's name."""
    from pipelines.config import config_from_params
    from pipelines.flywheel.harvest import InjectionCheck
    from pipelines.security.guard import Guard, GuardConfig

    cfg = world["cfg"].model_copy(update={"guard_models_dir": str(tmp_path / "no-models"), "min_distinct_keys": 1})
    check = InjectionCheck.from_params(cfg, repo_root / "params.yaml")
    assert check.status.startswith("missing") and check.flagged("What is 2+2?") is None
    strict = Guard(config_from_params("serve.guard", GuardConfig, {
        "models_dir": str(tmp_path / "no-models"), "canaries_path": None, "input": {"max_prompt_chars": 60}},
        repo_root / "params.yaml"), repo_root)
    a = world["a"]
    a.rate("alice", a.answer("alice", "Short question?", "Short answer."), 1)
    a.rate("bob", a.answer("bob", "x " * 40, "An answer to a very long prompt."), 1)
    a.rate("carol", a.answer("carol", "Another short one?", "Wrong."), -1, correction="y " * 40)
    until = datetime.now(timezone.utc) + timedelta(minutes=1)
    rep = harvest(cfg, world["nd"], injection=InjectionCheck(strict), inbox=str(world["inbox"]), until=until)
    assert rep["excluded"] == {"guard_prompt_too_long": 2} and rep["harvested"] == 1 and rep["balanced"]
    assert rep["injection_detector"].startswith("missing")


def test_a_written_batch_moves_the_watermark_and_the_volume_trigger_fires_on_new_ratings(world, monkeypatch,
                                                                                        repo_root):
    """Ratings a written batch took are never harvested again (already_harvested, every line still accounted); the
    llmops_flywheel DAG's feedback-volume watcher (FeedbackVolumeTrigger, reading params.yaml as the DAG does)
    stays quiet below min_feedback_lines new ratings and fires at it, and after a harvest that saw the volume but
    wrote nothing, fires again only once min_feedback_lines more ratings came."""
    import asyncio

    from pipelines.flywheel.harvest import pending_feedback

    a = world["a"]
    for key in ("alice", "bob", "carol"):
        a.rate(key, a.answer(key, f"A question from {key}?", f"A good answer for {key}."), 1)
    assert pending_feedback(world["cfg"]) == 3
    rep = _run(world, until=datetime.now(timezone.utc))  # the watermark: ratings given from now on are new
    assert rep["written"] and rep["harvested_until"] == rep["until"]
    assert pending_feedback(world["cfg"]) == 0
    again = _run(world, until=datetime.now(timezone.utc))  # a rerun (or a volume-triggered run inside the cron's window) takes nothing twice
    assert again["excluded"] == {"already_harvested": 3} and again["balanced"] and not again["written"]
    assert again["harvested_until"] == rep["harvested_until"]  # nothing written: the watermark stays

    # the trigger, on a workspace whose params.yaml points the flywheel at this world's logs
    ws = world["tmp"] / "ws"
    ws.mkdir()
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["flywheel"].update({k: getattr(world["cfg"], k) for k in ("request_log", "feedback_log", "keys_file",
                                                                     "corpus_dir", "report")})
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setenv("LLMOPS_ROOT", str(ws))
    monkeypatch.syspath_prepend(str(repo_root / "plugins"))
    from llmops_airflow.triggers import FeedbackVolumeTrigger

    async def first_event(trigger, seconds):
        gen = trigger.run()
        try:
            return (await asyncio.wait_for(gen.__anext__(), seconds)).payload
        except asyncio.TimeoutError:
            return None
        finally:
            await gen.aclose()

    trigger = FeedbackVolumeTrigger(min_lines=2, poke_interval=0.1)
    assert trigger.serialize() == ("llmops_airflow.triggers.FeedbackVolumeTrigger",
                                   {"min_lines": 2, "poke_interval": 0.1})
    a.rate("alice", a.answer("alice", "One more question?", "One more answer."), 1)
    assert asyncio.run(first_event(trigger, 1.0)) is None  # 1 new rating < 2
    a.rate("bob", a.answer("bob", "And another question?", "And another answer."), 1)
    assert asyncio.run(first_event(trigger, 5.0)) == {"pending_feedback": 2, "since_last_look": 2}

    # the run it fires sees the volume but writes nothing (2 keys < min_distinct_keys 3): the lines stay pending,
    # and the watcher waits for min_lines more ratings after that run instead of firing a no-op harvest each check
    looked = _run(world, until=datetime.now(timezone.utc))
    assert not looked["written"] and not looked["skipped"] and looked["reason"].startswith("too_few_keys")
    assert pending_feedback(world["cfg"]) == 2
    assert asyncio.run(first_event(trigger, 1.0)) is None
    a.rate("carol", a.answer("carol", "A third question?", "A third answer."), 1)
    assert asyncio.run(first_event(trigger, 1.0)) is None  # 1 rating since that run < 2
    a.rate("dave", a.answer("dave", "A fourth question?", "A fourth answer."), 1)
    assert asyncio.run(first_event(trigger, 5.0)) == {"pending_feedback": 4, "since_last_look": 2}
