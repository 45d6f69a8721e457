"""Harvest: rated production interactions -> a landing batch (SFT records and preference pairs).

Reads the feedback log and the request log of every replica (rotated files included; a folder of per-replica
files, hour partitions or s3:// through `pipelines.rollout.logs.read_records`), joins each rating to the request it
rates (by `request_id`), and keeps only what may and should become training data:

- consent: the rating's key must exist in the keys file with `training_use: true` (pipelines/serving/auth.py); a
  rating without a key, or by a key without consent, never contributes;
- the rated request must be a user-facing answer (never a shadow line: those were never shown to anyone), status
  200, not blocked by the guard, with an answer free of PII (the request log's `pii_found` and a re-scan with
  pipelines.data.pii), and neither its prompt nor the user's correction flagged by the guard's input checks (the
  injection detector);
- records: a correction gives a preference pair (prompt, chosen=correction, rejected=the logged answer), which is
  also its SFT record: the corpus keeps one row per text and a pair's text is prompt + chosen, exactly the SFT
  record's (dedup would drop one of the two); a well-rated answer gives an SFT record (prompt, answer); two arms'
  answers to the same prompt (same prompt_sha256) rated differently give a pair (the better-rated one chosen);
- a record near-duplicating a text of the curated corpus (the platform's definition, `dedup.near_duplicate`), or
  an earlier record of the batch (of either kind: dedup compares texts across kinds), is excluded;
- poisoning bounds: at most `max_records_per_key` records per key (in time order), and nothing is written unless
  at least `min_distinct_keys` keys contribute.

Every feedback line read is accounted for: lines == harvested + sum(excluded by reason) (`balanced` in the
report). The batch is `<inbox>/<prefix>_sft/` and `<inbox>/<prefix>_preference/` (source.yaml + one JSONL file
each, written atomically), then `<inbox>/_READY` last; the ingest DAG's approval and the lifecycle take it from
there. No Airflow here: the CLI (`llmops flywheel harvest`) and the `llmops_flywheel` DAG call `harvest`.
"""
from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import yaml

from pipelines.flywheel.config import FlywheelConfig

ARMS = ("champion", "challenger")  # what a user may have been shown; "shadow" never was
READY = "_READY"


def _root_path(p: str) -> Path:
    from pipelines.config import project_root

    path = Path(p)
    return path if path.is_absolute() else project_root() / path


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def consenting_keys(keys_file: str | None) -> dict[str, bool]:
    """key id -> training_use, from the keys file (the same parser serving uses)."""
    from pipelines.serving.auth import KEYS_FILE_ENV, KeyStore

    path = keys_file or os.environ.get(KEYS_FILE_ENV)
    if not path:
        return {}
    store = KeyStore.from_env({KEYS_FILE_ENV: str(_root_path(path))})
    return {k.id: k.training_use for k in store.keys}


def score(fb: dict) -> float:
    """A rating on [0, 1]: thumbs -1/+1 -> 0/1, stars 1..5 -> 0..1."""
    r = int(fb.get("rating", 0))
    return (1.0 if r > 0 else 0.0) if fb.get("scale") == "thumbs" else (r - 1) / 4


def good(fb: dict, good_stars: int) -> bool:
    return fb.get("rating") == 1 if fb.get("scale") == "thumbs" else int(fb.get("rating", 0)) >= good_stars


class InjectionCheck:
    """The guard's input checks as serving runs them (pipelines.security.guard), detectors from `models_dir`."""

    def __init__(self, guard):
        self.guard = guard
        self.status = "loaded" if "injection" in guard.detectors else f"missing ({guard.missing})"

    @classmethod
    def from_params(cls, cfg: FlywheelConfig, params=None) -> "InjectionCheck":
        from pipelines.config import config_from_params, project_root
        from pipelines.security.guard import Guard, GuardConfig

        over: dict[str, Any] = {"require_detectors": cfg.require_injection_detector, "canaries_path": None}
        if cfg.guard_models_dir:
            over["models_dir"] = cfg.guard_models_dir
        return cls(Guard(config_from_params("serve.guard", GuardConfig, over, params), project_root()))

    def flagged(self, text: str) -> str | None:
        """The blocking check's name ("injection", "prompt_too_long", ...) or None."""
        v = self.guard.check_input([{"role": "user", "content": text}])
        return v.blocked.check if v.blocked else None


