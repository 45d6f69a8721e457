"""Chat-turn formatting with prompt masking, and right-padded batches: shared by the SFT and DPO objectives
(pipelines/training/sft.py, pipelines/training/dpo.py). torch is imported inside the functions."""
from __future__ import annotations

IGNORE_INDEX = -100  # label value that torch's cross-entropy (and so HF causal-LM loss) skips


def format_example(tokenizer, prompt: str, response: str, max_length: int) -> dict[str, list[int]] | None:
    """One chat turn (user=prompt, assistant=response) as input_ids + labels, prompt tokens masked with -100.

    The prompt part is the chat template with `add_generation_prompt=True`, i.e. exactly what the model sees at
    inference time; the labels cover the assistant's answer and its end-of-turn token. Returns None when
    truncation to `max_length` leaves no response token (nothing to learn from).
    """
    user = [{"role": "user", "content": prompt}]
    prompt_text = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(
        user + [{"role": "assistant", "content": response}], tokenize=False
    )
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(full_text, add_special_tokens=False)["input_ids"]
    if full_ids[: len(prompt_ids)] != prompt_ids:
        # A template whose prompt is not a token prefix of the full turn: tokenize the two parts separately.
        full_ids = prompt_ids + tokenizer(full_text[len(prompt_text):], add_special_tokens=False)["input_ids"]
    input_ids = full_ids[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + full_ids[len(prompt_ids):])[:max_length]
    if all(label == IGNORE_INDEX for label in labels):
        return None
    return {"input_ids": input_ids, "labels": labels}


def collate(examples: list[dict], pad_id: int) -> dict:
    """Right-pad a batch; padding is masked out of attention and loss."""
    import torch

    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        labels[i, :n] = torch.tensor(e["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
