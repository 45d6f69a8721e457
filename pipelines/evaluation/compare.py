"""From per-example outputs to metrics: per task and model, the paired intervals of the differences, and the
examples where the candidate lost most against the reference."""
from __future__ import annotations

from typing import Any, TypedDict

import numpy as np

from pipelines.evaluation.bootstrap import Interval, paired_interval
from pipelines.evaluation.runner import CANDIDATE, REFERENCE
from pipelines.evaluation.tasks import FAMILIES, Resources, TaskSpec

# the per-example column that ranks the candidate's worst regressions, per family (higher is better)
REGRESSION_COLUMN = {"generation": "rouge_l", "extractive_qa": "f1", "rag": "f1", "multiple_choice": "acc_norm",
                     "toxicity": "toxicity", "perplexity": "nll", "preference": "margin"}
LOWER_IS_BETTER_COLUMNS = {"toxicity", "nll"}


class TaskResult(TypedDict):
    type: str
    path: str
    n: int
    metrics: dict[str, dict[str, float]]  # model -> metric -> value
    comparisons: dict[str, Interval]  # metric -> interval of candidate - reference


class Regression(TypedDict):
    task: str
    id: str
    column: str
    reference_value: float
    candidate_value: float
    loss: float
    prompt: str
    reference_output: str
    candidate_output: str


def _prompt_of(record: dict) -> str:
    for key in ("question", "prompt", "template"):
        if key in record:
            return str(record[key])
    return ""


def _output_text(out: dict) -> str:
    if "text" in out:
        return str(out["text"])
    if "a" in out:
        return f"[a] {out['a']}\n[b] {out['b']}"
    return ", ".join(f"{k}={v}" for k, v in out.items())


def compare_task(spec: TaskSpec, records: list[dict], outputs: dict[str, dict[str, dict]], res: Resources, *,
                 samples: int, seed: int, confidence: float) -> tuple[TaskResult, dict[str, dict[str, np.ndarray]],
                                                                 list[Regression]]:
    family = FAMILIES[spec.type]
    missing = [r["id"] for r in records if r["id"] not in outputs]
    if missing:
        raise RuntimeError(f"evaluate: no output for {len(missing)} examples of task '{spec.name}' ({missing[:3]})")
    per_model = {m: [outputs[r["id"]][m] for r in records] for m in (REFERENCE, CANDIDATE)}
    cols = {m: family.columns(records, per_model[m], res) for m in per_model}
    joint = family.paired_columns(records, per_model[CANDIDATE], per_model[REFERENCE])
    cols[CANDIDATE].update(joint[0])
    cols[REFERENCE].update(joint[1])
    metrics: dict[str, dict[str, float]] = {m: {} for m in per_model}
    comparisons: dict[str, Interval] = {}
    for i, stat in enumerate(family.stats(res)):
        iv = paired_interval(stat, cols[CANDIDATE], cols[REFERENCE], samples=samples, seed=seed + i,
                             confidence=confidence)
        metrics[CANDIDATE][stat.name], metrics[REFERENCE][stat.name] = iv["candidate"], iv["reference"]
        if stat.compare:
            comparisons[stat.name] = iv
    regressions: list[Regression] = []
    col = REGRESSION_COLUMN.get(spec.type)
    if col and col in cols[CANDIDATE]:
        sign = -1.0 if col in LOWER_IS_BETTER_COLUMNS else 1.0
        if spec.type == "perplexity":  # per-token NLL, so long responses do not dominate
            cand = cols[CANDIDATE]["nll"] / np.maximum(cols[CANDIDATE]["tokens"], 1)
            ref = cols[REFERENCE]["nll"] / np.maximum(cols[REFERENCE]["tokens"], 1)
        else:
            cand, ref = cols[CANDIDATE][col], cols[REFERENCE][col]
        loss = sign * (ref - cand)
        for j in np.argsort(-loss, kind="stable"):
            if loss[j] <= 0:
                break
            r = records[j]
            regressions.append({"task": spec.name, "id": r["id"], "column": col,
                                "reference_value": round(float(ref[j]), 4), "candidate_value": round(float(cand[j]), 4),
                                "loss": round(float(loss[j]), 4), "prompt": _prompt_of(r),
                                "reference_output": _output_text(per_model[REFERENCE][j]),
                                "candidate_output": _output_text(per_model[CANDIDATE][j])})
    result: TaskResult = {"type": spec.type, "path": spec.path, "n": len(records), "metrics": metrics,
                          "comparisons": comparisons}
    return result, cols, regressions


def flat(tasks: dict[str, TaskResult], model: str) -> dict[str, Any]:
    """`<task>.<metric>` -> value of one model."""
    return {f"{t}.{k}": v for t, r in tasks.items() for k, v in r["metrics"][model].items()}