def _answer_pii(req: dict) -> bool:
    from pipelines.data import pii

    found = ((req.get("pii_found") or {}).get("response") or {})
    return any(int(n) > 0 for n in found.values()) or bool(pii.detect(req.get("response")))


def _norm(s: str | None) -> str:
    return " ".join((s or "").split())


def _ts(record: dict) -> datetime | None:
    try:
        return datetime.fromisoformat(str(record["ts"])).astimezone(timezone.utc)
    except (KeyError, ValueError):
        return None


def previous_watermark(report_path: str) -> datetime | None:
    """The end of the last written batch's window (the report's `harvested_until`), None before the first one."""
    path = _root_path(report_path)
    try:
        value = json.loads(path.read_text()).get("harvested_until")
    except (FileNotFoundError, json.JSONDecodeError, AttributeError):
        return None
    return datetime.fromisoformat(value).astimezone(timezone.utc) if value else None


def _pending(cfg: FlywheelConfig, until: datetime | None) -> list[dict[str, Any]]:
    from pipelines.rollout.logs import read_records

    until = (until or datetime.now(timezone.utc)).astimezone(timezone.utc)
    since = until - timedelta(hours=cfg.window_hours)
    watermark = previous_watermark(cfg.report)
    feedback, _ = read_records(cfg.feedback_log, max(since, watermark) if watermark else since, until)
    return feedback


def pending_feedback(cfg: FlywheelConfig, until: datetime | None = None) -> int:
    """Ratings a harvest ending at `until` (default now) would read: in the window, after the last written batch."""
    return len(_pending(cfg, until))


