"""What a request asks of the decoder (`SamplingParams`) and the per-token logits processing of the one-at-a-time
path (`Sampler`), with OpenAI's semantics:

- `presence_penalty` / `frequency_penalty` (-2..2): logit[j] -= frequency_penalty * count[j] + presence_penalty *
  (count[j] > 0), counting the tokens generated so far for this request (OpenAI's documented formula);
- `logit_bias` {token id: -100..100}: added to the logits before sampling (-100 bans a token, 100 forces it);
- `temperature` / `top_p`: sampling from the processed logits; `seed`: a per-request `torch.Generator`, so the same
  seed gives the same sampled answer whatever else the server runs at the time;
- a grammar constraint (pipelines.serving.structured): tokens that cannot continue the grammar are masked;
- logprobs: the log-softmax of the model's raw logits (before penalties, bias, grammar and temperature, as vLLM's
  default), the chosen token's and the `top_logprobs` most likely ones.

Greedy requests with none of these (stop sequences allowed) stay on the continuous-batching path;
`SamplingParams.unbatched_reason()` names what sends a request to the one-at-a-time path (counted in /metrics).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, NamedTuple

MAX_TOP_LOGPROBS = 20  # OpenAI's cap for chat `top_logprobs`
MAX_COMPLETION_LOGPROBS = 5  # OpenAI's cap for completions `logprobs`


class TopToken(NamedTuple):
    id: int
    text: str
    logprob: float


class TokenLogprob(NamedTuple):
    id: int
    text: str
    logprob: float | None  # None: the first prompt token (nothing before it)
    top: list[TopToken]
    offset: int = 0  # character offset of the token's text in the decoded output


@dataclass
class SamplingParams:
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    logprobs: bool = False  # logprobs of the generated tokens
    top_logprobs: int = 0
    prompt_logprobs: bool = False  # logprobs of the prompt tokens too (completions `echo` with `logprobs`)
    stop: tuple[str, ...] = ()
    constraint: Any = None  # pipelines.serving.structured.Constraint

    def unbatched_reason(self) -> str | None:
        """Why this request cannot share the continuous-batching manager (None: it can)."""
        if self.temperature > 0:
            return "sampling"
        if self.constraint is not None:
            return "grammar"
        if self.presence_penalty or self.frequency_penalty:
            return "penalty"
        if self.logit_bias:
            return "logit_bias"
        if self.logprobs or self.prompt_logprobs:
            return "logprobs"
        return None

    def cache_key_part(self) -> str:
        """Everything here that changes the output, for the response cache key."""
        return json.dumps({"t": self.temperature, "p": self.top_p, "seed": self.seed,
                           "pp": self.presence_penalty, "fp": self.frequency_penalty,
                           "lb": sorted(self.logit_bias.items()), "lp": self.logprobs, "tlp": self.top_logprobs,
                           "plp": self.prompt_logprobs, "stop": list(self.stop),
                           "c": self.constraint.key if self.constraint is not None else None})


class Sampler:
    """Chooses the next token from one step's logits (1-D tensor) for one request."""

    def __init__(self, params: SamplingParams, vocab_size: int, tokenizer):
        import torch

        self.p = params
        self.tok = tokenizer
        self.counts = torch.zeros(vocab_size, dtype=torch.float32) if (
            params.presence_penalty or params.frequency_penalty) else None
        self.bias = None
        if params.logit_bias:
            idx = torch.tensor([int(k) for k in params.logit_bias], dtype=torch.long)
            self.bias = (idx, torch.tensor([float(v) for v in params.logit_bias.values()], dtype=torch.float32))
        self.gen = None
        if params.temperature > 0:
            self.gen = torch.Generator()
            if params.seed is not None:
                self.gen.manual_seed(params.seed)
            else:
                self.gen.seed()
        self.matcher = params.constraint.matcher() if params.constraint is not None else None
        self.grammar_seconds = 0.0  # time spent in the grammar (mask + accept), for the overhead figure
        self._texts: dict[int, str] = {}

    def token_text(self, tid: int) -> str:
        t = self._texts.get(tid)
        if t is None:
            t = self._texts[tid] = self.tok.decode([tid])
        return t

    def top(self, logprobs, k: int) -> list[TopToken]:
        import torch

        if k <= 0:
            return []
        vals, idx = torch.topk(logprobs, k)
        return [TopToken(int(i), self.token_text(int(i)), float(v)) for v, i in zip(vals.tolist(), idx.tolist())]

    def step(self, logits) -> tuple[int, TokenLogprob | None]:
        import time

        import torch

        raw = logits.float()
        scores = raw.clone()
        if self.bias is not None:
            scores.index_add_(0, self.bias[0], self.bias[1])
        if self.counts is not None:
            scores -= self.counts * self.p.frequency_penalty + (self.counts > 0).float() * self.p.presence_penalty
        if self.matcher is not None:
            t0 = time.perf_counter()
            self.matcher.mask(scores)
            self.grammar_seconds += time.perf_counter() - t0
        if self.p.temperature > 0:
            scores = scores / self.p.temperature
            probs = torch.softmax(scores, dim=-1)
            if self.p.top_p < 1.0:
                sp, si = torch.sort(probs, descending=True)
                keep = torch.cumsum(sp, dim=-1) - sp < self.p.top_p
                keep[0] = True
                probs = torch.zeros_like(probs).index_copy_(0, si[keep], sp[keep])
                probs = probs / probs.sum()
            tid = int(torch.multinomial(probs, 1, generator=self.gen))
        else:
            tid = int(torch.argmax(scores))
        if self.counts is not None:
            self.counts[tid] += 1
        if self.matcher is not None:
            t0 = time.perf_counter()
            self.matcher.accept(tid)
            self.grammar_seconds += time.perf_counter() - t0
        return tid, self.entry(tid, raw)

    def entry(self, tid: int, raw_logits) -> TokenLogprob | None:
        """The logprob entry of token `tid` chosen after `raw_logits` (None unless logprobs were asked)."""
        import torch

        if not self.p.logprobs:
            return None
        lp = torch.log_softmax(raw_logits.float(), dim=-1)
        return TokenLogprob(tid, self.token_text(tid), float(lp[tid]), self.top(lp, self.p.top_logprobs))

    def forced_tokens(self, budget: int) -> list[int]:
        """Tokens of the text the grammar forces next (jump-forward), already accepted by the matcher."""
        import time

        if self.matcher is None or budget <= 0:
            return []
        t0 = time.perf_counter()
        text = self.matcher.forced_text()
        out: list[int] = []
        if text:
            for tid in self.tok.encode(text, add_special_tokens=False)[:budget]:
                if not self.matcher.try_accept(tid):
                    break
                out.append(tid)
        self.grammar_seconds += time.perf_counter() - t0
        return out

    def finished_by_grammar(self) -> bool:
        return self.matcher is not None and self.matcher.terminated()

    def prompt_logprobs(self, ids: list[int], logits) -> list[TokenLogprob]:
        """Logprob of each prompt token given the ones before it (the first has logprob None), with the top ones."""
        import torch

        lp = torch.log_softmax(logits[:-1].float(), dim=-1)
        out: list[TokenLogprob] = [TokenLogprob(ids[0], self.token_text(ids[0]), None, [])]  # type: ignore[arg-type]
        for pos in range(1, len(ids)):
            tid = ids[pos]
            row = lp[pos - 1]
            out.append(TokenLogprob(tid, self.token_text(tid), float(row[tid]), self.top(row, self.p.top_logprobs)))
        return out
