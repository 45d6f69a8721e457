"""The guard's benchmark -> bench/results/guard.md (+ guard.json):

1. Detector table on the held-out by-source test split (the sample train_guard trained on, or `--shared` data):
   precision/recall/FPR at the trained threshold, AUROC; for injection the FPR on benign instruction prompts
   (MT-Bench, self-instruct user-oriented) apart from BIPIA's clean retrieved contexts, and the recall the detector
   would reach at FPR <= 0.05 on those benign prompts (an oracle threshold on test: an upper bound, not the shipped one).
2. Over-refusal: benign prompts that look dangerous (data/sample/security/over_refusal.jsonl): the injection
   detector's FPR and the whole input policy's block rate.
3. Latency the guard adds in the request path, with the server under load: the API (champion of the registry,
   uvicorn in-process, continuous batching) serves `--clients` concurrent clients; per request, what the input
   check added (serve.guard.parallel_input: the wait past the first token; off: its whole compute) plus the output
   check, measured inside the app; the variants of one setting (`--compare`: encoder_backend onnx / torch, or
   parallel_input on / off) alternating, side by side.

    .venv/bin/python bench/bench_guard.py [--requests 40] [--clients 4] [--rounds 3]
    .venv/bin/python bench/bench_guard.py --latency-only [--compare encoder_backend]  # -> bench/results/guard_latency.{json,md}
    .venv/bin/python bench/bench_guard.py --targets [--shared ../shared/data] [--skip-latency]  # -> guard_targets.{json,md}

4. `--targets` (issue 33): each target row of the issue for the shipped detectors (pipelines/security/artifacts):
   held out by source family (re-measured with --shared, else read from the shipped heldout.json), the shipped
   detectors re-scored on the repo's sample, and the latency they add under load (ONNX).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.security.detectors import auroc, choose_threshold, load_detector, rates_at  # noqa: E402
from pipelines.security import datasets  # noqa: E402

BENIGN_PROMPTS = {"mt_bench", "self_instruct_user", "alpaca_harmless_test"}


def detector_table(models: Path, data: dict) -> list[dict]:
    """Each detector on its held-out test split, at the operating point serving runs: the trained thresholds unless
    serve.guard.thresholds replaces them; for injection, user prompts at `injection` and retrieved contexts (BIPIA)
    at `indirect_injection` (train_guard's threshold_context)."""
    rows = []
    overrides = _serving_thresholds()
    for name in ("injection", "toxicity", "harmful_compliance"):
        det = load_detector(models, name)
        test = [r for r in data[name] if r["split"] == "test"]
        t0 = time.perf_counter()
        if det.kind == "text":
            s = np.array(det.score([r["text"] for r in test]))
        else:
            s = np.array(det.score([r["request"] for r in test], [r["response"] for r in test]))
        ms = (time.perf_counter() - t0) * 1000 / len(test)
        y = np.array([r["label"] for r in test])
        t_prompt = float(overrides.get(name, det.threshold))
        thr = np.full(len(test), t_prompt)
        row = {"detector": name, "n": len(test), "threshold": round(t_prompt, 4),
               "threshold_from": "serve.guard.thresholds" if name in overrides else "train_guard"}
        if name == "injection":
            t_ctx = float(overrides.get("indirect_injection", det.meta.get("threshold_context", det.threshold)))
            ctx = np.array([datasets.is_context(r) for r in test])
            thr = np.where(ctx, t_ctx, t_prompt)
            row["threshold_context"] = round(t_ctx, 4)
        row.update({k: v for k, v in rates_at(y, s, thr).items() if k in ("precision", "recall", "fpr", "f1")})
        row.update({"auroc": round(auroc(y, s), 4), "ms_per_item": round(ms, 2)})
        if name == "injection":
            benign = np.array([r["source"] in BENIGN_PROMPTS for r in test])
            pos = y == 1
            direct = (benign | pos) & ~ctx
            row["fpr_benign_prompts"] = rates_at(y[benign], s[benign], t_prompt)["fpr"]
            clean = ctx & ~pos
            row["fpr_bipia_clean_contexts"] = round(float(np.mean(s[clean] >= t_ctx)), 4) if clean.any() else None
            row["recall_direct_attacks"] = rates_at(y[direct], s[direct], t_prompt)["recall"]
            row["recall_indirect_attacks"] = rates_at(y[ctx], s[ctx], t_ctx)["recall"]
            t, _ = choose_threshold(y[benign | pos], s[benign | pos], "max_fpr", 0.05)
            row["oracle_recall_at_fpr_0.05_benign"] = rates_at(y[benign | pos], s[benign | pos], t)["recall"]
            row["recall_per_source"] = {
                src: round(float(np.mean((s >= thr)[np.array([r["source"] == src for r in test])])), 4)
                for src in sorted({r["source"] for r in test if r["label"] == 1})}
        rows.append(row)
    return rows


def _serving_thresholds() -> dict[str, float]:
    from pipelines.config import config_from_params
    from pipelines.security.guard import GuardConfig

    return dict(config_from_params("serve.guard", GuardConfig).thresholds)


def over_refusal(models: Path, path: Path) -> dict:
    from pipelines.config import config_from_params
    from pipelines.security.guard import Guard, GuardConfig

    prompts = [json.loads(l)["prompt"] for l in path.read_text().splitlines() if l.strip()]
    det = load_detector(models, "injection")
    t = _serving_thresholds().get("injection", det.threshold)
    flagged = [p for p, s in zip(prompts, det.score(prompts)) if s >= t]
    guard = Guard(config_from_params("serve.guard", GuardConfig, {"models_dir": str(models)}), ROOT)
    blocked = [p for p in prompts if guard.check_input([{"role": "user", "content": p}]).blocked]
    return {"n": len(prompts), "injection_fpr": round(len(flagged) / len(prompts), 4), "flagged": flagged,
            "input_policy_block_rate": round(len(blocked) / len(prompts), 4), "blocked": blocked}


def latency_under_load(models: Path, n_requests: int, clients: int, max_tokens: int, parallel: bool = True,
                       backend: str | None = None) -> dict:
    """One server, `clients` concurrent clients. Per request: the guard's input compute, what the input check
    ADDED (parallel_input: the wait past the first generated token; sequential: all of its compute), the output
    check (sequential), and the request latency. The response's vector is evicted from the encoder's LRU before
    the output check, so a repeated greedy answer is not scored for free."""
    import httpx
    import uvicorn

    from pipelines.config import config_from_params
    from pipelines.models.registry import RegistryConfig
    from pipelines.security import detectors as D
    from pipelines.security.guard import PendingInput
    from pipelines.serving.app import create_app
    from pipelines.serving.config import ServeConfig

    guard = {"models_dir": str(models), "parallel_input": parallel, **({"encoder_backend": backend} if backend else {})}
    cfg = config_from_params("serve", ServeConfig, {"guard": guard,
                                                    "reload_poll_s": 0, "cache": {"max_entries": 0},
                                                    "request_log": "/tmp/bench_guard_requests.jsonl"})
    app = create_app(cfg, config_from_params("registry", RegistryConfig))
    rt = app.state.runtime
    inputs: list = []
    outputs: list[float] = []
    lock = threading.Lock()
    orig_finish = PendingInput.finish

    def finish(self):
        v = orig_finish(self)
        with lock:
            inputs.append(v)
        return v
    PendingInput.finish = finish
    orig_output = rt.guard.check_output

    def check_output(messages, response, key_id=None):
        for enc in list(D._ENCODERS.values()):
            with enc._lock:
                for k in [k for k in enc._lru if k and (k in response or response.strip()[:40] in k)]:
                    enc._lru.pop(k, None)
        v = orig_output(messages, response, key_id)
        with lock:
            outputs.append(v.seconds)
        return v
    rt.guard.check_output = check_output
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    while not server.started:
        time.sleep(0.2)
    url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}/v1/chat/completions"
    topics = ["the moon", "rivers", "bread", "chess", "volcanoes", "trains", "bees", "jazz", "glass", "tea"]
    lat = []

    def one(i):
        t0 = time.perf_counter()
        r = httpx.post(url, timeout=300, json={"model": "llmops-candidate", "max_tokens": max_tokens,
                                               "temperature": 0, "messages": [{"role": "user", "content":
                                               f"Tell me one fact about {topics[i % len(topics)]} (#{i})."}]})
        lat.append(time.perf_counter() - t0)
        return r.status_code

    try:
        one(0)  # warm-up (first forward passes, tokenizer caches)
        inputs.clear(), outputs.clear(), lat.clear()
        for enc in list(D._ENCODERS.values()):  # the encoders outlive a run: the same prompts would be LRU hits
            with enc._lock:
                enc._lru.clear()
        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            codes = list(pool.map(one, range(1, n_requests + 1)))
        wall = time.perf_counter() - t0
    finally:
        PendingInput.finish = orig_finish
        server.should_exit = True
        th.join(60)
    in_compute = [v.seconds for v in inputs]
    in_added = [v.added if v.added is not None else v.seconds for v in inputs]
    per_req = [a + b for a, b in zip(in_added, outputs)]
    q = lambda xs, p: round(float(np.percentile(xs, p)) * 1000, 2) if xs else None  # noqa: E731
    return {"parallel_input": parallel, "encoder_backend": rt.guard.cfg.encoder_backend, "requests": n_requests, "clients": clients, "max_tokens": max_tokens,
            "status_200": codes.count(200),
            "guard_added_ms_p50": q(per_req, 50), "guard_added_ms_p90": q(per_req, 90),
            "input_compute_ms_p50": q(in_compute, 50), "input_added_ms_p50": q(in_added, 50),
            "output_ms_p50": q(outputs, 50), "request_ms_p50": q(lat, 50), "wall_s": round(wall, 1)}


