"""Serving throughput and latency: the batched API vs its naive one-at-a-time path vs `transformers serve`, side by
side in one run, then a 60 s soak of 32 concurrent streams.

Three servers on loopback, each a separate process on the same model directory (models/base, SmolLM2-135M,
float32, CPU), all started before measuring and idle while another is measured:

- `batched`: `pipelines.serving.app` with `serve.batching.mode=continuous` (transformers ContinuousBatchingManager)
- `naive`:   the same app with `mode=naive` (one `generate` at a time under a lock: the baseline)
- `hf`:      `transformers serve models/base --device cpu --continuous-batching --cb-num-blocks N
             --cb-max-batch-tokens M` (same KV-cache size as ours)

Our two servers serve the base model as the champion slot directly (no registry), with auth off (loopback), the
response cache off (every request generates), the guard off (serve.guard: it measures the engine, not the detectors)
and the request log on (PII redaction included, as in production).

Load: C concurrent closed-loop clients (C in --levels), each sending streaming chat completions back to back
(greedy, `max_tokens` = --max-tokens, distinct short prompts, the same prompt list for every server) until the
level's requests (`n_requests`: min(max(8, 2C), 32)) are done. Per level and server: req/s and completion tok/s over the level's wall
time, latency and time-to-first-token p50/p95. Completion tokens are counted the same way for every server (the
streamed text re-tokenized by the client, after the clock stops). The levels run interleaved (repeat r: level L:
server S) and the tables give medians over --repeats.

Soak: --soak-clients streams held open for --soak-s seconds against `batched` (each client re-opens a stream as
soon as the previous one ends); every non-200 status, malformed chunk or stream without `[DONE]` is an error.

    .venv/bin/python bench/bench_serve.py [--repeats 3] [--max-tokens 32] [--levels 1,8,32] [--soak-s 60]

Writes bench/results/serve.json and bench/results/serve.md.

`--mixed` (issue 32) measures a mixed-parameter load instead: 8 closed-loop clients send streaming chat
completions cycling through four kinds: greedy, greedy with stop sequences (both on the continuous-batching path),
frequency/presence penalties and JSON mode (`response_format` json_object; both one-at-a-time, see
docs/serving/conformance.md). The greedy share's throughput is its completion tokens over the time until its last
request finished; the baseline is the same greedy requests (the first --baseline-requests of them) sent one at a time
by one client to the `naive` server, right before the mixed load (the box's load drifts).
Then, in this process, JSON mode's per-token overhead: the same prompts decoded on the one-at-a-time path with and
without the json_object grammar (ms per token, and the grammar's own mask/accept time per token), plus llguidance's
mask time per token on the same token sequences (the library not chosen).

    .venv/bin/python bench/bench_serve.py --mixed [--repeats 2] [--max-tokens 24] [--clients 8] \\
        [--baseline-requests 8] [--json-prompts 4] [--pauses 0,500]

`--pauses` runs one batched server per `serve.batching.unbatched_pause_ms` value against the same load, side by
side in each repeat: how much giving the CPU to the batch (the one-at-a-time path waiting while batched requests
generate) lifts the greedy share, and what it costs the one-at-a-time share.

Writes bench/results/serve_params.json and bench/results/serve_params.md.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT_JSON = REPO / "bench" / "results" / "serve.json"
OUT_MD = REPO / "bench" / "results" / "serve.md"
OUT_PARAMS = REPO / "bench" / "results" / "serve_params.json"
sys.path.insert(0, str(REPO))

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONHASHSEED": "0",
       "TOKENIZERS_PARALLELISM": "false"}

SUBJECTS = ["a cat", "the sea", "a robot", "a train", "the moon", "a garden", "a city", "a dragon", "a teacher",
            "a river", "a storm", "a violin", "a lighthouse", "a bakery", "a mountain", "a forest"]
STYLES = ["Write a short story about {}.", "Describe {} in a few sentences.", "Tell me three facts about {}.",
          "Write a poem about {}."]


def prompts(n: int) -> list[str]:
    out = []
    for i in range(n):
        out.append(STYLES[(i // len(SUBJECTS)) % len(STYLES)].format(SUBJECTS[i % len(SUBJECTS)]))
    return out


# ---------------------------------------------------------------------------------------------------- servers
def child_server(mode: str, base: str, port: int, num_blocks: int, max_batch_tokens: int, log_dir: str,
                 pause_ms: float = 0.0) -> None:
    """Our API in this process, serving `base` directly as the champion slot."""
    import uvicorn

    from pipelines.models import lm
    from pipelines.serving.app import create_app
    from pipelines.serving.auth import KeyStore
    from pipelines.serving.config import ServeConfig
    from pipelines.serving.engine import Engine
    from pipelines.serving.reload import Served
    from pipelines.config import config_from_params
    from pipelines.stages.registry import shared_config

    cfg = config_from_params("serve", ServeConfig, {
        "host": "127.0.0.1", "port": port, "reload_poll_s": 0, "request_log": f"{log_dir}/{mode}.jsonl",
        "cache": {"max_entries": 0}, "guard": {"enabled": False},
        "batching": {"mode": mode, "num_blocks": num_blocks, "max_batch_tokens": max_batch_tokens,
                     "unbatched_pause_ms": pause_ms},
        "limits": {"max_concurrent": 256, "rate_limit_rps": 1e6, "rate_limit_burst": 1000000,
                   "request_timeout_s": 3600}})
    registry = shared_config("registry", tracking_uri=f"sqlite:///{log_dir}/none.db", model_name="base")
    app = create_app(cfg, registry, keys=KeyStore([]), manage_lifecycle=False)
    rt = app.state.runtime
    engine = Engine(lm.load_model(base, None, cache=False), mode, num_blocks, max_batch_tokens, pause_ms)
    asyncio.run(engine.warmup())
    rt.slots.served[registry.alias] = Served(alias=registry.alias, version="base", engine=engine, run_id=None,
                                             source=base, base_model=base, adapter_sha256=None, prompt_sha256=None,
                                             loaded_at=time.time())
    rt._models_changed()
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    def __init__(self, name: str, argv: list[str], port: int, log: Path):
        self.name, self.port, self.log = name, port, log
        self.url = f"http://127.0.0.1:{port}"
        self.fh = open(log, "w")
        self.p = subprocess.Popen(argv, cwd=REPO, env=ENV, stdout=self.fh, stderr=subprocess.STDOUT,
                                  start_new_session=True)

    def wait_ready(self, path: str, timeout: float = 300) -> None:
        import httpx

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.p.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.p.returncode}; see {self.log}:\n"
                                   + self.log.read_text()[-3000:])
            try:
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s; see {self.log}")

    def stop(self) -> None:
        if self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGTERM)
            try:
                self.p.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait(10)
        self.fh.close()


# ---------------------------------------------------------------------------------------------------- load
async def one_stream(client, url: str, model: str, prompt: str, max_tokens: int, ours: bool,
                     extra: dict | None = None) -> dict:
    """One streaming chat completion. `ours`: our API (greedy by `temperature: 0`, usage chunk, `[DONE]` required);
    else transformers serve, which rejects `stream_options`, is greedy by the model's generation config when no
    temperature is sent (its batching manager takes the FIRST request's sampling settings for all), and ends its
    streams after the finish_reason chunk without `data: [DONE]`."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "stream": True}
    if ours:
        body.update(temperature=0.0, stream_options={"include_usage": True})
    body.update(extra or {})
    t0 = time.perf_counter()
    ttft, text, done, error, finished = None, [], False, None, False
    try:
        async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                await r.aread()
                return {"ok": False, "error": f"HTTP {r.status_code}: {r.text[:200]}"}
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    error = f"error chunk: {chunk['error']}"
                    break
                for c in chunk.get("choices") or []:
                    finished = finished or bool(c.get("finish_reason"))
                    piece = (c.get("delta") or {}).get("content")
                    if piece:
                        if ttft is None:
                            ttft = time.perf_counter() - t0
                        text.append(piece)
    except Exception as exc:  # noqa: BLE001 - counted
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    if not ours and finished and not error:
        done = True
    if error or not done:
        return {"ok": False, "error": error or ("stream ended without [DONE]" if finished else
                                                 "stream ended before its finish_reason")}
    return {"ok": True, "latency": time.perf_counter() - t0, "ttft": ttft, "text": "".join(text),
            "end": time.perf_counter()}


async def run_level(url: str, model: str, clients: int, n_requests: int, max_tokens: int, usage: bool) -> dict:
    import httpx

    todo = list(enumerate(prompts(n_requests)))
    results: list[dict] = []
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(1800, connect=10), limits=limits) as client:
        async def worker():
            while todo:
                _, p = todo.pop(0)
                results.append(await one_stream(client, url, model, p, max_tokens, usage))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - t0
    return {"wall": wall, "results": results}


