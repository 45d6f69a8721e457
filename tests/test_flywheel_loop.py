"""The flywheel end to end (issue 31): simulated users rate a served champion's answers with a fixed, checkable
preference, the harvest turns their ratings into a landing batch, a person approves it, the data plane ingests,
deduplicates and splits it, a DPO retrain on Ray starts from the champion, and evaluate + the gate's interval
checks show the candidate preferred on held-out pairs without a QA regression beyond the gate's margin.

The preference: users want the answer of an XQuAD question, a few words copied from its context. An answer that
contains the gold answer gets a thumbs up; any other gets a thumbs down and the gold answer as correction. The
questions are XQuAD ones that neither evaluation set (qa, rag) holds, on paragraphs neither uses.
"""
from __future__ import annotations

import json
import math
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from test_dpo import make_champion_adapter
from test_gate import registry_cfg
from test_serve import Server, _promote, serve_config

N_QUESTIONS = 72
RATERS = ("ana", "ben", "chen", "dora", "eli", "fay")  # consenting keys, a question each in turn
NO_CONSENT = "gus"  # rates too; none of their records may reach the corpus


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def questions(repo_root, n: int) -> list[dict]:
    """XQuAD questions on paragraphs that no evaluation set uses, with the sentence holding the answer as context
    (short prompts: the served model answers each in well under a second)."""
    from pipelines.evaluation.tasks import QA_PROMPT

    held = [json.loads(line) for name in ("qa_xquad_en.jsonl", "rag_xquad_en.jsonl")
            for line in (repo_root / "data/sample/eval" / name).read_text().splitlines() if line.strip()]
    held_contexts = {_norm(r.get("context", ""))[:200] for r in held}
    held_questions = {_norm(r["question"]) for r in held}
    data = json.loads((repo_root / "data/sample/rag/xquad.en.json").read_text())["data"]
    out = []
    for article in data:
        for para in article["paragraphs"]:
            if _norm(para["context"])[:200] in held_contexts:
                continue
            for qa in para["qas"]:
                if _norm(qa["question"]) in held_questions:
                    continue
                ans = qa["answers"][0]
                start = para["context"].rfind(". ", 0, ans["answer_start"]) + 2 if ". " in para["context"][
                    :ans["answer_start"]] else 0
                end = para["context"].find(". ", ans["answer_start"] + len(ans["text"]))
                sentence = para["context"][start:end + 1 if end > 0 else None].strip()
                out.append({"prompt": QA_PROMPT.format(context=sentence, question=qa["question"]),
                            "gold": ans["text"]})
                if len(out) == n:
                    return out
    raise AssertionError(f"only {len(out)} held-out XQuAD questions")


