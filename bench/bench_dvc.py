"""Benchmark: DVC data versioning costs.

1. `dvc push` of an embeddings directory to S3 against a direct boto3 `upload_file` of the same files to the same
   server (a local `moto_server` on 127.0.0.1, a fresh bucket per run), median of 3. The directory is synthetic
   and realistic in shape and size (default ~50 MB: `vectors.parquet` with doc_id/source/384-d float32 vectors,
   a flat `index.faiss`-sized float32 blob, `index_ids.json`, `manifest.json`), or `--source DIR`.
   `dvc push` is timed both as the CLI a person runs (process start included) and in-process (`Repo.push`).
2. No-op `dvc repro` on the full stage graph. In this checkout when `dvc.lock` exists and `dvc status` is clean;
   otherwise in a temp copy of the repository (tracked files + the outputs present here; outputs of stages that
   never ran here get small placeholders) where `dvc commit -f` records every stage, so `dvc repro` has nothing to
   run. Timed in four interpreter set-ups to show what dominates and what cut it:
   pure-Python YAML vs the C parser (`ruamel.yaml.clib`), and modules compiled from source on every start vs
   precompiled bytecode (`uv pip install --compile-bytecode`). Without each, the setting is simulated: a stub
   `_ruamel_yaml` module that fails to import (ruamel falls back to pure Python) and an empty
   `PYTHONPYCACHEPREFIX` (Python finds no .pyc and compiles every module). One profiled run is summarised.

    .venv/bin/python bench/bench_dvc.py        # writes bench/results/dvc.json
"""
from __future__ import annotations

import argparse
import json
import os
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BIN = Path(sys.executable).parent
DVC = str(BIN / "dvc")
RESULTS = REPO / "bench" / "results" / "dvc.json"
CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, **CREDS)
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    for key in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "LLMOPS_ROOT"):
        env.pop(key, None)
    env.update(extra)
    return env