VARIANTS = {  # --compare: the setting varied side by side, and its values (first: the shipped default)
    "parallel_input": [("true", {"parallel": True}), ("false", {"parallel": False})],
    "encoder_backend": [("onnx", {"backend": "onnx"}), ("torch", {"backend": "torch"})],
}


def latency_side_by_side(models: Path, n_requests: int, clients: int, max_tokens: int, rounds: int,
                         compare: str = "parallel_input") -> dict:
    """The variants of `compare`, alternating (ABBA...), `rounds` runs each: medians of the per-run p50s."""
    variants = VARIANTS[compare]
    runs = []
    for r in range(rounds):
        for name, kw in (variants if r % 2 == 0 else variants[::-1]):
            runs.append({"variant": name, **latency_under_load(models, n_requests, clients, max_tokens, **kw)})
            print(json.dumps(runs[-1]), flush=True)
    med = lambda v, k: round(statistics.median(x[k] for x in runs if x["variant"] == v), 2)  # noqa: E731
    keys = ("guard_added_ms_p50", "guard_added_ms_p90", "input_compute_ms_p50", "input_added_ms_p50",
            "output_ms_p50", "request_ms_p50")
    return {"compare": compare, "rounds": rounds, "requests": n_requests, "clients": clients,
            "max_tokens": max_tokens, "runs": runs, "medians": {v: {k: med(v, k) for k in keys} for v, _ in variants}}


