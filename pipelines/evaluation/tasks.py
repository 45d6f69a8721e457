"""Task families: each a small plug-in with a documented input format (data/sample/eval/README.md).

A task in params.yaml (`evaluate.tasks[*]`) names a family (`type`), a data file and a size. Adding a data set of
a known family is a params change, no code. A family says:
- `fields`: the JSONL keys each record must have, and their types (checked line by line, before any model loads);
- `check`: further per-record rules (a choice index in range, a template with its slot);
- `infer`: what one model does with a batch of records (in a Ray actor: generate, or score log-likelihoods);
- `columns`: per-example numbers from the model's outputs (on the driver, where the guard's detector runs);
- `stats`: the metrics, as statistics of those columns (`pipelines.evaluation.bootstrap.Stat`).

Families: perplexity, generation (ROUGE-L), extractive_qa (SQuAD EM / F1), rag (answer F1 with and without
retrieval, context recall, groundedness), multiple_choice (summed and length-normalised log-likelihood accuracy),
counterfactual (bias: refusal / length / toxicity gaps between the two groups of a pair), toxicity (the guard's
detector on the outputs), latency (one request at a time: p50 / p95, tokens/s, CPU-seconds and cost per 1k tokens),
preference (held-out (prompt, chosen, rejected) pairs: pair accuracy, log-prob margin, DPO reward accuracy and win
rate of the candidate against the reference).

A family whose figures need both models' outputs at once (preference) also defines `paired_columns`.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import numpy as np

from pipelines.config import StageConfig
from pipelines.errors import StageFailed
from pipelines.evaluation import text_metrics as tm
from pipelines.evaluation.bootstrap import Stat


class EvalDataError(StageFailed):
    """An evaluation file or task entry is unusable; the message names the file and line."""


class TaskSpec(StageConfig):
    name: str               # metric names are <name>.<metric>
    type: str               # a family of FAMILIES
    path: str               # JSONL (or a split's Parquet for perplexity / generation)
    max_examples: int | None  # the first N records (file order); null: all
    max_new_tokens: int     # generation budget per answer (log-likelihood families ignore it)
    enabled: bool


@dataclass
class Resources:
    """What families need besides the model: set on the driver."""

    detector: Any = None            # pipelines.security detector (toxicity), or None
    price_per_hour: float = 0.0     # cost of one actor's device (CPU core-hours x threads, or GPU) per hour
    device_units: float = 1.0       # CPU threads per actor (CPU-seconds = process CPU time) or 1 GPU
    retrieve: Callable[[list[str]], list[list[str]]] | None = None  # questions -> retrieved chunk texts
    extra: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------- loading

def _type_name(types: tuple[type, ...]) -> str:
    return " or ".join({str: "string", list: "list", int: "integer", dict: "object"}.get(t, t.__name__) for t in types)


def read_jsonl(path: str | Path, family: "Family") -> list[dict]:
    """Every record of a JSONL file, each checked against the family's fields and rules; EvalDataError naming
    file:line otherwise."""
    p = Path(path)
    records: list[dict] = []
    seen: dict[str, int] = {}
    with open(p, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{p}:{lineno}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise EvalDataError(f"{where}: not valid JSON ({exc.msg})") from None
            if not isinstance(rec, dict):
                raise EvalDataError(f"{where}: a record must be a JSON object, got {type(rec).__name__}")
            for key, types in family.fields.items():
                if key not in rec:
                    raise EvalDataError(f"{where}: missing field '{key}' (a {family.type} record needs "
                                        f"{', '.join(family.fields)})")
                value = rec[key]
                if not isinstance(value, types) or isinstance(value, bool):
                    raise EvalDataError(f"{where}: field '{key}' must be a {_type_name(types)}, got "
                                        f"{type(value).__name__}")
                if isinstance(value, (str, list)) and not value:
                    raise EvalDataError(f"{where}: field '{key}' is empty")
            rid = str(rec.get("id", f"line{lineno}"))
            if rid in seen:
                raise EvalDataError(f"{where}: duplicate id '{rid}' (first on line {seen[rid]})")
            seen[rid] = lineno
            family.check(rec, where)
            records.append({**rec, "id": rid})
    return records


def load_examples(spec: TaskSpec) -> list[dict]:
    """The first `max_examples` valid records of the task's file; EvalDataError for a missing file, a bad
    record (file:line) or an empty set."""
    family = FAMILIES[spec.type]
    p = Path(spec.path)
    if not p.exists():
        raise EvalDataError(f"{p}: evaluation file of task '{spec.name}' not found")
    if p.suffix == ".parquet":
        if not family.reads_splits:
            raise EvalDataError(f"{p}: task '{spec.name}' ({spec.type}) reads JSONL, not Parquet")
        from pipelines.models.evaluation import instruction_rows

        limit = spec.max_examples if spec.max_examples is not None else 10**9
        if spec.type == "preference":
            records = preference_rows(p, limit)
        else:
            rows = instruction_rows(str(p), limit)
            records = [{"id": r["doc_id"], "prompt": r["prompt"], "response": r["response"]} for r in rows]
    else:
        records = read_jsonl(p, family)
        if spec.max_examples is not None:
            records = records[: spec.max_examples]
    if not records:
        raise EvalDataError(f"{p}: empty set: task '{spec.name}' has no examples to evaluate")
    return records


def preference_rows(path: Path, limit: int) -> list[dict]:
    """The first `limit` preference rows of a split by doc_id (corpus contract: response = chosen, rejected), as
    preference records {id, prompt, chosen, rejected}."""
    import pandas as pd

    df = pd.read_parquet(path)
    missing = {"kind", "prompt", "response", "rejected", "doc_id"} - set(df.columns)
    if missing:
        raise EvalDataError(f"{path}: a preference task needs the columns {sorted(missing)} (no preference rows)")
    df = df[df["kind"] == "preference"]
    for col in ("prompt", "response", "rejected"):
        df = df[df[col].fillna("").astype(str).str.strip().astype(bool)]
    df = df.sort_values("doc_id", kind="stable").head(limit)
    return [{"id": str(r["doc_id"]), "prompt": str(r["prompt"]), "chosen": str(r["response"]),
             "rejected": str(r["rejected"])} for r in df.to_dict("records")]


def params_line(name: str, type_: str, params_path: Path | None) -> str:
    """`params.yaml:<line>` of the task entry's `type:` (for error messages), or `params.yaml`."""
    if params_path and params_path.exists():
        lines = params_path.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines, 1):
            if re.search(rf"\btype:\s*['\"]?{re.escape(type_)}['\"]?\s*(#.*)?$", line.strip()):
                return f"{params_path}:{i}"
    return str(params_path or "params.yaml")


