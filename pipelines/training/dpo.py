"""Direct Preference Optimization pieces for the Ray Train worker loop (`finetune.objective: dpo`).

DPO (Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is Secretly a Reward Model",
eq. 7) trains the policy on (prompt, chosen, rejected) pairs with

    loss = -log sigmoid(beta * [(log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))])

where log pi(y|x) is the summed log-probability of the response tokens. This is TRL's `DPOTrainer` loss with
`loss_type="sigmoid"` and the default reverse-KL divergence (trl 1.16, `DPOTrainer._compute_loss`); TRL exposes it
only as a method of the trainer, so it is written out here, and tests/test_dpo.py checks it equals TRL's on the same
log-probabilities. The implicit reward of a response is beta * (log pi - log ref); "reward accuracy" is the share
of pairs whose chosen reward is above the rejected one (TRL's `rewards/accuracies`).

The reference log-probabilities are computed once, before the first step, by the model as it starts (the champion's
adapter on the base model, or the base model: a fresh LoRA adapter is the identity), so no second model is held in
memory; they travel in every resumable checkpoint, since a resumed worker's model is no longer the reference.
Each rank scores a strided share of the pairs and the shares are summed over ranks.

Heavy imports stay inside the functions (see sft.py).
"""
from __future__ import annotations

import math
from typing import NamedTuple

from pipelines.training.formatting import IGNORE_INDEX, collate, format_example


def dpo_sigmoid_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float):
    """Mean sigmoid DPO loss over pairs, and the detached implicit rewards (beta * log-ratio) of both responses.

    Rafailov et al. 2023, eq. 7; the same arithmetic as trl's DPOTrainer._compute_loss (loss_type "sigmoid",
    f_divergence_type "reverse_kl"): delta = chosen_logratios - rejected_logratios, loss = -logsigmoid(beta*delta).
    """
    import torch.nn.functional as F

    chosen_logratios = policy_chosen - ref_chosen
    rejected_logratios = policy_rejected - ref_rejected
    loss = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios)).mean()
    return loss, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


class PreferencePairs(NamedTuple):
    pairs: list[tuple[str, str, str]]  # (prompt, chosen, rejected), in file order
    counts: dict[str, int]  # rows, preference_rows, skipped_rows


def load_preference_rows(path: str) -> PreferencePairs:
    """(prompt, chosen, rejected) of the `preference` rows of a split (the corpus contract: response is the chosen
    answer, `rejected` the rejected one), in file order, plus counts of what was skipped."""
    import pandas as pd

    df = pd.read_parquet(path)
    total = len(df)
    if "rejected" not in df.columns or "kind" not in df.columns:
        return PreferencePairs([], {"rows": total, "preference_rows": 0, "skipped_rows": total})
    df = df[df["kind"] == "preference"]
    for col in ("prompt", "response", "rejected"):
        df = df[df[col].notna()]
        df = df[df[col].astype(str).str.strip() != ""]
    pairs = list(zip(df["prompt"].astype(str), df["response"].astype(str), df["rejected"].astype(str)))
    return PreferencePairs(pairs, {"rows": total, "preference_rows": len(pairs), "skipped_rows": total - len(pairs)})


def format_pair(tokenizer, prompt: str, chosen: str, rejected: str, max_length: int) -> dict | None:
    """Both answers as chat turns (prompt masked, sft.format_example); None when either has no response token left."""
    c = format_example(tokenizer, prompt, chosen, max_length)
    r = format_example(tokenizer, prompt, rejected, max_length)
    if c is None or r is None:
        return None
    return {"chosen": c, "rejected": r}


class TokenizedPairs(NamedTuple):
    examples: list[dict]  # {"chosen": example, "rejected": example}
    counts: dict[str, int]


def tokenize_pairs(tokenizer, path: str, max_length: int, limit: int | None = None) -> TokenizedPairs:
    pairs, counts = load_preference_rows(path)
    if limit is not None:
        pairs = pairs[:limit]
    examples, dropped = [], 0
    for prompt, chosen, rejected in pairs:
        ex = format_pair(tokenizer, prompt, chosen, rejected, max_length)
        if ex is None:
            dropped += 1
        else:
            examples.append(ex)
    counts.update({"examples": len(examples), "dropped_no_response_after_truncation": dropped})
    return TokenizedPairs(examples, counts)


