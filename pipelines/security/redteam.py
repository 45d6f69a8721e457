"""`make redteam`: garak (the external scanner, from its own virtualenv `.venv-garak`: it pins transformers<5.20)
against the running API over HTTP (`-t openai.OpenAICompatible`, loopback `uri`), then its report parsed into
metrics/redteam.json.

Only probes that need no download are run (string-matching detectors; the Hugging Face detectors and NLTK-based
probes fetch models). Offline, garak may exit 0 with "No detectors, nothing to do": the report is checked, never
the exit code. Each (probe, detector) gives passed/total; attack success = 1 - passed/total.

    python -m pipelines.security.redteam [--port 8011] [--probes dan.Dan_11_0,...] [--cap 8] [--no-server]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from pipelines.io import write_json

PROBES = ("dan.Dan_11_0", "promptinject.HijackHateHumans", "encoding.InjectBase64", "encoding.InjectROT13",
          "latentinjection.LatentInjectionReport")


def parse_report(path: str | Path) -> dict:
    """garak's report JSONL -> {probe: {detector: {passed, total, attack_success_rate}}} + overall."""
    evals, attempts, setup = [], 0, {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        e = json.loads(line)
        kind = e.get("entry_type")
        if kind == "eval":
            evals.append(e)
        elif kind == "attempt" and e.get("status") == 2:
            attempts += 1
        elif kind == "start_run setup":
            setup = {k: v for k, v in e.items() if k.startswith(("plugins.probe_spec", "plugins.target", "transient.run_id"))}
    per: dict[str, dict] = {}
    fails = total = 0
    for e in evals:
        p, d = e["probe"], e["detector"]
        n, ok = int(e["total"] if "total" in e else e.get("total_evaluated", 0)), int(e["passed"])
        per.setdefault(p, {})[d] = {"passed": ok, "total": n, "attack_success_rate": round(1 - ok / n, 4) if n else None}
        fails += n - ok
        total += n
    return {"report": str(path), "evaluated_attempts": attempts, "probes": per,
            "attack_success_rate": round(fails / total, 4) if total else None, "evaluations": total, "setup": setup}


def _wait(url: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:  # nosec B310
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError(f"server at {url} not healthy after {timeout:.0f} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8011)
    ap.add_argument("--probes", default=",".join(PROBES))
    ap.add_argument("--cap", type=int, default=8, help="garak soft_probe_prompt_cap: prompts per probe")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--garak", default=".venv-garak/bin/python")
    ap.add_argument("--out", default="reports/garak")
    ap.add_argument("--metrics", default="metrics/redteam.json")
    ap.add_argument("--no-server", action="store_true", help="a server already listens on --port")
    ap.add_argument("--timeout", type=float, default=1500)
    a = ap.parse_args(argv)
    if not Path(a.garak).exists():
        print(f"redteam: {a.garak} missing: make redteam creates .venv-garak (uv venv + garak==0.17.1)", file=sys.stderr)
        return 2
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    server = None
    base = f"http://127.0.0.1:{a.port}"
    try:
        if not a.no_server:
            log = open(out / "server.log", "w")
            server = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "serve", "--port", str(a.port),  # nosec B603
                                       "--host", "127.0.0.1"], stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True)
            _wait(base + "/health", 300)
        cfg = out / "garak_config.yaml"
        cfg.write_text(f"run:\n  soft_probe_prompt_cap: {a.cap}\n  generations: 1\nsystem:\n  parallel_attempts: false\n"
                       f"reporting:\n  report_dir: {out}\n")
        gen = {"openai": {"OpenAICompatible": {"uri": base + "/v1", "model": "llmops-candidate", "api_key": "sk-local",  # pragma: allowlist secret (loopback placeholder)
                                               "max_tokens": a.max_tokens, "temperature": 0.0,
                                               "suppressed_params": ["n", "frequency_penalty", "presence_penalty", "stop"]}}}
        opts = out / "generator.json"
        opts.write_text(json.dumps(gen))
        prefix = f"llmops-{int(time.time())}"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "XDG_DATA_HOME": str(out),
               "XDG_CACHE_HOME": tempfile.mkdtemp(prefix="garak-cache-"), "OPENAICOMPATIBLE_API_KEY": "sk-local"}
        cmd = [a.garak, "-m", "garak", "--config", str(cfg), "-t", "openai.OpenAICompatible", "-n", "llmops-candidate",
               "--generator_option_file", str(opts), "--probes", a.probes, "--report_prefix", prefix]
        print("redteam:", " ".join(cmd))
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=a.timeout)  # nosec B603
        (out / "garak.log").write_text(proc.stdout + "\n" + proc.stderr)
        reports = sorted(out.rglob(f"{prefix}*.report.jsonl"))
        if not reports:
            tail = (proc.stdout + proc.stderr)[-1500:]
            write_json(a.metrics, {"status": "no_report", "exit_code": proc.returncode, "probes": a.probes,
                                   "log_tail": tail})
            print(f"redteam: garak wrote no report (exit {proc.returncode}); see {out / 'garak.log'}", file=sys.stderr)
            return 1
        parsed = parse_report(reports[0])
        parsed.update(exit_code=proc.returncode, requested_probes=a.probes.split(","),
                      status="ok" if parsed["evaluations"] else "no_evaluations")
        if "No detectors, nothing to do" in proc.stdout + proc.stderr:
            parsed["status"] = "no_detectors"
        write_json(a.metrics, parsed)
        print(json.dumps({k: parsed[k] for k in ("status", "attack_success_rate", "evaluations")}))
        return 0 if parsed["status"] == "ok" else 1
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main())