def sh(args, cwd, **extra) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, env=_env(**extra), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def timed(args, cwd, **extra) -> tuple[float, float]:
    """(wall seconds, CPU seconds user+sys of the child)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    sh(args, cwd, **extra)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def start_moto() -> tuple[subprocess.Popen, str]:
    from pipelines.versioning.local_s3 import spawn

    return spawn()


# -- 1. push vs boto3 ---------------------------------------------------------------------------------------------

def make_embeddings(dest: Path, target_mb: float, dim: int = 384) -> dict:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    dest.mkdir(parents=True, exist_ok=True)
    rows = int(target_mb * 1e6 / 2 / (dim * 4))
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((rows, dim), dtype=np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = [f"doc-{i:08d}" for i in range(rows)]
    sources = [("wiki", "code", "qa")[i % 3] for i in range(rows)]
    table = pa.table({"doc_id": ids, "source": sources,
                      "vector": pa.FixedSizeListArray.from_arrays(pa.array(vecs.ravel()), dim)})
    pq.write_table(table, dest / "vectors.parquet")
    (dest / "index.faiss").write_bytes(vecs.tobytes())        # a flat inner-product index is n * d float32
    (dest / "index_ids.json").write_text(json.dumps(ids))
    (dest / "manifest.json").write_text(json.dumps({"count": rows, "dim": dim, "synthetic": True}))
    return {"rows": rows, "dim": dim}


def bench_push(work: Path, repeats: int, target_mb: float, source: Path | None) -> dict:
    import boto3

    repo = work / "push-repo"
    repo.mkdir()
    sh(["git", "init", "-q"], repo)
    sh([DVC, "init", "-q"], repo)
    sh([DVC, "config", "core.analytics", "false"], repo)
    emb = repo / "data" / "embeddings"
    if source:
        shutil.copytree(source, emb)
        shape = {"source": str(source)}
    else:
        shape = {"source": "synthetic", **make_embeddings(emb, target_mb)}
    files = sorted(p for p in emb.rglob("*") if p.is_file())
    total = sum(p.stat().st_size for p in files)
    sh([DVC, "add", "-q", "data/embeddings"], repo)

    moto, endpoint = start_moto()
    try:
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        cli, cli_cpu, api, b3, b3p = [], [], [], [], []
        for i in range(repeats):
            bucket = f"bench-dvc-cli-{i}"
            client.create_bucket(Bucket=bucket)
            sh([DVC, "remote", "add", "-f", "s3", f"s3://{bucket}/dvc"], repo)
            sh([DVC, "remote", "modify", "s3", "endpointurl", endpoint], repo)
            wall, cpu = timed([DVC, "push", "-q", "-r", "s3"], repo)
            cli.append(wall)
            cli_cpu.append(cpu)

            bucket = f"bench-dvc-api-{i}"
            client.create_bucket(Bucket=bucket)
            sh([DVC, "remote", "modify", "s3", "url", f"s3://{bucket}/dvc"], repo)
            os.environ.update(CREDS)
            from dvc.repo import Repo

            t0 = time.perf_counter()
            with Repo(str(repo)) as r:
                pushed = r.push(remote="s3")
            api.append(time.perf_counter() - t0)

            bucket = f"bench-boto3-{i}"
            client.create_bucket(Bucket=bucket)
            t0 = time.perf_counter()
            for f in files:
                client.upload_file(str(f), bucket, f"emb/{f.relative_to(emb)}")
            b3.append(time.perf_counter() - t0)

            bucket = f"bench-boto3-proc-{i}"     # the same upload as its own process (imports included), like the CLI
            client.create_bucket(Bucket=bucket)
            script = (f"import boto3, pathlib; c = boto3.client('s3', endpoint_url='{endpoint}'); root = "
                      f"pathlib.Path('{emb}'); [c.upload_file(str(f), '{bucket}', 'emb/' + str(f.relative_to(root))) "
                      "for f in sorted(root.rglob('*')) if f.is_file()]")
            b3p.append(timed([sys.executable, "-c", script], repo)[0])
        objects = client.list_objects_v2(Bucket=f"bench-dvc-cli-{repeats - 1}").get("KeyCount")
        # where an in-process (imports warm) push spends its time
        import cProfile

        bucket = "bench-dvc-profile"
        client.create_bucket(Bucket=bucket)
        sh([DVC, "remote", "modify", "s3", "url", f"s3://{bucket}/dvc"], repo)
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        with Repo(str(repo)) as r:
            r.push(remote="s3")
        prof.disable()
        prof_seconds = time.perf_counter() - t0
        pst = pstats.Stats(prof)

        def cum(fragment: str, func: str) -> float:
            return round(max((v[3] for (f, _, n), v in pst.stats.items() if f.endswith(fragment) and n == func),
                             default=0.0), 2)
        breakdown = {"push_seconds": round(prof_seconds, 2),
                     "remote_status_query_seconds": cum("hashfile/status.py", "compare_status"),
                     "upload_seconds": cum("hashfile/transfer.py", "_do_transfer"),
                     "note": "DVC first asks the remote which objects it already has (one request per object), "
                             "then uploads the files and, after them, the .dir listing; the CLI adds interpreter "
                             "start and the s3fs/aiobotocore imports (~2-4 s here). boto3 upload_file does only "
                             "the uploads."}
    finally:
        moto.terminate()
        moto.wait(timeout=10)
    med = statistics.median
    return {
        "data": {**shape, "files": len(files), "bytes": total, "mb": round(total / 1e6, 1)},
        "server": "moto_server on 127.0.0.1 (fresh bucket per run)",
        "dvc_objects_pushed": pushed, "dvc_objects_in_bucket": objects,
        "dvc_push_cli_seconds_median": round(med(cli), 2), "dvc_push_cli_seconds_all": [round(x, 2) for x in cli],
        "dvc_push_cli_cpu_seconds_median": round(med(cli_cpu), 2),
        "dvc_push_api_seconds_median": round(med(api), 2), "dvc_push_api_seconds_all": [round(x, 2) for x in api],
        "boto3_upload_file_seconds_median": round(med(b3), 2), "boto3_upload_file_seconds_all": [round(x, 2) for x in b3],
        "boto3_process_seconds_median": round(med(b3p), 2), "boto3_process_seconds_all": [round(x, 2) for x in b3p],
        "ratio_dvc_cli_over_boto3": round(med(cli) / med(b3), 2),
        "ratio_dvc_cli_over_boto3_process": round(med(cli) / med(b3p), 2),
        "ratio_dvc_api_over_boto3": round(med(api) / med(b3), 2),
        "dvc_push_in_process_profile": breakdown,
        "dvc_cli_mb_per_s": round(total / 1e6 / med(cli), 1), "boto3_mb_per_s": round(total / 1e6 / med(b3), 1),
    }


# -- 2. no-op dvc repro -------------------------------------------------------------------------------------------

def _clean_here() -> bool:
    if not (REPO / "dvc.lock").exists():
        return False
    proc = subprocess.run([DVC, "status", "-q"], cwd=REPO, env=_env(), capture_output=True, text=True)
    return proc.returncode == 0 and not proc.stdout.strip()


PLACEHOLDERS = '''
from pathlib import Path
from dvc.repo import Repo
made = []
with Repo(".") as repo:
    for stage in repo.index.stages:
        for out in stage.outs:
            p = Path(out.fs_path)
            if not p.exists():
                if p.suffix:
                    p.parent.mkdir(parents=True, exist_ok=True)
                    p.write_text("{}\\n" if p.suffix == ".json" else "placeholder\\n")
                else:
                    p.mkdir(parents=True, exist_ok=True)
                    (p / "placeholder").write_text("x\\n")
                made.append(str(p.relative_to(Path.cwd().resolve())))
print("\\n".join(made))
'''


def copy_repo(dest: Path) -> list[str]:
    listed = sh(["git", "ls-files", "--cached", "--others", "--exclude-standard"], REPO).stdout.split()
    for rel in listed:
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    import yaml

    outs = []
    for name, stage in (yaml.safe_load((REPO / "dvc.yaml").read_text()).get("stages") or {}).items():
        outs += [next(iter(o)) if isinstance(o, dict) else o for o in stage.get("outs", [])]
    params = yaml.safe_load((REPO / "params.yaml").read_text())

    def resolve(p: str) -> str:
        if p.startswith("${") and p.endswith("}"):
            node = params
            for key in p[2:-1].split("."):
                node = node[key]
            return str(node)
        return p
    for out in map(resolve, outs):
        src = REPO / out
        if src.is_dir():
            shutil.copytree(src, dest / out, dirs_exist_ok=True)
        elif src.is_file():
            (dest / out).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / out)
    for rel in ("metrics", "plots"):
        if (REPO / rel).is_dir():
            shutil.copytree(REPO / rel, dest / rel, dirs_exist_ok=True)
    sh(["git", "init", "-q"], dest)
    made = sh([str(BIN / "python"), "-c", PLACEHOLDERS], dest).stdout.split()
    sh([DVC, "commit", "-f", "-q"], dest)
    sh(["git", "add", "-A"], dest)
    sh(["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "bench"], dest)
    return made


def bench_noop_repro(work: Path, repeats: int) -> dict:
    if _clean_here():
        where, made, repo = "this checkout (dvc status clean)", [], REPO
    else:
        repo = work / "repro-repo"
        repo.mkdir()
        made = copy_repo(repo)
        where = ("temp copy of this repository: every tracked file and the outputs present here, dvc commit -f "
                 "of all stages (this checkout has no dvc.lock / not all outputs)")
    stages = len(sh([DVC, "stage", "list"], repo).stdout.splitlines())
    stub = work / "no-c-yaml"
    stub.mkdir(exist_ok=True)
    (stub / "_ruamel_yaml.py").write_text("raise ImportError('simulated: ruamel.yaml.clib not installed')\n")
    setups = {
        "pure_python_yaml+no_bytecode": {"PYTHONPATH": str(stub), "PYTHONPYCACHEPREFIX": str(work / "empty-a")},
        "c_yaml+no_bytecode": {"PYTHONPYCACHEPREFIX": str(work / "empty-b")},
        "pure_python_yaml+bytecode": {"PYTHONPATH": str(stub)},
        "c_yaml+bytecode": {},
    }
    env_base = {"PYTHONDONTWRITEBYTECODE": "1"}   # as in this sandbox and many containers
    sh([DVC, "repro", "-q"], repo)                # warm the OS page cache and DVC's state db
    out: dict = {"where": where, "stages": stages, "placeholder_outputs": made, "runs_per_setup": repeats,
                 "setups": {}}
    for name, extra in setups.items():
        walls, cpus = [], []
        for _ in range(repeats):
            wall, cpu = timed([DVC, "repro"], repo, **env_base, **extra)
            walls.append(wall)
            cpus.append(cpu)
        out["setups"][name] = {"wall_seconds_median": round(statistics.median(walls), 2),
                               "wall_seconds_all": [round(w, 2) for w in walls],
                               "cpu_seconds_median": round(statistics.median(cpus), 2)}
    prof = work / "repro.prof"
    sh([DVC, "repro", "--cprofile-dump", str(prof)], repo, **env_base)
    stats = pstats.Stats(str(prof))
    total = max(v[3] for v in stats.stats.values())

    def cum(fragment: str, func: str) -> float:
        return round(max((v[3] for (f, _, n), v in stats.stats.items() if f.endswith(fragment) and n == func),
                         default=0.0), 2)
    out["profile_c_yaml+bytecode"] = {
        "repro_command_seconds": round(total, 2),
        "yaml_parse_seconds": cum("serialize/_yaml.py", "parse_yaml"),
        "params_read_seconds": cum("dependency/param.py", "read_params"),
        "stage_changed_checks_seconds": cum("stage/__init__.py", "changed"),
        "collect_stages_seconds": cum("repo/reproduce.py", "collect_stages"),
        "note": "profiled inside `dvc repro` after its CLI imports; the interpreter start and the imports before "
                "the command runs (~1 s) are outside these figures",
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mb", type=float, default=50.0, help="synthetic embeddings size")
    parser.add_argument("--source", type=Path, default=None, help="push this directory instead")
    parser.add_argument("--skip-push", action="store_true")
    parser.add_argument("--skip-repro", action="store_true")
    args = parser.parse_args()
    result: dict = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    result["machine"] = {"cpus": os.cpu_count(), "loadavg_at_start": [round(x, 1) for x in os.getloadavg()],
                         "note": "2 shared cores, other jobs running: compare figures within one run"}
    with tempfile.TemporaryDirectory(prefix="bench-dvc-") as tmp:
        work = Path(tmp)
        if not args.skip_push:
            result["push"] = bench_push(work, args.repeats, args.mb, args.source)
            result["push"]["loadavg_after"] = [round(x, 1) for x in os.getloadavg()]
            print(json.dumps(result["push"], indent=2))
        if not args.skip_repro:
            result["noop_repro"] = bench_noop_repro(work, args.repeats)
            result["noop_repro"]["target_seconds"] = 5.0
            result["noop_repro"]["before_seconds_reported"] = 5.7
            result["noop_repro"]["loadavg_after"] = [round(x, 1) for x in os.getloadavg()]
            print(json.dumps(result["noop_repro"], indent=2))
    result["machine"]["loadavg_at_end"] = [round(x, 1) for x in os.getloadavg()]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