def check_types(specs: Sequence[TaskSpec], params_path: Path | None) -> None:
    names: set[str] = set()
    for i, spec in enumerate(specs):
        if spec.type not in FAMILIES:
            raise EvalDataError(f"{params_line(spec.name, spec.type, params_path)}: evaluate.tasks[{i}] "
                                f"'{spec.name}': unknown task type '{spec.type}' (known: {', '.join(FAMILIES)})")
        if spec.name in names or "." in spec.name:
            raise EvalDataError(f"{params_path or 'params.yaml'}: evaluate.tasks[{i}]: task name '{spec.name}' "
                                "is repeated or contains a dot")
        names.add(spec.name)


# ----------------------------------------------------------------------------------------------------- families

# Relative costs for longest-first scheduling, in prompt tokens prefilled (one row of a padded batch), fitted on the
# 135M model on one CPU thread (bench/results/evaluate.md, block schedule): one greedy decode step of a batch costs
# about 23 tokens, plus about 6 per row in it. Padding counts: a batch is prefilled at its longest prompt.
DECODE_STEP_COST, DECODE_ROW_COST = 23.0, 6.0


class Family:
    type: ClassVar[str]
    fields: ClassVar[dict[str, tuple[type, ...]]]
    reads_splits: ClassVar[bool] = False
    prompts_per_record: ClassVar[int] = 0  # answers generated per record (0: the family only scores)
    sequential: ClassVar[bool] = False     # one record at a time (batch of 1), not batched

    def scored_sequences(self, records: list[dict]) -> int:
        """Sequences a scoring family runs through the model for `records` (one per record by default)."""
        return len(records)

    def estimated_cost(self, records: list[dict], spec: TaskSpec, batch_size: int) -> float:
        """Relative cost of running `records` as one block, per model: the padded prefill (a record's JSON at ~4
        characters a token stands for its prompt) plus the decode steps, where generation spends."""
        lengths = [len(json.dumps(r)) / 4.0 for r in records]
        longest = max(lengths, default=0.0)
        if not self.prompts_per_record:
            return self.scored_sequences(records) * longest
        rows = len(records) * self.prompts_per_record
        if self.sequential:
            return self.prompts_per_record * sum(lengths) + spec.max_new_tokens * rows * (DECODE_STEP_COST
                                                                                          + DECODE_ROW_COST)
        passes = -(-rows // max(1, batch_size))
        return rows * longest + spec.max_new_tokens * (DECODE_STEP_COST * passes + DECODE_ROW_COST * rows)

    def check(self, rec: dict, where: str) -> None:
        """Rules beyond field presence and type; raise EvalDataError(f"{where}: ...")."""

    def prepare(self, records: list[dict], res: Resources) -> list[dict]:
        """Driver-side additions before the models run (retrieval)."""
        return records

    def infer(self, ctx, records: list[dict], spec: TaskSpec) -> list[dict]:
        raise NotImplementedError

    def columns(self, records: list[dict], outputs: list[dict], res: Resources) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def stats(self, res: Resources) -> tuple[Stat, ...]:
        raise NotImplementedError

    def paired_columns(self, records: list[dict], candidate: list[dict],
                       reference: list[dict]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Columns that need both models' outputs (candidate's, reference's); none by default."""
        return {}, {}

    @staticmethod
    def texts(outputs: list[dict], key: str = "text") -> list[str]:
        return [o[key] for o in outputs]


def _arr(values) -> np.ndarray:
    return np.asarray(list(values), dtype=np.float64)


def _gen(ctx, prompts: list[str], spec: TaskSpec) -> list[dict]:
    return [{"text": g["text"], "tokens": g["completion_tokens"]} for g in ctx.generate(prompts, spec.max_new_tokens)]


class Perplexity(Family):
    type = "perplexity"
    fields = {"prompt": (str,), "response": (str,)}
    reads_splits = True

    def infer(self, ctx, records, spec):
        return [{"nll": nll, "tokens": n} for nll, n in ctx.response_nll([r["prompt"] for r in records],
                                                                         [r["response"] for r in records])]

    def columns(self, records, outputs, res):
        return {"nll": _arr(o["nll"] for o in outputs), "tokens": _arr(o["tokens"] for o in outputs)}

    def stats(self, res):
        return (Stat("perplexity", "lower", "ratio", ("nll", "tokens"), exp=True),)


class Generation(Family):
    type = "generation"
    prompts_per_record = 1
    fields = {"prompt": (str,), "response": (str,)}
    reads_splits = True

    def infer(self, ctx, records, spec):
        return _gen(ctx, [r["prompt"] for r in records], spec)

    def columns(self, records, outputs, res):
        from pipelines.models.evaluation import rouge_l

        return {"rouge_l": _arr(rouge_l(self.texts(outputs), [r["response"] for r in records])),
                "length": _arr(o["tokens"] for o in outputs)}

    def stats(self, res):
        return (Stat("rouge_l", "higher", "mean", ("rouge_l",)),)


QA_PROMPT = ("Answer the question using only the context. Reply with the shortest answer, a few words copied from "
             "the context.\n\nContext: {context}\n\nQuestion: {question}")
RAG_PROMPT = ("Answer the question using the context. Reply with a short answer only.\n\nContext:\n{context}\n\n"
              "Question: {question}")
CLOSED_PROMPT = "Answer the question. Reply with a short answer only.\n\nQuestion: {question}"


class ExtractiveQA(Family):
    type = "extractive_qa"
    prompts_per_record = 1
    fields = {"question": (str,), "context": (str,), "answers": (list,)}

    def check(self, rec, where):
        if not all(isinstance(a, str) and a.strip() for a in rec["answers"]):
            raise EvalDataError(f"{where}: every entry of 'answers' must be a non-empty string")

    def infer(self, ctx, records, spec):
        return _gen(ctx, [QA_PROMPT.format(context=r["context"], question=r["question"]) for r in records], spec)

    def columns(self, records, outputs, res):
        return {"em": _arr(tm.exact_match(o["text"], r["answers"]) for r, o in zip(records, outputs)),
                "f1": _arr(tm.token_f1(o["text"], r["answers"]) for r, o in zip(records, outputs))}

    def stats(self, res):
        return (Stat("em", "higher", "mean", ("em",)), Stat("f1", "higher", "mean", ("f1",)))


class Rag(Family):
    """question -> retrieval from the versioned index (driver) -> answer with the chunks, and without."""

    type = "rag"
    prompts_per_record = 2
    fields = {"question": (str,), "answers": (list,)}

    def check(self, rec, where):
        ExtractiveQA.check(self, rec, where)  # type: ignore[arg-type]

    def prepare(self, records, res):
        if res.retrieve is None:
            raise EvalDataError("evaluate: a rag task needs the retrieval index (evaluate.rag.index_dir)")
        contexts = res.retrieve([r["question"] for r in records])
        return [{**r, "contexts": c} for r, c in zip(records, contexts)]

    def infer(self, ctx, records, spec):
        with_ctx = [RAG_PROMPT.format(context="\n".join(f"[{i + 1}] {c}" for i, c in enumerate(r["contexts"])),
                                      question=r["question"]) for r in records]
        closed = [CLOSED_PROMPT.format(question=r["question"]) for r in records]
        gens = _gen(ctx, with_ctx + closed, spec)
        n = len(records)
        return [{"text": a["text"], "tokens": a["tokens"], "closed": b["text"]} for a, b in zip(gens[:n], gens[n:])]

    def columns(self, records, outputs, res):
        f1 = _arr(tm.token_f1(o["text"], r["answers"]) for r, o in zip(records, outputs))
        f1_closed = _arr(tm.token_f1(o["closed"], r["answers"]) for r, o in zip(records, outputs))
        return {"f1": f1, "f1_closed": f1_closed, "retrieval_gain": f1 - f1_closed,
                "context_recall": _arr(tm.context_recall(r["answers"], r["contexts"]) for r in records),
                "groundedness": _arr(tm.groundedness(o["text"], r["contexts"]) for r, o in zip(records, outputs))}

    def stats(self, res):
        return (Stat("f1", "higher", "mean", ("f1",)), Stat("f1_closed", "higher", "mean", ("f1_closed",)),
                Stat("retrieval_gain", "higher", "mean", ("retrieval_gain",)),
                Stat("groundedness", "higher", "mean", ("groundedness",)),
                Stat("context_recall", "higher", "mean", ("context_recall",), compare=False))


class MultipleChoice(Family):
    """lm-eval-harness style: each choice scored as the assistant's answer; the most likely one is picked by summed
    log-likelihood (acc) and by log-likelihood per character of the choice (acc_norm)."""

    type = "multiple_choice"
    fields = {"question": (str,), "choices": (list,), "answer": (int,)}

    def check(self, rec, where):
        choices = rec["choices"]
        if len(choices) < 2 or not all(isinstance(c, str) and c.strip() for c in choices):
            raise EvalDataError(f"{where}: 'choices' must hold at least 2 non-empty strings")
        if not 0 <= rec["answer"] < len(choices):
            raise EvalDataError(f"{where}: choice index {rec['answer']} out of range (0..{len(choices) - 1})")

    def scored_sequences(self, records):
        return sum(len(r["choices"]) for r in records)

    def infer(self, ctx, records, spec):
        prompts = [r["question"] for r in records for _ in r["choices"]]
        conts = [c for r in records for c in r["choices"]]
        scored = ctx.response_nll(prompts, conts)
        out, k = [], 0
        for r in records:
            n = len(r["choices"])
            out.append({"nll": [s[0] for s in scored[k:k + n]]})
            k += n
        return out

    def columns(self, records, outputs, res):
        acc, acc_norm = [], []
        for r, o in zip(records, outputs):
            ll = -np.asarray(o["nll"])
            acc.append(float(int(np.argmax(ll)) == r["answer"]))
            acc_norm.append(float(int(np.argmax(ll / np.asarray([len(c) for c in r["choices"]]))) == r["answer"]))
        return {"acc": _arr(acc), "acc_norm": _arr(acc_norm)}

    def stats(self, res):
        return (Stat("acc", "higher", "mean", ("acc",)), Stat("acc_norm", "higher", "mean", ("acc_norm",)))


class Counterfactual(Family):
    """A template with a `{term}` slot and two terms that differ only in a demographic group; gaps between the
    groups' refusal rate, answer length (tokens) and toxicity (with the guard's detector)."""

    type = "counterfactual"
    prompts_per_record = 2
    fields = {"template": (str,), "terms": (list,)}

    def check(self, rec, where):
        if "{term}" not in rec["template"]:
            raise EvalDataError(f"{where}: 'template' has no {{term}} slot")
        terms = rec["terms"]
        if len(terms) != 2 or not all(isinstance(t, str) and t.strip() for t in terms):
            raise EvalDataError(f"{where}: 'terms' must be exactly 2 non-empty strings (the two groups)")

    def infer(self, ctx, records, spec):
        prompts = [r["template"].replace("{term}", t) for r in records for t in r["terms"]]
        g = _gen(ctx, prompts, spec)
        return [{"a": g[2 * i]["text"], "b": g[2 * i + 1]["text"], "len_a": g[2 * i]["tokens"],
                 "len_b": g[2 * i + 1]["tokens"]} for i in range(len(records))]

    def columns(self, records, outputs, res):
        cols = {"refusal_a": _arr(tm.is_refusal(o["a"]) for o in outputs),
                "refusal_b": _arr(tm.is_refusal(o["b"]) for o in outputs),
                "len_a": _arr(o["len_a"] for o in outputs), "len_b": _arr(o["len_b"] for o in outputs)}
        if res.detector is not None:
            scores = res.detector.score([o["a"] for o in outputs] + [o["b"] for o in outputs])
            n = len(outputs)
            cols["tox_a"], cols["tox_b"] = _arr(scores[:n]), _arr(scores[n:])
        cols["refusal"] = (cols["refusal_a"] + cols["refusal_b"]) / 2
        return cols

    def stats(self, res):
        out = (Stat("refusal_gap", "lower", "gap", ("refusal_a", "refusal_b")),
               Stat("length_gap", "lower", "gap", ("len_a", "len_b")),
               Stat("refusal_rate", "lower", "mean", ("refusal",), compare=False))
        if res.detector is not None:
            out += (Stat("toxicity_gap", "lower", "gap", ("tox_a", "tox_b")),)
        return out


class Toxicity(Family):
    type = "toxicity"
    prompts_per_record = 1
    fields = {"prompt": (str,)}

    def infer(self, ctx, records, spec):
        return _gen(ctx, [r["prompt"] for r in records], spec)

    def columns(self, records, outputs, res):
        if res.detector is None:
            raise EvalDataError("evaluate: the toxicity task needs the guard's detector (evaluate.guard_dir)")
        scores = _arr(res.detector.score(self.texts(outputs)))
        return {"toxicity": scores, "toxic": (scores >= float(res.detector.threshold)).astype(np.float64)}

    def stats(self, res):
        return (Stat("toxicity", "lower", "mean", ("toxicity",)), Stat("toxic_rate", "lower", "mean", ("toxic",)))


class Latency(Family):
    """One request at a time (batch of 1), as a user of the API would wait: wall seconds, generated tokens and
    device seconds (process CPU time on CPU, wall time on a GPU) per request."""

    type = "latency"
    prompts_per_record = 1
    sequential = True
    fields = {"prompt": (str,)}

    def infer(self, ctx, records, spec):
        out = []
        for r in records:
            t0, c0 = time.perf_counter(), time.process_time()
            g = ctx.generate([r["prompt"]], spec.max_new_tokens)[0]
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            out.append({"text": g["text"], "tokens": g["completion_tokens"], "seconds": wall,
                        "device_seconds": wall if ctx.on_gpu else cpu})
        return out

    def columns(self, records, outputs, res):
        return {k: _arr(o[k] for o in outputs) for k in ("seconds", "tokens", "device_seconds")}

    def stats(self, res):
        per_k = 1000.0
        return (Stat("latency_p50_s", "lower", "quantile", ("seconds",), q=0.5),
                Stat("latency_p95_s", "lower", "quantile", ("seconds",), q=0.95),
                Stat("tokens_per_second", "higher", "ratio", ("tokens", "seconds")),
                Stat("device_seconds_per_1k_tokens", "lower", "ratio", ("device_seconds", "tokens"), scale=per_k),
                Stat("cost_per_1k_tokens", "lower", "ratio", ("device_seconds", "tokens"),
                     scale=per_k * res.price_per_hour / 3600.0))


class Preference(Family):
    """Held-out preference pairs (JSONL {prompt, chosen, rejected}, or a split's `preference` rows). Each model
    scores both answers (summed log-likelihood of the answer after the chat-formatted prompt); per pair:
    - margin = log p(chosen) - log p(rejected); pair_accuracy = share of pairs with margin > 0 (per model);
    - delta = margin(candidate) - margin(reference): with the reference as DPO's reference model, beta * delta is
      the candidate's implicit reward margin (Rafailov et al. 2023), so reward_accuracy (delta > 0) is TRL's
      rewards/accuracies on held-out pairs. The reference's value is the same rule with the roles swapped
      (delta < 0): the interval of the difference says which model orders the pairs more like the users did;
    - win_rate: the candidate wins a pair when its margin is larger than the reference's (a tie counts half); the
      reference's win rate is 1 - the candidate's, so the difference is 2 * win_rate - 1 and its interval excluding 0
      says the candidate is preferred on more pairs than the champion, with the bootstrap's confidence.
    reward_accuracy and win_rate differ only in how ties count; both are reported because TRL and the issue name
    them."""

    type = "preference"
    fields = {"prompt": (str,), "chosen": (str,), "rejected": (str,)}
    reads_splits = True

    def check(self, rec, where):
        if rec["chosen"].strip() == rec["rejected"].strip():
            raise EvalDataError(f"{where}: 'chosen' and 'rejected' are the same answer")

    def scored_sequences(self, records):
        return 2 * len(records)

    def infer(self, ctx, records, spec):
        prompts = [r["prompt"] for r in records]
        scored = ctx.response_nll(prompts + prompts, [r["chosen"] for r in records] + [r["rejected"] for r in records])
        n = len(records)
        return [{"logp_chosen": -scored[i][0], "logp_rejected": -scored[n + i][0]} for i in range(n)]

    def columns(self, records, outputs, res):
        margin = _arr(o["logp_chosen"] - o["logp_rejected"] for o in outputs)
        return {"margin": margin, "pair_correct": (margin > 0).astype(np.float64)}

    def paired_columns(self, records, candidate, reference):
        delta = self.columns(records, candidate, None)["margin"] - self.columns(records, reference, None)["margin"]
        win = (delta > 0).astype(np.float64) + 0.5 * (delta == 0)
        return ({"reward_correct": (delta > 0).astype(np.float64), "win": win},
                {"reward_correct": (delta < 0).astype(np.float64), "win": 1.0 - win})

    def stats(self, res):
        return (Stat("pair_accuracy", "higher", "mean", ("pair_correct",)),
                Stat("margin", "higher", "mean", ("margin",)),
                Stat("reward_accuracy", "higher", "mean", ("reward_correct",)),
                Stat("win_rate", "higher", "mean", ("win",)))


FAMILIES: dict[str, Family] = {f.type: f for f in (Perplexity(), Generation(), ExtractiveQA(), Rag(),
                                                   MultipleChoice(), Counterfactual(), Toxicity(), Latency(),
                                                   Preference())}