def n_requests(clients: int) -> int:
    """Requests per level: two rounds per client, at least 8, at most 32 (32 clients: one full round)."""
    return min(max(8, 2 * clients), 32)


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summarize(run: dict, tok) -> dict:
    ok = [r for r in run["results"] if r["ok"]]
    tokens = sum(len(tok.encode(r["text"], add_special_tokens=False)) for r in ok)
    lat = [r["latency"] for r in ok]
    ttft = [r["ttft"] for r in ok if r["ttft"] is not None]
    return {"requests": len(run["results"]), "errors": len(run["results"]) - len(ok),
            "error_samples": [r["error"] for r in run["results"] if not r["ok"]][:3],
            "wall_s": run["wall"], "req_per_s": len(ok) / run["wall"], "tok_per_s": tokens / run["wall"],
            "completion_tokens": tokens, "p50_s": pct(lat, 0.5), "p95_s": pct(lat, 0.95),
            "ttft_p50_s": pct(ttft, 0.5), "ttft_p95_s": pct(ttft, 0.95)}


async def soak(url: str, model: str, clients: int, seconds: float, max_tokens: int) -> dict:
    import httpx

    stop_at = time.perf_counter() + seconds
    stats = {"streams": 0, "errors": 0, "error_samples": [], "tokens_text": []}
    open_now = {"n": 0, "min_while_running": clients, "samples": []}
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    ps = prompts(64)

    async with httpx.AsyncClient(timeout=httpx.Timeout(1800, connect=10), limits=limits) as client:
        async def worker(i):
            k = i
            while time.perf_counter() < stop_at:
                open_now["n"] += 1
                r = await one_stream(client, url, model, ps[k % len(ps)], max_tokens, True)
                open_now["n"] -= 1
                k += clients
                stats["streams"] += 1
                if not r["ok"]:
                    stats["errors"] += 1
                    if len(stats["error_samples"]) < 5:
                        stats["error_samples"].append(r["error"])

        async def sampler():
            while time.perf_counter() < stop_at:
                open_now["samples"].append(open_now["n"])
                await asyncio.sleep(1.0)

        t0 = time.perf_counter()
        await asyncio.gather(sampler(), *(worker(i) for i in range(clients)))
        wall = time.perf_counter() - t0
    samples = open_now["samples"]
    return {"clients": clients, "seconds": seconds, "wall_s": wall, "streams": stats["streams"],
            "errors": stats["errors"], "error_samples": stats["error_samples"],
            "open_streams_min": min(samples) if samples else None,
            "open_streams_median": statistics.median(samples) if samples else None}