@pytest.mark.slow
def test_rated_answers_retrain_a_preferred_candidate_through_the_data_plane(
        repo_root, base_model_dir, spark, ray_local, tmp_path):
    from pipelines.config import config_from_params, load_params
    from pipelines.data import landing
    from pipelines.data.clean import rules_off
    from pipelines.data.near_duplicates import NearDuplicate
    from pipelines.flywheel.config import load
    from pipelines.flywheel.harvest import harvest
    from pipelines.models.gating import VersusReference, reference_checks
    from pipelines.models.registry import find_champion
    from pipelines.serving.app import create_app
    from pipelines.serving.auth import KEYS_FILE_ENV, KeyStore, new_key
    from pipelines.stages import dedup, evaluate, finetune, ingest, split
    from pipelines.stages.registry import shared_config, stage_config

    # 1. the champion (a registered LoRA adapter) served with the users' keys: six consent to training use
    registry = registry_cfg(tmp_path)
    champion_dir = make_champion_adapter(base_model_dir, tmp_path / "champion")
    (champion_dir / "training_meta.json").write_text(json.dumps({"objective": "sft"}))
    (tmp_path / "v1").mkdir()
    version = _promote(tmp_path / "v1", registry, champion_dir, base_model_dir)["version"]  # gate + promote
    secrets, records = {}, []
    for kid in (*RATERS, NO_CONSENT):
        secrets[kid], record = new_key(kid, training_use=kid != NO_CONSENT)
        records.append(record)
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps({"keys": records}))
    logs = tmp_path / "logs"
    cfg = serve_config(max_new_tokens=10, guard={"enabled": False}, request_log=str(logs / "requests.jsonl"),
                       feedback_log=str(logs / "feedback.jsonl"))
    server = Server(create_app(cfg, registry, keys=KeyStore.from_env({KEYS_FILE_ENV: str(keys_file)})))

    # 2. users ask and rate: thumbs up when the answer holds the gold answer, else thumbs down + the gold answer
    def ask_and_rate(i_q):
        i, q = i_q
        key = RATERS[i % len(RATERS)] if i % 12 else NO_CONSENT
        raw = openai.OpenAI(base_url=server.url + "/v1", api_key=secrets[key], max_retries=0, timeout=300) \
            .chat.completions.with_raw_response.create(model="m", messages=[{"role": "user", "content": q["prompt"]}],
                                                       max_tokens=10, temperature=0)
        answer = raw.parse().choices[0].message.content or ""
        liked = _norm(q["gold"]) in _norm(answer)
        body = {"request_id": raw.headers["x-request-id"], "rating": 1 if liked else -1,
                **({} if liked else {"correction": q["gold"]})}
        r = httpx.post(server.url + "/v1/feedback", headers={"Authorization": f"Bearer {secrets[key]}"}, json=body,
                       timeout=60)
        assert r.status_code == 200, r.text
        return key, liked

    try:
        with ThreadPoolExecutor(8) as pool:  # concurrent users: the server batches their decoding
            rated = list(pool.map(ask_and_rate, enumerate(questions(repo_root, N_QUESTIONS))))
    finally:
        server.stop()
    corrected = sum(1 for key, liked in rated if key != NO_CONSENT and not liked)
    assert corrected >= 40, f"the champion already answers {N_QUESTIONS - corrected} of {N_QUESTIONS}"

    # 3. harvest -> a landing batch (consent, caps, every feedback line accounted for)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    pq.write_table(pa.table({"text": ["An unrelated document about rivers and lakes."]}), corpus / "part-0.parquet")
    fw, inbox, flag = load(repo_root / "params.yaml", request_log=str(logs / "requests.jsonl"),
                           feedback_log=str(logs / "feedback.jsonl"), keys_file=str(keys_file),
                           inbox=str(tmp_path / "inbox"), corpus_dir=str(corpus), min_distinct_keys=3,
                           min_feedback_lines=0, max_records_per_key=N_QUESTIONS, report=str(tmp_path / "h.json"))
    nd = config_from_params("dedup.near_duplicate", NearDuplicate, {}, repo_root / "params.yaml")
    rep = harvest(fw, nd, injection=None, inbox=inbox, flag_file=flag)
    assert rep["balanced"] and rep["written"] and rep["lines"] == N_QUESTIONS
    assert rep["excluded"].get("no_consent") == sum(1 for key, _ in rated if key == NO_CONSENT)
    # every consenting correction became a pair, but for the exclusions the harvest names (e.g. a wrong answer that
    # holds something PII-shaped, or the same question corrected twice)
    print("harvest:", rep["records"], rep["excluded"], rep["records_excluded"])
    assert set(rep["excluded"]) <= {"no_consent", "answer_pii", "near_duplicate_batch"}
    assert 0.8 * corrected <= rep["records"]["preference"] <= corrected
    assert rep["keys"]["contributing"] == len(RATERS)

    # 4. a person approves the batch; ingest (redaction, quality, pairs), dedup and split take it from there
    lcfg = landing.LandingConfig(inbox=inbox, s3_inbox=None, flag_file=flag, poke_interval_s=1,
                                 landed_dir=str(tmp_path / "landed"), rejects_dir=str(tmp_path / "lrej"),
                                 pii_scan_rows=1000, max_bad_line_fraction=0.5, dvc_track=False)
    scan = landing.scan_inbox(lcfg)
    assert "flywheel_preference" in scan["needs_approval"] and not scan["refused"]
    landing.accept(lcfg, scan, run_id="fw1", approved_by="tester", approved_sources=scan["needs_approval"])
    params = load_params()
    params["ingest"]["quality"] = rules_off()  # short QA answers: the corpus's length rules are for documents
    out = tmp_path / "data"
    seed = tmp_path / "seed.jsonl"  # the corpus the champion was trained on (ingest takes at least one source)
    seed.write_text(json.dumps({"q": "Name a primary colour.", "a": "Red is a primary colour."}) + "\n")
    sources = [{"name": "seed", "path": str(seed), "format": "jsonl", "kind": "instruction", "licence": "MIT",
                "pii": "redact", "fields": {"prompt": "q", "response": "a"}}]
    report = ingest.run(stage_config("ingest", params, sources=sources, landed_dir=lcfg.landed_dir, input_dir=str(tmp_path),
                                     output_dir=str(out / "ingested"), rejects_dir=str(out / "rejects"),
                                     metrics=str(out / "ingest.json"),
                                     language={"allowed": [], "min_confidence": 0.0, "min_chars": 0}), spark=spark)
    assert report["total"]["balanced"]
    dedup.run(stage_config("dedup", input_dir=str(out / "ingested"), output_dir=str(out / "corpus"),
                           rejects_dir=str(out / "dedup_rejects"), metrics=str(out / "dedup.json"),
                           cluster_report=str(out / "clusters.json"), cluster_html=str(out / "clusters.html")),
              spark=spark)
    split.run(stage_config("split", input_dir=str(out / "corpus"), output_dir=str(out / "splits"),
                           eval_fraction=0.3, test_fraction=0.0, metrics=str(out / "split.json")))
    held_out = pq.read_table(out / "splits" / "eval.parquet").to_pandas()
    n_held = int((held_out["kind"] == "preference").sum())
    assert n_held >= 10

    # 5. DPO on Ray from the champion (also the reference): 2 workers, rank 1 killed once after step 3; the group
    # resumes from the step-2 checkpoint with the reference log-probs it saved (not recomputed from the trained model).
    # Four steps: the candidate already wins every held-out pair (eight steps took 94 s here, one worker 143 s)
    engines = shared_config("engines", ray={"address": None, "num_cpus": 2})
    cfg = stage_config(
        "finetune", base_model_dir=str(base_model_dir), train_path=str(out / "splits" / "train.parquet"),
        eval_path=str(out / "splits" / "eval.parquet"), output_dir=str(tmp_path / "candidate"), num_workers=2,
        max_steps=4, checkpoint_every=2, eval_every=2, max_failures=1, per_device_batch_size=2, max_length=160,
        max_eval_examples=8, learning_rate=0.005, objective="dpo", dpo={"beta": 0.1, "reference": "champion"},
        storage_path=str(tmp_path / "ray"), mlflow={"enabled": True}, metrics=str(tmp_path / "ft.json"),
        loss_plot=str(tmp_path / "loss.csv"))
    tuned = finetune.run(cfg, engines, registry, _worker_overrides={
        "_fail_once": {"rank": 1, "after_step": 3, "marker_dir": str(tmp_path)}})
    assert (tmp_path / "failed_once").read_text() == "3"
    assert tuned["steps"] == 4 and tuned["resumed_from_step"] == 2 and tuned["objective"] == "dpo"
    d = tuned["dpo"]
    assert d["reference"]["kind"] == "champion" and d["reference"]["version"] == version
    # step 1: the policy is the reference, so every margin is 0 and the loss is log 2
    assert d["reward_margin_first"] == pytest.approx(0.0, abs=1e-6)
    assert tuned["train_loss_first"] == pytest.approx(math.log(2), abs=1e-5)
    assert [s for s, _ in tuned["eval_history"]] == [2, 4]
    candidate = Path(cfg.output_dir)
    assert json.loads((candidate / "adapter_config.json").read_text())["r"] == 4  # continued the champion's adapter
    meta = json.loads((candidate / "training_meta.json").read_text())
    n_train_pairs = int((pq.read_table(out / "splits" / "train.parquet").to_pandas()["kind"] == "preference").sum())
    assert meta["objective"] == "dpo" and meta["data"]["train"]["preference_rows"] == n_train_pairs
    assert json.loads((candidate / "canaries.json").read_text())["canaries"] == []  # nothing planted in a DPO run
    from pipelines.models.registry import client as mlflow_client

    run = mlflow_client(registry.tracking_uri).get_run(meta["mlflow_run_id"])
    assert run.data.params["objective"] == "dpo" and run.data.params["dpo.beta"] == "0.1"
    assert run.data.tags["dpo.reference"] == f"champion:v{version}"
    assert "rewards/margins" in run.data.metrics

    # 6. evaluate on Ray against the champion: QA and the held-out pairs
    tasks = [{"name": "qa", "type": "extractive_qa", "path": str(repo_root / "data/sample/eval/qa_xquad_en.jsonl"),
              "max_examples": 16, "max_new_tokens": 12, "enabled": True},
             {"name": "preference", "type": "preference", "path": str(out / "splits" / "eval.parquet"),
              "max_examples": 64, "max_new_tokens": 0, "enabled": True}]
    evaluate.run(stage_config("evaluate", base_model_dir=str(base_model_dir), candidate_dir=str(candidate),
                              tasks=tasks, ray={"actors": 1, "threads_per_actor": 2, "use_gpu": False},
                              guard_dir=None, mlflow=False, metrics=str(tmp_path / "evaluate.json"),
                              report=str(tmp_path / "evaluate.html"), plot=str(tmp_path / "diffs.csv")),
                 engines=engines, registry=registry)
    metrics = json.loads((tmp_path / "evaluate.json").read_text())
    win = metrics["comparisons"]["preference.win_rate"]
    print(f"held-out pairs {n_held}: win rate diff {win['diff']:.3f} [{win['ci_low']:.3f}, {win['ci_high']:.3f}]; "
          f"qa.f1 diff {metrics['comparisons']['qa.f1']['diff']:.3f}")

    # 7. the gate's own interval checks: preferred with the interval above 0, QA F1 within the gate's margin
    gate = yaml.safe_load((repo_root / "params.yaml").read_text())["gate"]["versus_reference"]
    checks = reference_checks(VersusReference(max_regression={"qa.f1": gate["max_regression"]["qa.f1"]},
                                              min_examples=10, require_current_reference=True,
                                              require_improvement=["preference.win_rate"]),
                              metrics, find_champion(registry))
    assert all(c["passed"] for c in checks), [c for c in checks if not c["passed"]]
    assert {c["check"] for c in checks} == {"reference", "min_examples", "versus_reference", "improvement"}
