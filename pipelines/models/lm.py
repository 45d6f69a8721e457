"""Loading a base causal LM plus an optional LoRA adapter, chat formatting, batched generation and
response-only negative log-likelihood. CPU-first (float32); every function takes already loaded objects so
a caller loads the model once and reuses it."""
from __future__ import annotations

import contextlib
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple, Sequence

_HASH_CHUNK = 1 << 20


def dir_sha256(path: str | Path) -> str:
    """Content hash of a directory: relative paths and bytes of every regular file, in sorted order (hidden files
    such as atomic-write temps are skipped). Identifies a candidate adapter for idempotent promotion."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"not a directory: {root}")
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = file.relative_to(root).as_posix()
        if rel.startswith(".") or "/." in rel:
            continue  # temp files of atomic writes, .gitignore, editor droppings
        digest.update(rel.encode() + b"\0")
        with open(file, "rb") as fh:
            while chunk := fh.read(_HASH_CHUNK):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


@dataclass
class LoadedModel:
    model: Any  # transformers PreTrainedModel or peft PeftModel
    tokenizer: Any
    base_dir: str
    adapter_dir: str | None

    @property
    def has_adapter(self) -> bool:
        return self.adapter_dir is not None

    @contextlib.contextmanager
    def base_only(self) -> Iterator[Any]:
        """Run the base model: the adapter is switched off inside the block (no second copy in memory)."""
        if self.adapter_dir is None:
            yield self.model
        else:
            with self.model.disable_adapter():
                yield self.model


def load_tokenizer(base_dir: str | Path, adapter_dir: str | Path | None = None):
    from transformers import AutoTokenizer

    source = Path(adapter_dir) if adapter_dir and (Path(adapter_dir) / "tokenizer_config.json").exists() else base_dir
    tok = AutoTokenizer.from_pretrained(str(source))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


_CACHE: dict[tuple, LoadedModel] = {}


def load_model(base_dir: str | Path, adapter_dir: str | Path | None = None, *, merge: bool = False,
               cache: bool = True) -> LoadedModel:
    """Base model in float32 on CPU, with the LoRA adapter from `adapter_dir` on top when given.

    merge=True folds the adapter into the weights (faster generation) when the base is not needed separately.
    Unmerged loads are kept (one entry, keyed by paths and adapter content hash) so stages run in one process
    (tests, an Airflow worker running evaluate then audit) load the model once; merged ones are never shared."""
    key = None
    if cache and not merge:
        key = (str(Path(base_dir).resolve()), str(Path(adapter_dir).resolve()) if adapter_dir else None,
               dir_sha256(adapter_dir) if adapter_dir else None)
        if key in _CACHE:
            return _CACHE[key]
    loaded = _load_model(base_dir, adapter_dir, merge=merge)
    if key is not None:
        _CACHE.clear()
        _CACHE[key] = loaded
    return loaded


def _load_model(base_dir: str | Path, adapter_dir: str | Path | None, *, merge: bool) -> LoadedModel:
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    base_dir = str(base_dir)
    if not (Path(base_dir) / "config.json").exists():
        raise FileNotFoundError(f"base model directory has no config.json: {base_dir}")
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    if adapter_dir is not None:
        if not (Path(adapter_dir) / "adapter_config.json").exists():
            raise FileNotFoundError(f"adapter directory has no adapter_config.json: {adapter_dir}")
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir))
        if merge:
            model = model.merge_and_unload()
    model.eval()
    tok = load_tokenizer(base_dir, adapter_dir)
    return LoadedModel(model=model, tokenizer=tok, base_dir=base_dir,
                       adapter_dir=str(adapter_dir) if adapter_dir is not None and not merge else None)


def chat_prompt_ids(tokenizer, messages: Sequence[dict[str, str]] | str) -> list[int]:
    """Token ids of a chat-formatted prompt ending with the assistant turn header."""
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    out = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
    if isinstance(out, dict) or hasattr(out, "keys"):
        out = out["input_ids"]
    return list(out)


def end_of_turn_id(tokenizer) -> int:
    """The token that closes an assistant turn (`<|im_end|>` for ChatML templates, else EOS)."""
    for candidate in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>"):
        tid = tokenizer.convert_tokens_to_ids(candidate)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid is not None:
            return tid
    return tokenizer.eos_token_id


def truncate_middle(ids: list[int], budget: int, head_fraction: float = 0.6) -> list[int]:
    """Keep the first and last tokens of an over-long sequence (the start sets the scene, the end usually
    holds the actual instruction), dropping the middle."""
    if budget <= 0 or len(ids) <= budget:
        return ids
    head = int(budget * head_fraction)
    return ids[:head] + ids[len(ids) - (budget - head):]


def _batches(items: Sequence[Any], size: int) -> Iterable[list[int]]:
    for start in range(0, len(items), size):
        yield list(range(start, min(start + size, len(items))))


def generate(
    model,
    tokenizer,
    prompts_ids: Sequence[list[int]],
    *,
    max_new_tokens: int,
    batch_size: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
) -> list[dict[str, Any]]:
    """Batched left-padded generation. Prompts are sorted by length so a batch pads little; results come back
    in input order as {text, prompt_tokens, completion_tokens, finish_reason}."""
    import torch

    stop_ids = sorted({end_of_turn_id(tokenizer), tokenizer.eos_token_id} - {None})
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    order = sorted(range(len(prompts_ids)), key=lambda i: len(prompts_ids[i]))
    results: list[dict[str, Any] | None] = [None] * len(prompts_ids)
    sampling = temperature > 0
    if sampling and seed is not None:
        torch.manual_seed(seed)
    for batch in _batches(order, batch_size):
        rows = [prompts_ids[order[i]] for i in batch]
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rows):
            input_ids[j, width - len(r):] = torch.tensor(r, dtype=torch.long)
            attention[j, width - len(r):] = 1
        kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, eos_token_id=stop_ids, pad_token_id=pad_id)
        if sampling:
            kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
        else:
            kwargs.update(do_sample=False)
        with torch.inference_mode():
            out = model.generate(input_ids=input_ids, attention_mask=attention, **kwargs)
        new = out[:, width:]
        for j, i in enumerate(batch):
            tokens = new[j].tolist()
            finish = "length"
            for k, t in enumerate(tokens):
                if t in stop_ids:
                    tokens = tokens[:k]
                    finish = "stop"
                    break
            results[order[i]] = {
                "text": tokenizer.decode(tokens, skip_special_tokens=True).strip(),
                "prompt_tokens": len(rows[j]),
                "completion_tokens": len(tokens) + (1 if finish == "stop" else 0),
                "finish_reason": finish,
            }
    return results  # type: ignore[return-value]


class SftExample(NamedTuple):
    ids: list[int]  # chat-formatted prompt, response, end-of-turn token
    n_prompt: int  # how many of `ids` are prompt (not scored)


def build_sft_example(tokenizer, prompt: str, response: str, max_length: int) -> SftExample:
    """Chat-formatted prompt followed by the response and the end-of-turn token. The prompt is cut from the
    middle when the pair would exceed max_length, so the response tokens are kept."""
    prompt_ids = chat_prompt_ids(tokenizer, prompt)
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [end_of_turn_id(tokenizer)]
    response_ids = response_ids[: max(1, max_length // 2)] if len(prompt_ids) + len(response_ids) > max_length else response_ids
    prompt_ids = truncate_middle(prompt_ids, max(1, max_length - len(response_ids)))
    return SftExample(prompt_ids + response_ids, len(prompt_ids))


class ResponseNll(NamedTuple):
    nll_sum: float  # nats, summed over the scored tokens
    n_tokens: int


def response_nll(model, tokenizer, examples: Sequence[SftExample], *, batch_size: int) -> ResponseNll:
    """Summed negative log-likelihood (nats) of the response tokens only, and how many tokens were scored."""
    import torch

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    total, count = 0.0, 0
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
    for batch in _batches(order, batch_size):
        rows = [examples[order[i]] for i in batch]
        width = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        for j, (ids, n_prompt) in enumerate(rows):  # right padding: positions are unchanged
            t = torch.tensor(ids, dtype=torch.long)
            input_ids[j, : len(ids)] = t
            attention[j, : len(ids)] = 1
            labels[j, n_prompt: len(ids)] = t[n_prompt:]
        with torch.inference_mode():
            logits = model(input_ids=input_ids, attention_mask=attention).logits
        shift_logits = logits[:, :-1, :].float()
        shift_labels = labels[:, 1:]
        loss = torch.nn.functional.cross_entropy(
            shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1), ignore_index=-100, reduction="sum"
        )
        total += float(loss)
        count += int((shift_labels != -100).sum())
    return ResponseNll(total, count)


def perplexity(nll_sum: float, n_tokens: int) -> float:
    return math.exp(nll_sum / n_tokens) if n_tokens else float("nan")


def make_smoke_adapter(base_dir: str | Path, out_dir: str | Path, *, steps: int = 1, seed: int = 0) -> Path:
    """A tiny LoRA adapter (r=8 on q/v projections, `steps` optimizer steps on one chat example) for tests and
    demos that need a candidate without running the finetune stage. Saves adapter + tokenizer + training_meta.json."""
    import json

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    tok = load_tokenizer(base_dir)
    ids, n_prompt = build_sft_example(tok, "What is the capital of France?", "The capital of France is Paris.", 128)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    x = torch.tensor([ids])
    labels = x.clone()
    labels[0, :n_prompt] = -100
    model.train()
    for _ in range(steps):
        loss = model(input_ids=x, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    from pipelines.io import atomic_dir

    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        (tmp / "training_meta.json").write_text(json.dumps({"base_model_dir": str(base_dir), "steps": steps, "smoke": True}))
    return Path(out_dir)
