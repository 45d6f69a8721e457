"""The guard in the request path: an input policy and an output policy around the model.

Input (the chat messages, and in RAG mode the retrieved chunks):
- `max_prompt_chars`: a prompt longer than this is refused (`prompt_too_long`) before any model work;
- `injection`: the trained prompt-injection / jailbreak detector on the normalized text (NFKC, zero-width and
  homoglyph folding, base64/rot13/leetspeak decoded) of the last user message AND of all user messages joined (an
  attack split across turns), and on each retrieved chunk (`indirect_injection`, BIPIA-style);
- `pii`: pipelines.data.pii on the user messages: `redact` replaces each span by its typed placeholder before the
  model sees it;
- `toxicity`: the toxicity detector on the last user message.
Output (the generated text): `pii` (a leak of PII the prompt did not contain), `toxicity`, `harmful_compliance`
(the trained judge on (request, response)), `canary` (a planted training canary, `canaries_path`) and
`system_prompt` (the response repeats >= `system_prompt_ngram` consecutive words of the system message).

Each check's action is `block`, `redact` (PII only), `log` (counted and logged, request goes on) or `off`.
`overrides` maps an API key id to a partial policy merged over the default (e.g. a red-team key with
`{input: {injection: log}}`). A block is an OpenAI-style refusal: HTTP 200, `finish_reason: "content_filter"`,
`message.refusal` set, and `guard: {action, stage, reason, checks}` naming the reason code. Every action is
counted in `llmops_guard_actions_total{stage, check, action}` and the guard's own time in
`llmops_guard_seconds{stage}`.

`parallel_input` (serving): the input's rule checks (length, obfuscation flags, PII redaction: microseconds) run
first, as they must change what the model sees; the detectors (one MiniLM pass, the guard's whole cost) then run
in a worker thread while the model prefills. No token is sent before their verdict, and a block cancels the
generation, so the policy is the same; what the guard adds to a request is only the wait past the first token
(`llmops_guard_seconds{stage="input_added"}`, `guard.added_ms` in a refusal).
"""
from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipelines.config import StageConfig
from pipelines.security.normalize import normalize

log = logging.getLogger("llmops.guard")

Action = Literal["block", "redact", "log", "off"]


class InputPolicy(StageConfig):
    injection: Action
    indirect_injection: Action
    pii: Action
    toxicity: Action
    max_prompt_chars: int


class OutputPolicy(StageConfig):
    pii: Action
    toxicity: Action
    harmful_compliance: Action
    canary: Action
    system_prompt: Action


class GuardConfig(StageConfig):
    enabled: bool
    models_dir: str                 # train_guard's output
    require_detectors: bool         # true: refuse to start without trained detectors; false: rule checks only
    input: InputPolicy
    output: OutputPolicy
    thresholds: dict[str, float]    # per detector (and indirect_injection), replaces the trained threshold
    canaries_path: str | None       # JSON list of planted canary strings (finetune.canaries writes it)
    system_prompt_ngram: int        # consecutive words of the system message that count as a leak
    parallel_input: bool            # serving: input detectors run while the model prefills; no token leaves first
    encoder_backend: Literal["torch", "onnx"]  # onnx: the same fp32 MiniLM through ONNX Runtime (faster under load)
    onnx_dir: str                   # where the exported ONNX encoder is kept (exported once per model)
    pii_entities: list[str] | None  # null: every entity pipelines.data.pii knows
    refusal_message: str
    overrides: dict[str, dict]      # API key id -> partial {input: {...}, output: {...}}


@dataclass
class Check:
    check: str
    action: str
    score: float | None = None
    threshold: float | None = None
    detail: Any = None

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class Verdict:
    stage: str
    checks: list[Check] = field(default_factory=list)
    text: str | None = None  # redacted text (output) when PII was redacted
    seconds: float = 0.0     # the guard's own compute
    added: float | None = None  # what it added to the response (parallel input: the wait past the first token)

    @property
    def blocked(self) -> Check | None:
        return next((c for c in self.checks if c.action == "block"), None)

    def body(self) -> dict:
        b = self.blocked
        return {"action": "block" if b else ("redact" if any(c.action == "redact" for c in self.checks) else
                                             "log" if self.checks else "allow"),
                "stage": self.stage, "reason": b.check if b else None,
                "checks": [c.as_dict() for c in self.checks], "ms": round(self.seconds * 1000, 2),
                **({"added_ms": round(self.added * 1000, 2)} if self.added is not None else {})}