# ---------------------------------------------------------------------------------------------------- report
def med(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def fmt(x, nd=2):
    return "-" if x is None else f"{x:.{nd}f}"


def render(result: dict) -> str:
    a = result["args"]
    lines = ["# Serving benchmark", "",
             f"`{result['command']}` on {result['machine']} ({result['date']}). Model {a['base']} (SmolLM2-135M, "
             f"float32, CPU); greedy, `max_tokens={a['max_tokens']}`, streaming, short distinct prompts; "
             f"loopback; medians over {a['repeats']} interleaved repeats; requests per level min(max(8, 2 x clients), "
             f"32). Load average before the run: {result['load_before']}, after: {result['load_after']}.",
             "", "| clients | server | req/s | tok/s | p50 s | p95 s | TTFT p50 s | TTFT p95 s | errors |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for level in result["levels"]:
        for name in result["servers"]:
            m = result["medians"].get(f"{name}@{level}")
            if m is None:
                continue
            lines.append(f"| {level} | {name} | {fmt(m['req_per_s'])} | {fmt(m['tok_per_s'], 1)} | {fmt(m['p50_s'])} "
                         f"| {fmt(m['p95_s'])} | {fmt(m['ttft_p50_s'])} | {fmt(m['ttft_p95_s'])} | {m['errors']} |")
    lines += ["", "Ratios (median tok/s; req/s in brackets):", "",
              "| clients | batched / naive | batched / transformers serve |", "|---:|---:|---:|"]
    for level in result["levels"]:
        r = result["ratios"].get(str(level), {})
        lines.append(f"| {level} | {fmt(r.get('batched_vs_naive_tok'))}x ({fmt(r.get('batched_vs_naive_req'))}x) | "
                     f"{fmt(r.get('batched_vs_hf_tok'))}x ({fmt(r.get('batched_vs_hf_req'))}x) |")
    if result.get("hf_error"):
        lines += ["", f"transformers serve: {result['hf_error']}"]
    s = result.get("soak")
    if s:
        lines += ["", f"Soak (batched): {s['clients']} concurrent streams for {s['seconds']:.0f} s: {s['streams']} "
                      f"streams completed, **{s['errors']} errors**, open streams sampled each second: min "
                      f"{s['open_streams_min']}, median {s['open_streams_median']}."]
        if s["error_samples"]:
            lines.append(f"Error samples: {s['error_samples']}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------- mixed (issue 32)
KINDS = (("greedy", {}), ("stop", {"stop": ["\n\n", "5."]}),
         ("penalty", {"frequency_penalty": 0.6, "presence_penalty": 0.4}),
         ("json", {"response_format": {"type": "json_object"}}))
GREEDY_KINDS = ("greedy", "stop")


def mixed_requests(n: int) -> list[tuple[str, str, dict]]:
    ps = prompts(n)
    out = []
    for i in range(n):
        kind, extra = KINDS[i % len(KINDS)]
        out.append((kind, ps[i] + (" Answer as a JSON object." if kind == "json" else ""), extra))
    return out


async def run_mixed(url: str, clients: int, reqs: list[tuple[str, str, dict]], max_tokens: int) -> dict:
    import httpx

    todo = list(reqs)
    results: list[dict] = []
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(1800, connect=10), limits=limits) as client:
        async def worker():
            while todo:
                kind, p, extra = todo.pop(0)
                r = await one_stream(client, url, "base", p, max_tokens, True, extra)
                results.append({**r, "kind": kind})

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - t0
    return {"t0": t0, "wall": wall, "results": results}


def share(run: dict, kinds: tuple[str, ...], tok) -> dict:
    rows = [r for r in run["results"] if r["kind"] in kinds]
    ok = [r for r in rows if r["ok"]]
    tokens = sum(len(tok.encode(r["text"], add_special_tokens=False)) for r in ok)
    span = max((r["end"] for r in ok), default=run["t0"]) - run["t0"]
    return {"requests": len(rows), "errors": len(rows) - len(ok), "tokens": tokens, "span_s": span,
            "tok_per_s": tokens / span if span > 0 else None, "p50_s": pct([r["latency"] for r in ok], 0.5),
            "error_samples": [r["error"] for r in rows if not r["ok"]][:3]}


def json_overhead(base: str, n_prompts: int, max_tokens: int, threads: int) -> dict:
    """In-process: ms/token of the one-at-a-time path with and without the json_object grammar on the same prompts,
    the grammar's own time per token (xgrammar), and llguidance's mask time per token on the same token sequences."""
    import torch

    from pipelines.models import lm
    from pipelines.serving.engine import Engine
    from pipelines.serving.sampling import SamplingParams

    torch.set_num_threads(threads)
    loaded = lm.load_model(base, None, cache=False)
    engine = Engine(loaded, "naive", 16, 256)
    tok = loaded.tokenizer
    grammar = engine.grammars().json_object()
    asks = [lm.chat_prompt_ids(tok, p + " Answer as a JSON object.") for p in prompts(n_prompts)]
    out = {"plain": {"tokens": 0, "s": 0.0}, "json": {"tokens": 0, "s": 0.0, "grammar_s": 0.0}}
    seqs = []
    asyncio.run(engine.complete(asks[0], max_new_tokens=4, params=SamplingParams()))  # warm
    for ids in asks:
        for name, params in (("plain", SamplingParams()), ("json", SamplingParams(constraint=grammar))):
            t0 = time.perf_counter()
            done = asyncio.run(engine.complete(ids, max_new_tokens=max_tokens, params=params))
            out[name]["s"] += time.perf_counter() - t0
            out[name]["tokens"] += done.completion_tokens
            if name == "json":
                out[name]["grammar_s"] += done.grammar_seconds
                seqs.append(tok(done.text, add_special_tokens=False)["input_ids"])
    res = {k: {**v, "ms_per_token": 1000 * v["s"] / max(1, v["tokens"])} for k, v in out.items()}
    res["json"]["grammar_ms_per_token"] = 1000 * out["json"]["grammar_s"] / max(1, out["json"]["tokens"])
    res["overhead_ms_per_token"] = res["json"]["ms_per_token"] - res["plain"]["ms_per_token"]
    res["overhead_pct"] = 100 * res["overhead_ms_per_token"] / res["plain"]["ms_per_token"]
    try:
        import llguidance
        import llguidance.hf
        import llguidance.torch as lgt

        lt = llguidance.hf.from_tokenizer(tok, n_vocab=int(loaded.model.config.vocab_size))
        grm = llguidance.LLMatcher.grammar_from_json_schema({"type": "object"})
        mask = lgt.allocate_token_bitmask(1, lt.vocab_size)
        spent, count = 0.0, 0
        for seq in seqs:
            m = llguidance.LLMatcher(lt, grm)
            for t in seq:
                t0 = time.perf_counter()
                lgt.fill_next_token_bitmask(m, mask, 0)
                ok = m.consume_token(t)
                spent += time.perf_counter() - t0
                count += 1
                if not ok:
                    break
        res["llguidance_mask_ms_per_token"] = 1000 * spent / max(1, count)
    except Exception as exc:  # noqa: BLE001 - reported
        res["llguidance_error"] = f"{type(exc).__name__}: {exc}"
    engine.close()
    return res


def render_mixed(r: dict) -> str:
    a = r["args"]
    lines = ["# Serving with OpenAI parameters: a mixed load (issue 32)", "",
             f"`{r['command']}` on {r['machine']} ({r['date']}). Model {a['base']} (SmolLM2-135M, float32, CPU); "
             f"{a['clients']} closed-loop streaming clients, `max_tokens={a['max_tokens']}`, {a['n_requests']} "
             f"requests per run cycling greedy / greedy+stop / penalties / JSON mode; medians over {a['repeats']} "
             f"repeats; {a['threads']} torch thread(s) per server. Load average before: {r['load_before']}, after: {r['load_after']} (a shared 2-core box: "
             "other work ran beside it).", "",
             "| share of the mixed load | requests | tok/s | p50 s | errors |", "|---|---:|---:|---:|---:|"]
    pauses = a.get("unbatched_pause_ms", [0.0])
    for ms in pauses:
        for kind in ("greedy share (batched path)", "penalty + JSON share (one-at-a-time)"):
            m = r["medians"][f"{kind}, pause {ms:g} ms"]
            lines.append(f"| {kind}, `unbatched_pause_ms: {ms:g}` | {m['requests']} | {fmt(m['tok_per_s'], 1)} | "
                         f"{fmt(m['p50_s'])} | {m['errors']} |")
    b = r["medians"]["baseline: greedy requests one at a time (naive, 1 client)"]
    lines += [f"| baseline: the same greedy requests one at a time (naive server, 1 client) | {b['requests']} | "
              f"{fmt(b['tok_per_s'], 1)} | {fmt(b['p50_s'])} | {b['errors']} |", ""]
    for ms in pauses:
        lines.append(f"**Greedy share at {a['clients']} clients vs one-at-a-time, `unbatched_pause_ms: {ms:g}`: "
                     f"{fmt(r['greedy_ratio_by_pause_ms'][f'{ms:g}'])}x**")
    lines += ["", "(target >= 3x; tok/s of the greedy share = its completion tokens / time until its last request "
              "ended; the one-at-a-time share's tok/s is what the pause costs it).", ""]
    j = r["json_overhead"]
    lines += [f"JSON mode's per-token overhead (one-at-a-time path, same prompts, in-process, {a['threads']} "
              "thread(s)):", "",
              "| decoding | tokens | ms/token |", "|---|---:|---:|",
              f"| plain | {j['plain']['tokens']} | {fmt(j['plain']['ms_per_token'], 1)} |",
              f"| json_object grammar (xgrammar) | {j['json']['tokens']} | {fmt(j['json']['ms_per_token'], 1)} |",
              "", f"Overhead: {fmt(j['overhead_ms_per_token'], 1)} ms/token ({fmt(j['overhead_pct'], 0)}%); the "
              f"grammar's own mask + accept time: {fmt(j['json']['grammar_ms_per_token'], 2)} ms/token (xgrammar); "
              + (f"llguidance's mask + consume on the same token sequences: "
                 f"{fmt(j['llguidance_mask_ms_per_token'], 2)} ms/token."
                 if "llguidance_mask_ms_per_token" in j else f"llguidance: {j.get('llguidance_error')}."),
              "", "lm-format-enforcer 0.11.3 was not measured: its transformers integration raises ImportError with "
              "transformers 5 (`lmformatenforcer.integrations.transformers` checks for a removed symbol)."]
    return "\n".join(lines) + "\n"


def mixed_main(args) -> None:
    from pipelines.config import config_from_params
    from pipelines.serving.config import ServeConfig

    batching = config_from_params("serve", ServeConfig, {}).batching
    nb = args.num_blocks or batching.num_blocks
    mbt = args.max_batch_tokens or batching.max_batch_tokens
    base = str((REPO / args.base).resolve()) if not Path(args.base).is_absolute() else args.base
    if not (Path(base) / "config.json").exists():
        sys.exit(f"no model at {base}: run `dvc repro prepare_base_model` first")
    tmp = Path(tempfile.mkdtemp(prefix="bench_serve_mixed_"))
    pauses = [float(x) for x in args.pauses.split(",") if x.strip()]
    if args.threads:  # torch threads of both servers (OMP_NUM_THREADS): 2 threads on an oversubscribed 2-core box
        ENV["OMP_NUM_THREADS"] = str(args.threads)  # ran 5-10x slower than 1 here (threads spin at barriers)
    load_before = [round(x, 2) for x in os.getloadavg()]
    n = 2 * args.clients
    reqs = mixed_requests(n)
    greedy_only = [x for x in reqs if x[0] in GREEDY_KINDS][:args.baseline_requests]
    procs: dict[str, Proc] = {}
    raw: dict[str, list[dict]] = {}
    py = sys.executable
    try:
        servers = [(f"batched@{ms:g}", "continuous", ms) for ms in pauses] + [("naive", "naive", 0.0)]
        for name, mode, ms in servers:  # one at a time: loads compete
            port = free_port()
            procs[name] = Proc(name, [py, str(Path(__file__).resolve()), "--child", mode, base, str(port),
                                      str(nb), str(mbt), str(tmp), str(ms)], port, tmp / f"{name}.log")
            procs[name].wait_ready("/health")
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(base)
        for p in procs.values():
            asyncio.run(run_mixed(p.url, 2, mixed_requests(4), 4))
        for rep in range(args.repeats):  # baseline and mixed load back to back (the box's load drifts)
            base_run = asyncio.run(run_mixed(procs["naive"].url, 1, greedy_only, args.max_tokens))
            b = share(base_run, GREEDY_KINDS, tok)
            raw.setdefault("baseline: greedy requests one at a time (naive, 1 client)", []).append(b)
            for ms in pauses:
                mixed = asyncio.run(run_mixed(procs[f"batched@{ms:g}"].url, args.clients, reqs, args.max_tokens))
                g = share(mixed, GREEDY_KINDS, tok)
                s = share(mixed, ("penalty", "json"), tok)
                raw.setdefault(f"greedy share (batched path), pause {ms:g} ms", []).append(g)
                raw.setdefault(f"penalty + JSON share (one-at-a-time), pause {ms:g} ms", []).append(s)
                print(f"repeat {rep}, unbatched_pause_ms {ms:g}: greedy share {fmt(g['tok_per_s'], 1)} tok/s, "
                      f"one-at-a-time share {fmt(s['tok_per_s'], 1)} tok/s, baseline {fmt(b['tok_per_s'], 1)} "
                      f"tok/s, errors {g['errors'] + s['errors'] + b['errors']}", flush=True)
    finally:
        for p in procs.values():
            p.stop()
    medians = {k: {"requests": v[0]["requests"], "tok_per_s": med(v, "tok_per_s"), "p50_s": med(v, "p50_s"),
                   "errors": sum(x["errors"] for x in v), "error_samples": sum((x["error_samples"] for x in v), [])}
               for k, v in raw.items()}
    b = medians["baseline: greedy requests one at a time (naive, 1 client)"]["tok_per_s"]
    ratios = {f"{ms:g}": (medians[f"greedy share (batched path), pause {ms:g} ms"]["tok_per_s"] or 0) / b
              if b else None for ms in pauses}
    print("JSON mode overhead (in-process) ...", flush=True)
    overhead = json_overhead(base, args.json_prompts, args.max_tokens, args.threads)
    result = {"command": "python bench/bench_serve.py " + " ".join(sys.argv[1:]),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "args": {"repeats": args.repeats, "max_tokens": args.max_tokens, "base": args.base,
                       "clients": args.clients, "n_requests": n, "num_blocks": nb, "max_batch_tokens": mbt,
                       "threads": args.threads, "unbatched_pause_ms": pauses},
              "medians": medians, "greedy_ratio": ratios[f"{pauses[0]:g}"], "greedy_ratio_by_pause_ms": ratios,
              "raw": raw,
              "json_overhead": overhead, "load_before": load_before,
              "load_after": [round(x, 2) for x in os.getloadavg()]}
    out = Path(args.out if args.out != str(OUT_JSON) else OUT_PARAMS)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    md = render_mixed(result)
    out.with_suffix(".md").write_text(md)
    print(md)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--levels", default="1,8,32")
    ap.add_argument("--servers", default="batched,naive,hf")
    ap.add_argument("--soak-s", type=float, default=60.0)
    ap.add_argument("--soak-clients", type=int, default=32)
    ap.add_argument("--num-blocks", type=int, default=None, help="default: params.yaml serve.batching.num_blocks")
    ap.add_argument("--max-batch-tokens", type=int, default=None, help="default: params.yaml serve.batching")
    ap.add_argument("--base", default="models/base")
    ap.add_argument("--out", default=str(OUT_JSON))
    ap.add_argument("--mixed", action="store_true", help="the mixed-parameter load (issue 32) instead")
    ap.add_argument("--clients", type=int, default=8, help="--mixed: concurrent clients")
    ap.add_argument("--json-prompts", type=int, default=4, help="--mixed: prompts of the JSON overhead measure")
    ap.add_argument("--threads", type=int, default=2, help="--mixed: torch threads per server and in-process")
    ap.add_argument("--baseline-requests", type=int, default=8, help="--mixed: greedy requests of the baseline")
    ap.add_argument("--pauses", default="0,500", help="--mixed: serve.batching.unbatched_pause_ms values, one "
                    "batched server each (the first is the headline)")
    ap.add_argument("--child", nargs=7, metavar=("MODE", "BASE", "PORT", "NB", "MBT", "LOGDIR", "PAUSE_MS"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: stop the servers
    if args.child:
        mode, base, port, nb, mbt, log_dir, pause_ms = args.child
        child_server(mode, base, int(port), int(nb), int(mbt), log_dir, float(pause_ms))
        return
    if args.mixed:
        mixed_main(args)
        return

    from pipelines.config import config_from_params
    from pipelines.serving.config import ServeConfig

    batching = config_from_params("serve", ServeConfig, {}).batching
    nb = args.num_blocks or batching.num_blocks
    mbt = args.max_batch_tokens or batching.max_batch_tokens
    base = str((REPO / args.base).resolve()) if not Path(args.base).is_absolute() else args.base
    if not (Path(base) / "config.json").exists():
        sys.exit(f"no model at {base}: run `dvc repro prepare_base_model` first")
    levels = [int(x) for x in args.levels.split(",")]
    names = [s for s in args.servers.split(",") if s]
    tmp = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    load_before = [round(x, 2) for x in os.getloadavg()]
    procs: dict[str, Proc] = {}
    hf_error = None
    py = sys.executable
    try:
        for name in names:
            port = free_port()
            if name in ("batched", "naive"):
                mode = "continuous" if name == "batched" else "naive"
                procs[name] = Proc(name, [py, str(Path(__file__).resolve()), "--child", mode, base, str(port),
                                          str(nb), str(mbt), str(tmp), "0"], port, tmp / f"{name}.log")
            elif name == "hf":
                exe = Path(py).with_name("transformers")
                procs[name] = Proc(name, [str(exe), "serve", base, "--device", "cpu", "--dtype", "float32",
                                          "--continuous-batching", "--cb-num-blocks", str(nb),
                                          "--cb-max-batch-tokens", str(mbt), "--host", "127.0.0.1", "--port",
                                          str(port), "--log-level", "warning"], port, tmp / "hf.log")
            # start one at a time: model loads compete for the same cores
            try:
                procs[name].wait_ready("/health")
            except RuntimeError as exc:
                if name != "hf":
                    raise
                hf_error = f"did not start: {exc}"
                procs.pop(name).stop()
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(base)
        # warm each server (first requests pay lazy initialisation: the CB manager of transformers serve starts
        # on its first request)
        for name, p in procs.items():
            asyncio.run(run_level(p.url, base if name == "hf" else "base", 2, 4, 8, name != "hf"))
        raw: dict[str, list[dict]] = {}
        for rep in range(args.repeats):
            for level in levels:
                for name, p in procs.items():
                    run = asyncio.run(run_level(p.url, base if name == "hf" else "base", level,
                                                n_requests(level), args.max_tokens, name != "hf"))
                    s = summarize(run, tok)
                    raw.setdefault(f"{name}@{level}", []).append(s)
                    print(f"repeat {rep} clients {level:>2} {name:>7}: {s['req_per_s']:.2f} req/s "
                          f"{s['tok_per_s']:.1f} tok/s p50 {fmt(s['p50_s'])} ttft {fmt(s['ttft_p50_s'])} "
                          f"errors {s['errors']}", flush=True)
        medians = {k: {**{m: med(v, m) for m in ("req_per_s", "tok_per_s", "p50_s", "p95_s", "ttft_p50_s",
                                                  "ttft_p95_s", "completion_tokens")},
                       "errors": sum(r["errors"] for r in v)} for k, v in raw.items()}
        ratios = {}
        for level in levels:
            b, n, h = (medians.get(f"{s}@{level}") for s in ("batched", "naive", "hf"))
            r = {}
            for other, tag in ((n, "naive"), (h, "hf")):
                if b and other and other["tok_per_s"]:
                    r[f"batched_vs_{tag}_tok"] = b["tok_per_s"] / other["tok_per_s"]
                    r[f"batched_vs_{tag}_req"] = b["req_per_s"] / other["req_per_s"]
            ratios[str(level)] = r
        soak_result = None
        if args.soak_s > 0 and "batched" in procs:
            soak_result = asyncio.run(soak(procs["batched"].url, "base", args.soak_clients, args.soak_s,
                                           args.max_tokens))
            print(f"soak: {soak_result}", flush=True)
    finally:
        for p in procs.values():
            p.stop()
    result = {"command": "python bench/bench_serve.py " + " ".join(sys.argv[1:]),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "args": {"repeats": args.repeats, "max_tokens": args.max_tokens, "base": args.base,
                       "num_blocks": nb, "max_batch_tokens": mbt},
              "levels": levels, "servers": list(procs), "medians": medians, "ratios": ratios, "raw": raw,
              "soak": soak_result, "hf_error": hf_error, "load_before": load_before,
              "load_after": [round(x, 2) for x in os.getloadavg()]}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    md = render(result)
    out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