def _last_look(report_path: str) -> datetime | None:
    """The window end of the last harvest if it saw the volume and wrote nothing; None if it wrote a batch, was
    below the volume, was a dry run, or there is none."""
    try:
        report = json.loads(_root_path(report_path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if not isinstance(report, dict) or report.get("written") or report.get("skipped") \
            or str(report.get("reason") or "").startswith("dry run") or not report.get("until"):
        return None
    return datetime.fromisoformat(report["until"]).astimezone(timezone.utc)


def volume_check(cfg: FlywheelConfig, until: datetime | None = None) -> dict[str, Any]:
    """What the llmops_flywheel DAG's feedback-volume watcher decides on: fire once `min_feedback_lines` ratings
    wait after the last written batch. A harvest that saw that volume and still wrote nothing (no consenting key,
    too few distinct keys) leaves its lines waiting, so the volume stays up: the watcher then waits for another
    `min_feedback_lines` ratings after that run's window before it fires again, instead of a no-op harvest at every
    check. Returns {pending, since_last_look, fire}."""
    feedback = _pending(cfg, until)
    looked = _last_look(cfg.report)
    newer = len(feedback) if looked is None else sum(1 for fb in feedback if (_ts(fb) or looked) >= looked)
    threshold = max(cfg.min_feedback_lines, 1)
    return {"pending": len(feedback), "since_last_look": newer,
            "fire": len(feedback) >= threshold and newer >= (threshold if looked is not None else 1)}


def harvest(cfg: FlywheelConfig, nd, *, injection: InjectionCheck | None, inbox: str, flag_file: str = READY,
            until: datetime | None = None, write: bool = True) -> dict[str, Any]:
    """Harvest the window ending at `until` (default: now) into the inbox; returns (and writes) the report.
    `nd`: the near-duplicate definition (`dedup.near_duplicate`); `injection`: the guard's input check (None: no
    detector at all, reported as such)."""
    from pipelines.data import pii
    from pipelines.data.near_duplicates import verified_pairs
    from pipelines.rollout.logs import read_records

    until = (until or datetime.now(timezone.utc)).astimezone(timezone.utc)
    since = until - timedelta(hours=cfg.window_hours)
    feedback, fb_acc = read_records(cfg.feedback_log, since, until)
    requests, req_acc = read_records(cfg.request_log, since - timedelta(hours=cfg.request_lookback_hours), until)
    excluded: dict[str, int] = {}

    def exclude(reason: str, n: int = 1) -> None:
        if n:
            excluded[reason] = excluded.get(reason, 0) + n

    exclude("unparseable", fb_acc["rejected"])
    exclude("outside_window", fb_acc["outside_window"])
    # the watermark: ratings a written batch already took (a volume-triggered run inside the cron's window, a
    # rerun) are accounted as already_harvested, never written twice
    harvested_until = previous_watermark(cfg.report)
    if harvested_until is not None:
        fresh = [fb for fb in feedback if _ts(fb) is None or _ts(fb) >= harvested_until]
        exclude("already_harvested", len(feedback) - len(fresh))
        feedback = fresh
    volume_reason = None
    if len(feedback) < cfg.min_feedback_lines:  # not enough new feedback yet: the next run looks again
        volume_reason = f"below_volume: {len(feedback)} feedback line(s) in the window < min_feedback_lines " \
                        f"{cfg.min_feedback_lines}"
        exclude("below_volume", len(feedback))
        feedback = []
    shown = {r["request_id"]: r for r in requests if r.get("request_id") and r.get("arm", "champion") != "shadow"
             and not r.get("shadow_of")}
    shadows = {r["request_id"] for r in requests if r.get("arm") == "shadow" or r.get("shadow_of")}
    consent = consenting_keys(cfg.keys_file)
    pii_redacted: dict[str, int] = {}

    def clean(text: str) -> str:  # PII the logs' redaction missed (ingest redacts again under the manifest)
        red, found = pii.redact(text)
        for e in found:
            pii_redacted[e] = pii_redacted.get(e, 0) + 1
        return red

    eligible: list[dict[str, Any]] = []
    seen: set[str] = set()
    for fb in sorted(feedback, key=lambda f: str(f.get("ts"))):
        fid, key, rid = fb.get("feedback_id"), fb.get("key_id"), fb.get("request_id")
        req = shown.get(rid)
        reason = None
        if fid in seen:
            reason = "duplicate_feedback"
        elif not key:
            reason = "no_key"
        elif key not in consent:
            reason = "unknown_key"
        elif not consent[key]:
            reason = "no_consent"
        elif rid in shadows:
            reason = "shadow"
        elif req is None:
            reason = "request_not_found"
        elif req.get("status") != 200:
            reason = "status_not_200"
        elif (req.get("guard") or {}).get("action") == "block":
            reason = "guard_blocked"
        elif not req.get("prompt") or not req.get("response"):
            reason = "no_text"
        elif _answer_pii(req):
            reason = "answer_pii"
        seen.add(fid)
        if reason is None and injection is not None:
            for text in (req["prompt"], fb.get("correction")):
                if text and (check := injection.flagged(text)):
                    reason = "injection" if check == "injection" else f"guard_{check}"
                    break
        if reason:
            exclude(reason)
            continue
        correction = fb.get("correction")
        eligible.append({"fb": fb, "req": req, "key": key, "score": score(fb), "ts": str(fb.get("ts")),
                         "prompt": clean(req["prompt"]), "response": req["response"],
                         "correction": clean(correction) if correction and correction.strip() else None})

    # candidate records, each with the feedback lines (and keys) it comes from
    records: list[dict[str, Any]] = []

    def add(kind: str, items: list[dict], prompt: str, chosen: str, rejected: str | None = None) -> None:
        records.append({"kind": kind, "prompt": prompt, "chosen": chosen, "rejected": rejected,
                        "fids": [i["fb"]["feedback_id"] for i in items], "keys": sorted({i["key"] for i in items}),
                        "ts": max(i["ts"] for i in items), "status": None})

    by_prompt: dict[str, list[dict]] = {}
    for it in eligible:
        arm = it["req"].get("arm") or "champion"
        if not it["correction"] and arm in ARMS and it["req"].get("prompt_sha256"):
            by_prompt.setdefault(it["req"]["prompt_sha256"], []).append(it)
    chosen_side: set[int] = set()
    for group in by_prompt.values():  # two arms' answers to one prompt, rated differently
        group = sorted(group, key=lambda i: (-i["score"], i["ts"]))
        hi = group[0]
        lo = next((i for i in reversed(group) if (i["req"].get("arm") or "champion") != (hi["req"].get("arm") or
                   "champion") and i["score"] < hi["score"] and _norm(i["response"]) != _norm(hi["response"])), None)
        if lo is not None:
            add("preference", [hi, lo], hi["prompt"], hi["response"], lo["response"])
            chosen_side.add(id(hi))
    for it in eligible:
        if it["correction"]:  # one corpus row per text: the pair carries the correction as its chosen answer
            if _norm(it["correction"]) != _norm(it["response"]):
                add("preference", [it], it["prompt"], it["correction"], it["response"])
            else:
                add("instruction", [it], it["prompt"], it["correction"])
        elif good(it["fb"], cfg.good_stars) and id(it) not in chosen_side:  # a pair's chosen side is its SFT text
            add("instruction", [it], it["prompt"], it["response"])

    # near-duplicates: of the corpus, then of an earlier record of the batch (same kind)
    corpus_texts: list[str] = []
    corpus_path = _root_path(cfg.corpus_dir)
    corpus_status = "missing"
    if corpus_path.exists():
        from pipelines.schema import read_corpus

        corpus_texts = [t for t in read_corpus(corpus_path, columns=["text"])["text"].tolist() if t]
        corpus_status = f"{len(corpus_texts)} texts"
    texts = corpus_texts + [f"{r['prompt']}\n\n{r['chosen']}" for r in records]
    n = len(corpus_texts)
    for a, b, _ in verified_pairs(texts, nd) if records else []:
        if b < n:
            continue
        rb = records[b - n]
        if a < n:
            rb["status"] = "near_duplicate_corpus"
        elif rb["status"] is None and records[a - n]["status"] is None:
            rb["status"] = "near_duplicate_batch"

    # poisoning bound: records per key, in time order
    per_key: dict[str, int] = {}
    for r in sorted((r for r in records if r["status"] is None), key=lambda r: r["ts"]):
        if any(per_key.get(k, 0) >= cfg.max_records_per_key for k in r["keys"]):
            r["status"] = "key_cap"
            continue
        for k in r["keys"]:
            per_key[k] = per_key.get(k, 0) + 1

    kept = [r for r in records if r["status"] is None]
    keys = sorted({k for r in kept for k in r["keys"]})
    reason = volume_reason
    if volume_reason is None and len(keys) < cfg.min_distinct_keys:
        reason = f"too_few_keys: {len(keys)} distinct key(s) contribute, min_distinct_keys is {cfg.min_distinct_keys}"
        for r in kept:
            r["status"] = "too_few_keys"
        kept = []
    harvested = 0
    for it in eligible:
        mine = [r for r in records if it["fb"]["feedback_id"] in r["fids"]]
        if any(r["status"] is None for r in mine):
            harvested += 1
        else:
            exclude(next((r["status"] for r in mine if r["status"]), "not_useful"))

    stamp = until.strftime("%Y%m%dT%H%M%SZ")
    sources: list[dict[str, Any]] = []
    if kept and write:
        sources = write_batch(cfg, kept, stamp, inbox, flag_file)
    report = {
        "since": since.isoformat(), "until": until.isoformat(), "lines": fb_acc["lines"], "harvested": harvested,
        "excluded": dict(sorted(excluded.items())),
        "balanced": fb_acc["lines"] == harvested + sum(excluded.values()),
        "records": {"instruction": sum(r["kind"] == "instruction" for r in kept),
                    "preference": sum(r["kind"] == "preference" for r in kept)},
        "records_excluded": {s: sum(r["status"] == s for r in records) for s in
                             sorted({r["status"] for r in records if r["status"]})},
        "keys": {"contributing": len(keys), "per_key_records": dict(sorted(per_key.items())) if kept else {},
                 "capped": sorted({k for r in records if r["status"] == "key_cap" for k in r["keys"]})},
        "skipped": volume_reason is not None, "written": bool(sources), "reason": reason if reason else (None if sources or not write else
                                                                   "no records" if not kept else None),
        "batch": stamp, "inbox": inbox, "sources": sources, "licence": cfg.licence,
        # the next run starts after this batch's window (a run that wrote nothing leaves its lines for the next)
        "harvested_until": until.isoformat() if sources else (
            harvested_until.isoformat() if harvested_until is not None else None),
        "pii_redacted_at_harvest": pii_redacted,
        "injection_detector": injection.status if injection is not None else "none",
        "corpus": corpus_status, "near_duplicate_rule": nd.rule(),
        "request_log": {k: req_acc[k] for k in ("lines", "records", "rejected", "outside_window")} |
                       {"files": len(req_acc["files"])},
        "feedback_log": {"files": len(fb_acc["files"])},
    }
    if kept and not write:
        report["reason"] = "dry run: nothing written"
    from pipelines.io import write_json

    write_json(_root_path(cfg.report), report)
    return report


def write_batch(cfg: FlywheelConfig, kept: list[dict], stamp: str, inbox_dir: str,
                flag_file: str = READY) -> list[dict[str, Any]]:
    """The batch into the inbox: per kind, the data file then source.yaml (each atomic), then the flag file last."""
    import hashlib

    inbox = _root_path(inbox_dir)
    out = []
    for kind, suffix, fields in (("instruction", "sft", {"prompt": "prompt", "response": "response", "id": "id"}),
                                 ("preference", "preference",
                                  {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected", "id": "id"})):
        rows = [r for r in kept if r["kind"] == kind]
        if not rows:
            continue
        name = f"{cfg.source_prefix}_{suffix}"
        lines = []
        for r in rows:
            rec = {"prompt": r["prompt"]}
            rec |= {"response": r["chosen"]} if kind == "instruction" else {"chosen": r["chosen"],
                                                                            "rejected": r["rejected"]}
            rec["id"] = hashlib.sha256(json.dumps([kind, *r["fids"]]).encode()).hexdigest()[:32]
            lines.append(json.dumps(rec, ensure_ascii=False))
        folder = inbox / name
        data = folder / f"harvest-{stamp}.jsonl"
        _atomic_write(data, "\n".join(lines) + "\n")
        manifest = {"kind": kind, "format": "jsonl", "licence": cfg.licence, "pii": "redact", "fields": fields}
        _atomic_write(folder / "source.yaml", yaml.safe_dump(manifest, sort_keys=False))
        out.append({"source": name, "kind": kind, "file": str(data), "rows": len(rows)})
    _atomic_write(inbox / flag_file, json.dumps({"producer": "flywheel", "batch": stamp}) + "\n")
    return out


def run(params=None, *, until: datetime | None = None, write: bool = True, **overrides) -> dict[str, Any]:
    """The harvest as params.yaml configures it (`flywheel`, `landing`, `dedup.near_duplicate`, `serve.guard`):
    what `llmops flywheel harvest` and the llmops_flywheel DAG run."""
    from pipelines.config import config_from_params
    from pipelines.data.near_duplicates import NearDuplicate
    from pipelines.flywheel.config import load

    cfg, inbox, flag = load(params, **overrides)
    nd = config_from_params("dedup.near_duplicate", NearDuplicate, {}, params)
    return harvest(cfg, nd, injection=InjectionCheck.from_params(cfg, params), inbox=inbox, flag_file=flag,
                   until=until, write=write)