def write_latency(lat: dict, models: Path) -> list[str]:
    lines = ["## Guard latency in the request path, server under load", "",
             f"{lat['requests']} chat requests from {lat['clients']} concurrent clients per run, max_tokens "
             f"{lat['max_tokens']}, continuous batching, 2 CPU cores shared with the generation; serve.guard."
             f"{lat['compare']} varied, alternating, {lat['rounds']} runs each, medians of the runs' p50s. "
             f"Detectors: {models}.", "",
             f"| serve.guard.{lat['compare']} | guard added p50 (ms) | p90 | input compute p50 | input added p50 | "
             "output p50 | request p50 |", "|---|---|---|---|---|---|---|"]
    for v, m in lat["medians"].items():
        lines.append(f"| {v} | {m['guard_added_ms_p50']} | {m['guard_added_ms_p90']} | {m['input_compute_ms_p50']} "
                     f"| {m['input_added_ms_p50']} | {m['output_ms_p50']} | {m['request_ms_p50']} |")
    return lines + [""]


def shipped_targets(shipped: Path, shared: str | None, sample_root: Path) -> dict:
    """The issue-33 target rows for the shipped detectors. With `shared` (../shared/data) the held-out figures are
    re-measured: the shipped recipe (params.yaml train_guard.shipped) rebuilt into a temporary directory,
    leave-one-family-out, from the embedding cache; otherwise they are read from the shipped heldout.json. The
    shipped detectors themselves are re-scored on the repository's sample and on the over-refusal set."""
    import tempfile

    from pipelines.config import config_from_params
    from pipelines.security import ship

    if shared:
        from pipelines.embeddings.encoder import resolve_model_dir
        from pipelines.security.features import Encoder
        from pipelines.stages.train_guard import Config

        cfg = config_from_params("train_guard", Config)
        enc = Encoder(resolve_model_dir(cfg.model_package, cfg.model_path), threads=cfg.threads,
                      cache_dir=str(ROOT / cfg.cache_dir) if cfg.cache_dir else None)
        s = cfg.shipped
        with tempfile.TemporaryDirectory() as tmp:
            held = ship.rebuild(shared, tmp, enc, caps=s.caps, judge_caps=s.judge_caps, heads=s.heads,
                                max_fpr=s.max_fpr, judge_max_fpr=s.judge_max_fpr, seed=cfg.seed, max_chars=s.max_chars,
                                sample_root=sample_root, encoder_meta={"model_package": cfg.model_package,
                                                                       "model_path": cfg.model_path,
                                                                       "quantization": None})
            held = json.loads((Path(tmp) / "heldout.json").read_text())
        how = f"re-measured from {shared} (shipped recipe rebuilt in a temporary directory)"
    else:
        held = json.loads((shipped / "heldout.json").read_text())
        how = f"read from {shipped / 'heldout.json'} (written by train_guard.source: rebuild)"
    manifest = json.loads((shipped / "manifest.json").read_text())
    now = ship.sample_scores(shipped, sample_root)
    drift = max(abs(a - b) for k in now for a, b in zip(now[k], manifest["sample_scores"][k]))
    j = held["harmful_compliance"]["heldout"]
    rows = [{k: t[k] for k in ("check", "target", "value", "pooled", "n", "met")} for t in held["injection"]["targets"]]
    rows.append({"check": "output judge on jailbroken answers (proxy labels)", "target": "recall >= 0.8 at false alarm <= 0.1",
                 "value": j["recall"], "false_alarm": j["false_alarm"], "n": held["harmful_compliance"]["n"]["rows"],
                 "met": bool(j["recall"] >= 0.8 and j["false_alarm"] <= 0.1)})
    over = over_refusal(shipped, ROOT / "data/sample/security/over_refusal.jsonl")
    return {"version": manifest["version"], "heldout_from": how, "targets": rows,
            "multi_turn_recall": held["injection"]["heldout"]["categories"].get("multi_turn", {}).get("flagged_rate"),
            "per_source": held["injection"]["heldout"]["sources"], "judge_per_category": j["per_category"],
            "judge_per_kind": j["per_kind"], "sample_scores_max_abs_diff": drift,
            "over_refusal_shipped": {k: over[k] for k in ("n", "injection_fpr", "input_policy_block_rate", "blocked")}}