def pair_length(ex: dict) -> int:
    return len(ex["chosen"]["input_ids"]) + len(ex["rejected"]["input_ids"])


def sequence_logps(model, batch: dict):
    """Summed log-probability of the labelled (response) tokens of each row: one forward pass."""
    import torch

    device = next(model.parameters()).device
    ids, mask, labels = (batch[k].to(device) for k in ("input_ids", "attention_mask", "labels"))
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    shift = labels[:, 1:]
    keep = shift != IGNORE_INDEX
    per_token = torch.gather(logits.log_softmax(-1), 2, shift.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (per_token * keep).sum(dim=1)


def pair_logps(model, pairs: list[dict], pad_id: int):
    """(chosen, rejected) summed log-probs of a batch of pairs, both halves in one padded batch (as TRL does:
    [chosen..., rejected...]); also the number of non-padding tokens."""
    batch = collate([p["chosen"] for p in pairs] + [p["rejected"] for p in pairs], pad_id)
    logps = sequence_logps(model, batch)
    n = len(pairs)
    return logps[:n], logps[n:], int(batch["attention_mask"].sum())


def reference_logps(model, pairs: list[dict], batch_size: int, pad_id: int, rank: int, world: int,
                    use_base: bool):
    """[n, 2] float64 (chosen, rejected) log-probs of every pair under the reference: the model as it is now, or
    with its adapter disabled (`use_base`: the base model). Each rank scores pairs i % world == rank; summed over
    ranks (a collective: every rank calls it)."""
    import contextlib

    import torch
    import torch.distributed as dist

    device = next(model.parameters()).device
    out = torch.zeros((len(pairs), 2), dtype=torch.float64, device=device)
    was_training = model.training
    model.eval()
    mine = list(range(rank, len(pairs), world))
    ctx = model.disable_adapter() if use_base else contextlib.nullcontext()
    with torch.no_grad(), ctx:
        for i in range(0, len(mine), batch_size):
            idx = mine[i:i + batch_size]
            c, r, _ = pair_logps(model, [pairs[j] for j in idx], pad_id)
            out[idx, 0], out[idx, 1] = c.double(), r.double()
    if world > 1:
        dist.all_reduce(out)
    if was_training:
        model.train()
    return out.cpu()


class DpoEval(NamedTuple):
    loss: float  # mean DPO loss over the pairs (nan without pairs)
    reward_accuracy: float
    reward_margin: float  # mean chosen - rejected implicit reward
    pairs: int


def dpo_eval_over_ranks(model, pairs: list[dict], ref, batch_size: int, pad_id: int, rank: int, world: int,
                        beta: float) -> DpoEval:
    """Held-out DPO loss, reward accuracy and margin over `pairs` (sharded across ranks, summed; a collective)."""
    import torch
    import torch.distributed as dist

    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64)  # loss, correct, margin, n
    mine = list(range(rank, len(pairs), world))
    with torch.no_grad():
        for i in range(0, len(mine), batch_size):
            idx = mine[i:i + batch_size]
            c, r, _ = pair_logps(model, [pairs[j] for j in idx], pad_id)
            rc, rr = ref[idx, 0].to(c.device, c.dtype), ref[idx, 1].to(c.device, c.dtype)
            loss, cr, rj = dpo_sigmoid_loss(c, r, rc, rr, beta)
            sums += torch.tensor([float(loss) * len(idx), float((cr > rj).sum()), float((cr - rj).sum()),
                                  float(len(idx))], dtype=torch.float64)
    if world > 1:
        dist.all_reduce(sums)
    if was_training:
        model.train()
    n = sums[3].item()
    if n == 0:
        return DpoEval(math.nan, math.nan, math.nan, 0)
    return DpoEval(sums[0].item() / n, sums[1].item() / n, sums[2].item() / n, int(n))