@dataclass
class PendingInput:
    """An input verdict whose rule checks are done and whose detector checks are not (`Guard.begin_input`)."""
    guard: "Guard"
    verdict: Verdict
    pol: Any
    texts: list[str]      # injection: the last user message, and all user turns joined when there are several
    last: str             # toxicity: the last user message
    after: list[Check]    # rule checks reported after the detectors' (PII), as check_input always ordered them
    rule_seconds: float

    @property
    def blocked_by_rules(self) -> bool:
        return self.verdict.blocked is not None or any(c.action == "block" for c in self.after)

    def finish(self) -> Verdict:
        """Runs the detectors (thread-safe: serving calls it in a worker thread) and counts the verdict."""
        t0 = time.perf_counter()
        v, pol = self.verdict, self.pol
        if not self.texts:  # refused before any model work (prompt_too_long)
            v.seconds = self.rule_seconds
            return self.guard._count(v)
        if pol.injection != "off":
            r = self.guard._detect("injection", self.texts)
            if r:
                scores, thr = r
                s = max(scores)
                if s >= thr:
                    which = "split_messages" if len(scores) > 1 and scores[1] >= thr > scores[0] else "last_message"
                    v.checks.append(Check("prompt_injection", pol.injection, round(s, 4), thr, which))
        if pol.toxicity != "off":
            r = self.guard._detect("toxicity", [self.last])
            if r and r[0][0] >= r[1]:
                v.checks.append(Check("toxic_input", pol.toxicity, round(r[0][0], 4), r[1]))
        v.checks += self.after
        v.seconds = self.rule_seconds + time.perf_counter() - t0
        return self.guard._count(v)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


_WORDS = re.compile(r"\w+")


