"""The end-to-end workspace shared by tests/test_e2e.py and tests/test_e2e_loop.py: a copy of the repository
(tracked files + the shipped sample, cut to a test size) with test-sized params, reproduced once per session."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

VENV_BIN = Path(sys.executable).parent

# Smaller than the demo so the suite stays within its time budget; the code path is the same.
TEST_PARAMS = {
    ("finetune", "max_steps"): 2,
    # every task family on 1 example (each family's own behaviour is tests/test_evaluate.py's business): the
    # e2e proves the wiring, twice (reproduction and the loop's retrain), x2 models
    **{("evaluate", "tasks", i, "max_examples"): 1 for i in range(8)},
    # perplexity on 2 (cheap: one forward pass each): a single held-out example can be one the tiny model finds
    # absurd (perplexity 1e5), and the gate's versus-champion margin compares against the champion's own figure
    ("evaluate", "tasks", 0, "max_examples"): 2,
    # short answers: the generation families' cost is per generated token, x2 models (x2 again for RAG)
    **{("evaluate", "tasks", i, "max_new_tokens"): 8 for i in (1, 2, 3, 5, 6, 7)},
    ("evaluate", "ray", "actors"): 1,         # one model actor (one process start) with both threads
    ("evaluate", "ray", "threads_per_actor"): 2,
    ("evaluate", "bootstrap", "samples"): 200,
    ("gate", "versus_reference", "min_examples"): 1,
    ("audit", "max_prompts"): 4,
    ("audit", "max_new_tokens"): 8,
    ("audit", "max_pii_records"): 2,
    ("audit", "leak_max_new_tokens"): 8,
    ("embed", "concurrency"): 1,              # one model actor: one process start instead of two
    ("engines", "spark", "shuffle_partitions"): 2,  # ~160 rows: one shuffle task per core
    ("evaluate_retrieval", "max_questions"): 60,
}


def env_for(ws: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PATH=f"{VENV_BIN}:{env.get('PATH', '')}",
        LLMOPS_ROOT=str(ws),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        SPARK_LOCAL_IP="127.0.0.1",
    )
    env.update(extra)
    return env


def run(args: list[str], ws: Path, timeout: int = 1500, **extra: str) -> subprocess.CompletedProcess:
    started = time.perf_counter()
    proc = subprocess.run(args, cwd=ws, env=env_for(ws, **extra), capture_output=True, text=True, timeout=timeout)
    print(f"\n$ {' '.join(args)}  ({time.perf_counter() - started:.1f}s, rc={proc.returncode})")
    if proc.returncode != 0:
        print(proc.stdout[-6000:], proc.stderr[-6000:])
    return proc


def set_params(ws: Path, updates: dict[tuple[str, ...], object]) -> None:
    path = ws / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for keys, value in updates.items():
        node = params
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def shrink_sample(ws: Path, per_source: int = 60, xquad_articles: int = 8) -> None:
    """Cut the shipped sample to a test-sized one (compute cost is per document: embedding 840 documents alone
    takes minutes on a 2-core CPU) while keeping what the stages must find: exact duplicates (a verbatim copy
    and a case/whitespace-noisy copy) and XQuAD paragraphs whose questions the retrieval evaluation asks."""
    raw = ws / "data" / "sample" / "raw"
    roleplay = json.loads((raw / "gpteacher_roleplay.json").read_text())[:per_source]
    roleplay += [dict(r) for r in roleplay[:2]]
    codegen = json.loads((raw / "gpteacher_codegen.json").read_text())[:per_source]
    codegen.append({**codegen[0], "instruction": "  " + codegen[0]["instruction"].upper() + "  "})
    (raw / "gpteacher_roleplay.json").write_text(json.dumps(roleplay, indent=1))
    (raw / "gpteacher_codegen.json").write_text(json.dumps(codegen, indent=1))
    xquad_path = ws / "data" / "sample" / "rag" / "xquad.en.json"
    xquad = json.loads(xquad_path.read_text())
    xquad["data"] = xquad["data"][:xquad_articles]
    xquad_path.write_text(json.dumps(xquad))
    titles = {a["title"] for a in xquad["data"]}
    lines = (raw / "xquad_en_paragraphs.jsonl").read_text().splitlines()
    kept = [line for line in lines if line.strip() and json.loads(line)["title"] in titles]
    (raw / "xquad_en_paragraphs.jsonl").write_text("\n".join(kept) + "\n")


def slice_guard_sample(src: Path, dst: Path) -> None:
    """The guard's training sample cut to a test size (every source and split kept, up to n rows per split, label
    and, in train, source): the detectors still train, on about a tenth of the rows. `src`/`dst`: data/sample dirs."""
    for rel, n in (("security/guard/injection.jsonl", 40), ("toxicity/davidson_sample.jsonl", 120),
                   ("security/guard/harmful_pairs.jsonl", 100)):
        rows = [json.loads(line) for line in (src / rel).read_text().split("\n") if line.strip()]
        seen: dict = {}
        keep = []
        for r in rows:
            k = (r["split"], r["label"], r.get("source") if r["split"] == "train" else None)
            if seen.get(k, 0) < n:
                seen[k] = seen.get(k, 0) + 1
                keep.append(r)
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        (dst / rel).write_text("".join(json.dumps(r) + "\n" for r in keep))


def make_workspace(tmp_path_factory, repo_root, base_model_dir) -> Path:
    ws = tmp_path_factory.mktemp("e2e") / "repo"
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                            cwd=repo_root, capture_output=True, text=True, check=True).stdout.split()
    for rel in listed:
        src = repo_root / rel
        if src.is_file():
            (ws / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, ws / rel)
    shrink_sample(ws)
    slice_guard_sample(repo_root / "data" / "sample", ws / "data" / "sample")
    # The content-addressed MiniLM cache (keyed by model fingerprint and text, never by stage) as a laptop's second
    # run has it: conftest's guard_models already encoded the same guard slice into the repository's cache.
    cache = repo_root / "data" / "cache" / "embeddings"
    if cache.is_dir():
        shutil.copytree(cache, ws / "data" / "cache" / "embeddings")
    set_params(ws, {**TEST_PARAMS, ("prepare_base_model", "model_path"): str(base_model_dir)})
    for args in (["git", "init", "-q"], ["git", "add", "-A"],
                 ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
        subprocess.run(args, cwd=ws, check=True)
    return ws


def reproduce(workspace: Path) -> Path:
    proc = run([str(VENV_BIN / "dvc"), "repro"], workspace)
    assert proc.returncode == 0, "dvc repro failed"
    return workspace