def targets_markdown(t: dict, latency: dict | None) -> list[str]:
    lines = ["# Guard targets for the shipped detectors (issue 33; bench/bench_guard.py --targets)", "",
             f"Shipped version {t['version']}; held-out figures {t['heldout_from']}. Held out = each source family "
             "left out of training in turn (leave-one-family-out), scored at the shipped threshold; value = macro mean "
             "over the sources of the row.", "", "| check | target | value | pooled | n | met |", "|---|---|---|---|---|---|"]
    for r in t["targets"]:
        v = r["value"] if "false_alarm" not in r else f"recall {r['value']} at false alarm {r['false_alarm']}"
        lines.append(f"| {r['check']} | {r['target']} | {v} | {r.get('pooled', '')} | {r['n']} | {'yes' if r['met'] else 'NO'} |")
    if latency:
        m = latency["medians"][next(iter(latency["medians"]))]
        lines.append(f"| guard latency added under load (p50, {next(iter(latency['medians']))}) | <= 20 ms | "
                     f"{m['guard_added_ms_p50']} ms | | {latency['requests']} x {latency['rounds']} | "
                     f"{'yes' if m['guard_added_ms_p50'] <= 20 else 'NO'} |")
    lines += ["", f"Multi-turn attacks (templated, held out): recall {t['multi_turn_recall']}. Shipped detectors on "
              f"the repo's sample: max |score - recorded| = {t['sample_scores_max_abs_diff']:.2e}. Over-refusal set "
              f"(data/sample/security/over_refusal.jsonl, in the shipped training): injection flags "
              f"{t['over_refusal_shipped']['injection_fpr']}.", "",
              "| held-out source | category | label | n | flagged rate | licence |", "|---|---|---|---|---|---|"]
    for s, v in sorted(t["per_source"].items(), key=lambda kv: (kv[1]["label"], kv[1]["category"], kv[0])):
        lines.append(f"| {s} | {v['category']} | {v['label']} | {v['n']} | {v['flagged_rate']} | {v['licence']} |")
    lines += ["", "Output judge by harm category (held out by request source and response style):", "",
              "| category | n | recall | false alarm |", "|---|---|---|---|"]
    lines += [f"| {c} | {v['n']} | {v['recall']} | {v['false_alarm']} |" for c, v in t["judge_per_category"].items()]
    return lines + [""]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=str(ROOT / "models/guard"))
    ap.add_argument("--shared", default=None, help="../shared/data: the full test split instead of the sample")
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--rounds", type=int, default=3, help="latency runs per variant")
    ap.add_argument("--compare", choices=sorted(VARIANTS), default="encoder_backend",
                    help="the serve.guard setting the latency side by side varies")
    ap.add_argument("--latency-only", action="store_true",
                    help="only the latency side by side -> bench/results/guard_latency.{json,md}")
    ap.add_argument("--targets", action="store_true",
                    help="issue 33: the target rows for the shipped detectors -> bench/results/guard_targets.{json,md}")
    ap.add_argument("--shipped", default=str(ROOT / "pipelines/security/artifacts"))
    a = ap.parse_args()
    res = ROOT / "bench/results"
    if a.targets:
        t = shipped_targets(Path(a.shipped), a.shared, ROOT / "data/sample")
        if not a.skip_latency:
            from pipelines.security import ship

            with __import__("tempfile").TemporaryDirectory() as tmp:
                ship.install(a.shipped, tmp)
                t["latency"] = latency_side_by_side(Path(tmp), a.requests, a.clients, a.max_tokens, a.rounds,
                                                    "encoder_backend")
        (res / "guard_targets.json").write_text(json.dumps(t, indent=1))
        lines = targets_markdown(t, t.get("latency"))
        if t.get("latency"):
            lines += write_latency(t["latency"], Path(a.shipped))
        (res / "guard_targets.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
        return
    if a.latency_only:
        lat = latency_side_by_side(Path(a.models), a.requests, a.clients, a.max_tokens, a.rounds, a.compare)
        (res / "guard_latency.json").write_text(json.dumps(lat, indent=1))
        lines = ["# Guard latency (bench/bench_guard.py --latency-only)", ""] + write_latency(lat, Path(a.models))
        (res / "guard_latency.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
        return
    models = Path(a.models)
    data = datasets.build(a.shared) if a.shared else datasets.load_sample(ROOT / "data/sample")
    table = detector_table(models, data)
    over = over_refusal(models, ROOT / "data/sample/security/over_refusal.jsonl")
    latency = None if a.skip_latency else latency_side_by_side(models, a.requests, a.clients, a.max_tokens, a.rounds,
                                                               a.compare)
    out = {"data": a.shared or "shipped sample", "detectors": table, "over_refusal": over, "latency": latency}
    (res / "guard.json").write_text(json.dumps(out, indent=1))
    lines = ["# Guard benchmark (bench/bench_guard.py)", "",
             f"Data: {out['data']}; test split = sources never seen in training (see models/guard/*/card.md).", "",
             "| detector | n test | threshold | precision | recall | FPR | F1 | AUROC | ms/item |", "|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        lines.append(f"| {r['detector']} | {r['n']} | {r['threshold']} | {r['precision']} | {r['recall']} | {r['fpr']} | "
                     f"{r['f1']} | {r['auroc']} | {r['ms_per_item']} |")
    inj = table[0]
    lines += ["", f"Injection, at serving's operating point (user prompts {inj['threshold']}, retrieved contexts "
              f"{inj['threshold_context']}; from {inj['threshold_from']}): recall {inj['recall']} (direct attacks "
              f"{inj['recall_direct_attacks']}, indirect {inj['recall_indirect_attacks']}); FPR on benign instruction "
              f"prompts {inj['fpr_benign_prompts']}, on BIPIA clean retrieved contexts {inj['fpr_bipia_clean_contexts']}; "
              f"recall at an oracle threshold with FPR <= 0.05 on benign prompts {inj['oracle_recall_at_fpr_0.05_benign']} "
              "(target 0.9). Recall per held-out source: " + ", ".join(f"{k} {v}" for k, v in inj["recall_per_source"].items()) + ".",
              "", f"Over-refusal ({over['n']} benign prompts that look dangerous): injection detector FPR {over['injection_fpr']}, "
              f"input policy block rate {over['input_policy_block_rate']}; blocked: {over['blocked']}", ""]
    if latency:
        lines += write_latency(latency, models)
    (res / "guard.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