class Guard:
    def __init__(self, cfg: GuardConfig, root: str | Path = ".", registry=None):
        self.cfg = cfg
        self.root = Path(root)
        self.detectors: dict[str, Any] = {}
        self.context_threshold: float | None = None
        self.missing: str | None = None
        models = self._path(cfg.models_dir)
        try:
            from pipelines.security.detectors import load_detector

            for name in ("injection", "toxicity", "harmful_compliance"):
                det = load_detector(models, name, backend=cfg.encoder_backend, onnx_dir=self._path(cfg.onnx_dir))
                if name in cfg.thresholds:
                    det.threshold = float(cfg.thresholds[name])
                self.detectors[name] = det
            # retrieved chunks have their own operating point (train_guard's threshold_context; older models: one)
            inj = self.detectors["injection"]
            self.context_threshold = float(cfg.thresholds.get(
                "indirect_injection", inj.meta.get("threshold_context", inj.threshold)))
        except FileNotFoundError as exc:
            if cfg.require_detectors:
                raise
            self.missing = str(exc)
            log.warning("guard: %s; running the rule-based checks only", exc)
        self.canaries = self._load_canaries()
        self._policies: dict[str | None, tuple[InputPolicy, OutputPolicy]] = {}
        self._lock = threading.Lock()
        self.actions = self.seconds = None
        if registry is not None:
            from prometheus_client import Counter, Histogram

            self.actions = Counter("llmops_guard_actions", "guard decisions by stage, check and action",
                                   ["stage", "check", "action"], registry=registry)
            self.seconds = Histogram("llmops_guard_seconds", "time the guard added per request and stage", ["stage"],
                                     buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1),
                                     registry=registry)

    def _path(self, p: str) -> Path:
        return Path(p) if Path(p).is_absolute() else self.root / p

    def _load_canaries(self) -> list[str]:
        p = self.cfg.canaries_path
        if not p or not self._path(p).exists():
            return []
        data = json.loads(self._path(p).read_text())
        return [c["secret"] if isinstance(c, dict) else str(c) for c in (data.get("canaries", data)
                                                                        if isinstance(data, dict) else data)]

    def status(self) -> dict:
        return {"enabled": self.cfg.enabled, "detectors": sorted(self.detectors), "missing": self.missing,
                "canaries": len(self.canaries)}

    def policy(self, key_id: str | None) -> tuple[InputPolicy, OutputPolicy]:
        with self._lock:
            if key_id not in self._policies:
                base = {"input": self.cfg.input.model_dump(), "output": self.cfg.output.model_dump()}
                over = self.cfg.overrides.get(key_id or "", {})
                merged = _merge(base, over)
                self._policies[key_id] = (InputPolicy(**merged["input"]), OutputPolicy(**merged["output"]))
            return self._policies[key_id]

    def _count(self, v: Verdict) -> Verdict:
        if self.actions is not None:
            for c in v.checks:
                self.actions.labels(v.stage, c.check, c.action).inc()
            self.seconds.labels(v.stage).observe(v.seconds)
        if v.checks:
            log.info("guard %s: %s", v.stage, json.dumps(v.body()))
        return v

    def _detect(self, name: str, items, responses=None) -> tuple[list[float], float] | None:
        det = self.detectors.get(name)
        if det is None:
            return None
        return det.score(items, responses), det.threshold

    # ------------------------------------------------------------ input
    def check_input(self, messages: list[dict], key_id: str | None = None) -> Verdict:
        """Checks the chat messages ({role, content}); redacts PII in user messages IN PLACE when the policy says
        redact. The verdict's `blocked` names the first blocking check."""
        return self.begin_input(messages, key_id).finish()

    def begin_input(self, messages: list[dict], key_id: str | None = None) -> "PendingInput":
        """The rule part of check_input (length, obfuscation, PII redaction in place: microseconds); the detector
        part (one MiniLM pass) is left to `PendingInput.finish`, which serving runs while the model prefills."""
        t0 = time.perf_counter()
        pol, _ = self.policy(key_id)
        v = Verdict("input")
        users = [m for m in messages if m["role"] == "user"]
        total = sum(len(m["content"]) for m in messages)
        if total > pol.max_prompt_chars:
            v.checks.append(Check("prompt_too_long", "block", detail=f"{total} characters > {pol.max_prompt_chars}"))
            return PendingInput(self, v, pol, [], "", [], time.perf_counter() - t0)
        last = users[-1]["content"] if users else messages[-1]["content"]
        flags = normalize(last).flags
        if flags:
            v.checks.append(Check("obfuscation", "log", detail=list(flags)))
        # the detectors see the text as sent (before redaction), as the sequential check always did
        joined = ["\n".join(m["content"] for m in users)] if len(users) > 1 else []
        after: list[Check] = []
        if pol.pii != "off":
            from pipelines.data import pii

            found_all: list[str] = []
            for m in users:
                red, found = pii.redact(m["content"], self.cfg.pii_entities)
                if found:
                    found_all += found
                    if pol.pii == "redact":
                        m["content"] = red
            if found_all:
                after.append(Check("pii_input", pol.pii, detail=sorted(set(found_all))))
        return PendingInput(self, v, pol, [last] + joined, last, after, time.perf_counter() - t0)

    def check_contexts(self, contexts: list[str], key_id: str | None = None) -> Verdict:
        """Retrieved RAG chunks: an instruction planted in a document (indirect injection)."""
        t0 = time.perf_counter()
        pol, _ = self.policy(key_id)
        v = Verdict("context")
        if pol.indirect_injection != "off" and contexts:
            r = self._detect("injection", contexts)
            if r:
                scores, thr = r[0], self.context_threshold
                hits = [i for i, s in enumerate(scores) if s >= thr]
                if hits:
                    v.checks.append(Check("indirect_injection", pol.indirect_injection, round(max(scores), 4), thr,
                                          {"chunks": hits}))
        v.seconds = time.perf_counter() - t0
        return self._count(v)

    # ------------------------------------------------------------ output
    def check_output(self, messages: list[dict], response: str, key_id: str | None = None) -> Verdict:
        t0 = time.perf_counter()
        _, pol = self.policy(key_id)
        v = Verdict("output", text=response)
        users = [m["content"] for m in messages if m["role"] == "user"]
        request = users[-1] if users else ""
        folded = normalize(response, decode=True).text
        if pol.canary != "off" and self.canaries:
            hit = [c for c in self.canaries if c in response or c in folded]
            if hit:
                v.checks.append(Check("canary_leak", pol.canary, detail=len(hit)))
        if pol.system_prompt != "off":
            n = self.cfg.system_prompt_ngram
            resp_words = _WORDS.findall(folded.lower())
            grams = {tuple(resp_words[i:i + n]) for i in range(len(resp_words) - n + 1)}
            for m in messages:
                if m["role"] != "system":
                    continue
                sw = _WORDS.findall(m["content"].lower())
                if any(tuple(sw[i:i + n]) in grams for i in range(len(sw) - n + 1)):
                    v.checks.append(Check("system_prompt_leak", pol.system_prompt, detail=f">= {n} words"))
                    break
        if pol.pii != "off":
            from pipelines.data import pii

            asked = {s.text for s in pii.detect("\n".join(users), self.cfg.pii_entities)}
            spans = [s for s in pii.detect(response, self.cfg.pii_entities) if s.text not in asked]
            if spans:
                v.checks.append(Check("pii_leak", pol.pii, detail=sorted({s.entity for s in spans})))
                if pol.pii == "redact":
                    out, last = [], 0
                    for s in spans:
                        out += [response[last:s.start], pii.placeholder(s.entity)]
                        last = s.end
                    v.text = "".join(out) + response[last:]
        if response.strip():
            if pol.toxicity != "off":
                r = self._detect("toxicity", [response])
                if r and r[0][0] >= r[1]:
                    v.checks.append(Check("toxic_output", pol.toxicity, round(r[0][0], 4), r[1]))
            if pol.harmful_compliance != "off" and request:
                r = self._detect("harmful_compliance", [(request, response)])
                if r and r[0][0] >= r[1]:
                    v.checks.append(Check("harmful_compliance", pol.harmful_compliance, round(r[0][0], 4), r[1]))
        v.seconds = time.perf_counter() - t0
        return self._count(v)

    # ------------------------------------------------------------ serving's entry points
    def enforce_input(self, messages: list[dict], key_id: str | None = None) -> Verdict:
        """check_input (PII redacted in place); raises GuardBlocked on a block."""
        v = self.check_input(messages, key_id)
        if v.blocked:
            raise GuardBlocked(v, self.refusal_text(v))
        return v

    def enforce(self, v: Verdict) -> Verdict:
        """Raises GuardBlocked when the verdict blocks."""
        if v.blocked:
            raise GuardBlocked(v, self.refusal_text(v))
        return v

    def enforce_contexts(self, contexts: list[dict] | None, key_id: str | None = None) -> Verdict:
        v = self.screen_contexts(contexts, key_id)
        if v.blocked:
            raise GuardBlocked(v, self.refusal_text(v))
        return v

    # ------------------------------------------------------------ serving's entry points (ChatMessage models)
    @staticmethod
    def _dicts(messages) -> list[dict]:
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in messages]

    def screen(self, messages, key_id: str | None = None) -> Verdict:
        """check_input on the request's ChatMessage list; redacted user messages are written back."""
        dicts = self._dicts(messages)
        v = self.check_input(dicts, key_id)
        for m, d in zip(messages, dicts):
            if m.role == "user" and d["content"] != m.text():
                m.content = d["content"]
        return v

    def screen_contexts(self, contexts: list[dict] | None, key_id: str | None = None) -> Verdict:
        return self.check_contexts([c["text"] for c in contexts or []], key_id)

    def screen_output(self, messages, response: str, key_id: str | None = None) -> Verdict:
        return self.check_output(self._dicts(messages), response, key_id)

    # ------------------------------------------------------------ refusals
    def refusal_text(self, v: Verdict) -> str:
        b = v.blocked
        return f"{self.cfg.refusal_message} (reason: {b.check if b else 'policy'})"

    def refusal_body(self, v: Verdict, *, cid: str, created: int, model: str | None, fingerprint: str | None,
                     usage: dict | None = None) -> dict:
        """An OpenAI-style chat.completion that refuses, with the guard's reason code."""
        text = self.refusal_text(v)
        return {"id": cid, "object": "chat.completion", "created": created, "model": model,
                "system_fingerprint": fingerprint,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": text},
                             "logprobs": None, "finish_reason": "content_filter"}],
                "usage": usage or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
                "guard": v.body()}


class GuardBlocked(Exception):
    """A request the input policy refuses: serving answers with `Guard.refusal_body(verdict, ...)`."""

    def __init__(self, verdict: Verdict, text: str):
        super().__init__(text)
        self.verdict, self.text = verdict, text


def from_params(params=None, root: str | Path | None = None, registry=None) -> Guard:
    from pipelines.config import config_from_params, project_root

    cfg = config_from_params("serve.guard", GuardConfig, {}, params)
    return Guard(cfg, root or project_root(), registry)
