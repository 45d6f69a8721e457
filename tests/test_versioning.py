"""Versioned datasets and embeddings: real DVC and git in temp repos, a real S3 server (moto_server) on loopback.

A tiny two-stage pipeline (corpus -> embeddings, Parquet + metrics JSON like the real stages) is reproduced twice
and committed twice; the tests push it to S3 and to the local default remote, restore it in a fresh `git clone`,
list and diff its versions, and check that each bad remote/cache case fails with a readable message while the
workspace stays byte-identical.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipelines.cli import app

VENV_BIN = Path(sys.executable).parent
DVC = str(VENV_BIN / "dvc")
REPO = Path(__file__).resolve().parents[1]

STAGE_SCRIPT = '''
import json, sys
from pathlib import Path
import pyarrow as pa, pyarrow.parquet as pq
import yaml

p = yaml.safe_load(open("params.yaml"))["corpus"]
stage = sys.argv[1]
docs = [(f"{s}-{i}", s) for s in p["sources"] for i in range(p["sources"][s]) if f"{s}-{i}" not in p["drop"]]
if stage == "dedup":
    out = Path("data/curated/corpus"); out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"doc_id": [d for d, _ in docs], "source": [s for _, s in docs],
                             "text": [f"text of {d} " * 20 for d, _ in docs]}), out / "part-00000.parquet")
    (out / "_SUCCESS").write_text("")
    by = {}
    for _, s in docs:
        by[s] = by.get(s, 0) + 1
    Path("metrics").mkdir(exist_ok=True)
    Path("metrics/dedup.json").write_text(json.dumps({"out": len(docs), "out_by_source": by,
                                                      "output_dir": "data/curated/corpus"}))
else:
    t = pq.read_table("data/curated/corpus")
    out = Path("data/embeddings"); out.mkdir(parents=True, exist_ok=True)
    n = t.num_rows
    vec = [[float((i * 7 + j) % 13) / 13 for j in range(8)] for i in range(n)]
    pq.write_table(pa.table({"doc_id": t["doc_id"], "source": t["source"], "vector": vec}), out / "vectors.parquet")
    (out / "index.bin").write_bytes(bytes(range(256)) * (n + 1))
    Path("metrics/embed.json").write_text(json.dumps({"count": n, "dim": 8}))
'''

DVC_YAML = '''
stages:
  dedup:
    cmd: python stage.py dedup
    deps: [stage.py]
    params: [corpus]
    outs: [data/curated/corpus]
    metrics:
      - metrics/dedup.json: {cache: false}
  embed:
    cmd: python stage.py embed
    deps: [stage.py, data/curated/corpus]
    outs: [data/embeddings]
    metrics:
      - metrics/embed.json: {cache: false}
'''

V1 = {"sources": {"wiki": 6, "code": 4}, "drop": []}
V2 = {"sources": {"wiki": 8, "code": 4}, "drop": ["code-1"]}   # +2 wiki, -1 code


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '')}"
    for key in ("LLMOPS_ROOT", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        env.pop(key, None)
    env.update(extra)
    return env


def sh(args: list[str], cwd: Path, check: bool = True, **extra: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, env=_env(**extra), capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def _git_commit(repo: Path, message: str) -> None:
    sh(["git", "add", "-A"], repo)
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message], repo)


def _write_params(repo: Path, corpus: dict) -> None:
    import yaml

    (repo / "params.yaml").write_text(yaml.safe_dump({"corpus": corpus}))


def snapshot(repo: Path, *dirs: str) -> dict[str, str]:
    """sha256 of every file under the given dirs (the workspace data a failure must not touch)."""
    out = {}
    for d in dirs:
        for f in sorted((repo / d).rglob("*")):
            if f.is_file():
                out[str(f.relative_to(repo))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


DATA_DIRS = ("data/curated", "data/embeddings")


@pytest.fixture(scope="module")
def origin(tmp_path_factory) -> Path:
    """A git + DVC repo with two committed versions of the corpus and embeddings (real `dvc repro`)."""
    repo = tmp_path_factory.mktemp("versioning") / "origin"
    repo.mkdir()
    sh(["git", "init", "-q"], repo)
    sh([DVC, "init", "-q"], repo)
    # the project's DVC config: analytics off, the local-directory default remote in .dvc/storage
    shutil.copy(REPO / ".dvc" / "config", repo / ".dvc" / "config")
    shutil.copy(REPO / ".dvc" / ".gitignore", repo / ".dvc" / ".gitignore")
    (repo / "stage.py").write_text(STAGE_SCRIPT)
    (repo / "dvc.yaml").write_text(DVC_YAML)
    _write_params(repo, V1)
    sh([DVC, "repro", "-q"], repo)
    _git_commit(repo, "corpus v1")
    _write_params(repo, V2)
    sh([DVC, "repro", "-q"], repo)
    _git_commit(repo, "corpus v2: more wiki, one code doc removed")
    return repo


@pytest.fixture()
def work(origin, tmp_path) -> Path:
    """A private copy of the origin repo (tests may break its cache or config)."""
    dest = tmp_path / "work"
    shutil.copytree(origin, dest, symlinks=True)
    return dest


def s3_env(s3_server: dict, bucket: str, **over: str) -> dict[str, str]:
    env = {"LLMOPS_S3_BUCKET": bucket, "LLMOPS_S3_PREFIX": "llmops/dvc",
           "LLMOPS_S3_ENDPOINT_URL": s3_server["endpoint_url"], "AWS_ACCESS_KEY_ID": s3_server["aws_access_key_id"],
           "AWS_SECRET_ACCESS_KEY": s3_server["aws_secret_access_key"], "AWS_DEFAULT_REGION": "us-east-1"}
    env.update(over)
    return env


def llmops(args: list[str], monkeypatch, env: dict[str, str] | None = None):
    """The `llmops` CLI in-process (same code path as the console script), with env vars set for the call."""
    for key in ("LLMOPS_ROOT", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    return CliRunner().invoke(app, args, catch_exceptions=False)


# -- S3 remote: push, fresh clone, pull --------------------------------------------------------------------------

def test_push_to_s3_then_fresh_clone_pulls_identical_data_and_status_is_clean(work, s3_server, s3_bucket, tmp_path,
                                                                           monkeypatch):
    bucket, client = s3_bucket
    env = s3_env(s3_server, bucket)
    before = snapshot(work, *DATA_DIRS)

    assert llmops(["data", "remote", "--root", str(work)], monkeypatch, env).exit_code == 0
    config_local = (work / ".dvc" / "config.local").read_text()
    assert f"s3://{bucket}/llmops/dvc" in config_local and s3_server["endpoint_url"] in config_local
    assert "testing" not in config_local, "credentials must never be written"
    assert "s3" not in (work / ".dvc" / "config").read_text().replace("config.local", "")

    pushed = llmops(["data", "push", "-r", "s3", "--root", str(work)], monkeypatch, env)
    assert pushed.exit_code == 0 and "pushed to 's3'" in pushed.output, pushed.output
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys and all(k.startswith("llmops/dvc/files/md5/") for k in keys)

    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(work), str(clone)], tmp_path)
    assert snapshot(clone, *DATA_DIRS).keys() == {"data/curated/.gitignore"}   # only DVC's ignore file
    assert llmops(["data", "remote", "--root", str(clone)], monkeypatch, env).exit_code == 0
    sh([DVC, "pull", "-r", "s3"], clone, **env)          # plain DVC works with the written remote
    assert snapshot(clone, *DATA_DIRS) == before
    status = sh([DVC, "status"], clone, **env)
    assert "up to date" in status.stdout.lower(), status.stdout


def test_local_default_remote_round_trip(work, monkeypatch):
    """No setup: `llmops data push` goes to the committed local-directory default (.dvc/storage)."""
    before = snapshot(work, *DATA_DIRS)
    result = llmops(["data", "push", "--root", str(work)], monkeypatch)
    assert result.exit_code == 0, result.output
    assert "to 'local'" in result.output and (work / ".dvc" / "storage" / "files" / "md5").is_dir()
    shutil.rmtree(work / ".dvc" / "cache")
    shutil.rmtree(work / "data" / "curated" / "corpus")
    shutil.rmtree(work / "data" / "embeddings")
    result = llmops(["data", "pull", "--root", str(work)], monkeypatch)
    assert result.exit_code == 0, result.output
    assert snapshot(work, *DATA_DIRS) == before


# -- bad input: each case names the problem and leaves the workspace untouched -----------------------------------

@pytest.fixture(scope="module")
def s3_with_auth():
    """A second moto_server that checks access keys (INITIAL_NO_AUTH_ACTION_COUNT=0): unknown keys are refused."""
    from pipelines.versioning.local_s3 import spawn

    proc, endpoint = spawn(env=dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="0"))
    yield endpoint
    proc.terminate()
    proc.wait(timeout=10)


def _bad_remote_case(work, monkeypatch, env, action: str, expected: str) -> None:
    before = snapshot(work, *DATA_DIRS, ".dvc/cache")
    setup = llmops(["data", "remote", "--no-check", "--root", str(work)], monkeypatch, env)
    assert setup.exit_code == 0, setup.output
    started = time.perf_counter()
    result = llmops(["data", action, "-r", "s3", "--root", str(work)], monkeypatch, env)
    elapsed = time.perf_counter() - started
    assert result.exit_code == 2, result.output
    assert expected in result.output, result.output
    assert "Traceback" not in result.output
    assert elapsed < 20, f"the pre-flight should fail fast, took {elapsed:.1f}s"
    assert snapshot(work, *DATA_DIRS, ".dvc/cache") == before


@pytest.mark.parametrize("action", ["push", "pull"])
def test_unreachable_endpoint(work, monkeypatch, action):
    from pipelines.versioning.local_s3 import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    env = {"LLMOPS_S3_BUCKET": "llmops-data", "LLMOPS_S3_ENDPOINT_URL": dead, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    _bad_remote_case(work, monkeypatch, env, action, f"cannot reach S3 endpoint {dead}")


def test_wrong_credentials(work, monkeypatch, s3_with_auth):
    env = {"LLMOPS_S3_BUCKET": "llmops-data", "LLMOPS_S3_ENDPOINT_URL": s3_with_auth,
           "AWS_ACCESS_KEY_ID": "AKIAWRONGWRONGWRONG1", "AWS_SECRET_ACCESS_KEY": "wrong",
           "AWS_DEFAULT_REGION": "us-east-1"}
    _bad_remote_case(work, monkeypatch, env, "push", f"credentials rejected by {s3_with_auth}")


def test_missing_bucket(work, monkeypatch, s3_server):
    env = s3_env(s3_server, "no-such-bucket-here")
    _bad_remote_case(work, monkeypatch, env, "pull", f"bucket no-such-bucket-here does not exist at "
                                                     f"{s3_server['endpoint_url']}")


def test_corrupted_cache_object_stops_push_and_pull_and_names_the_file(work, monkeypatch, s3_server, s3_bucket):
    bucket, client = s3_bucket
    env = s3_env(s3_server, bucket)
    assert llmops(["data", "remote", "--root", str(work)], monkeypatch, env).exit_code == 0
    # corrupt the cache object behind the current corpus Parquet file (same size, one byte flipped)
    from pipelines.versioning.cache import expand, tracked_objects

    cache_dir, outs = tracked_objects(work)
    objects, _ = expand(cache_dir, outs)
    victim = next(o for o in objects if o.path == "data/curated/corpus/part-00000.parquet")
    cpath = Path(victim.cache_path)
    os.chmod(cpath, 0o644)
    raw = bytearray(cpath.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    cpath.write_bytes(bytes(raw))
    before = snapshot(work, *DATA_DIRS, ".dvc/cache")

    for action in ("push", "pull"):
        result = llmops(["data", action, "-r", "s3", "--root", str(work)], monkeypatch, env)
        assert result.exit_code == 2, result.output
        assert "data/curated/corpus/part-00000.parquet" in result.output
        assert "is corrupted" in result.output and "nothing was transferred" in result.output
        assert snapshot(work, *DATA_DIRS, ".dvc/cache") == before
    assert "Contents" not in client.list_objects_v2(Bucket=bucket), "nothing may reach the remote"

    verify = llmops(["data", "verify", "--root", str(work)], monkeypatch)
    assert verify.exit_code == 1 and "part-00000.parquet" in verify.output
    # the workspace copy is intact: quarantine the bad object, re-cache from the workspace, push succeeds
    assert llmops(["data", "verify", "--quarantine", "--root", str(work)], monkeypatch).exit_code == 1
    assert not cpath.exists() and (work / ".dvc" / "tmp" / "corrupted" / victim.oid).exists()
    sh([DVC, "commit", "-f", "-q", "dedup"], work)
    assert llmops(["data", "verify", "--root", str(work)], monkeypatch).exit_code == 0
    result = llmops(["data", "push", "-r", "s3", "--root", str(work)], monkeypatch, env)
    assert result.exit_code == 0, result.output


# -- versions and diff -------------------------------------------------------------------------------------------

def test_versions_lists_every_committed_version(origin, monkeypatch):
    from pipelines.versioning.history import versions

    entries = versions(origin)
    assert [e["subject"] for e in entries] == ["corpus v2: more wiki, one code doc removed", "corpus v1"]
    v2, v1 = ({o["path"]: o for o in e["outs"]} for e in entries)
    assert set(v1) == {"data/curated/corpus", "data/embeddings"}
    assert v1["data/curated/corpus"]["rows"] == 10 and v2["data/curated/corpus"]["rows"] == 11
    assert v1["data/embeddings"]["rows"] == 10 and v2["data/embeddings"]["rows"] == 11
    assert v1["data/curated/corpus"]["md5"].endswith(".dir") and v1["data/curated/corpus"]["nfiles"] == 2
    assert v1["data/curated/corpus"]["md5"] != v2["data/curated/corpus"]["md5"]
    assert v2["data/curated/corpus"]["rows_by_source"] == {"wiki": 8, "code": 3}

    table = llmops(["data", "versions", "--root", str(origin)], monkeypatch)
    assert table.exit_code == 0, table.output
    assert "corpus v1" in table.output and "data/embeddings" in table.output
    assert v2["data/curated/corpus"]["md5"][:10] in table.output


def test_diff_shows_rows_added_and_removed_per_source_and_embedding_count(origin, monkeypatch):
    from pipelines.versioning.history import diff

    result = diff(origin, "HEAD~1", "HEAD")
    changes = {c["path"]: c for c in result["changes"]}
    corpus = changes["data/curated/corpus"]
    assert corpus["status"] == "modified" and corpus["source_of_counts"] == "data"
    assert (corpus["rows_a"], corpus["rows_b"], corpus["added"], corpus["removed"]) == (10, 11, 2, 1)
    assert corpus["by_source"]["wiki"] == {"rows_a": 6, "rows_b": 8, "added": 2, "removed": 0}
    assert corpus["by_source"]["code"] == {"rows_a": 4, "rows_b": 3, "added": 0, "removed": 1}
    emb = changes["data/embeddings"]
    assert emb["embeddings"] and (emb["rows_a"], emb["rows_b"]) == (10, 11)

    text = llmops(["data", "diff", "HEAD~1", "HEAD", "--root", str(origin)], monkeypatch)
    assert text.exit_code == 0, text.output
    assert "wiki" in text.output and "+2 / -0" in text.output and "+0 / -1" in text.output
    assert "embeddings 10 -> 11 (+1)" in text.output


def test_diff_falls_back_to_metrics_when_a_version_is_not_cached(work, monkeypatch):
    from pipelines.versioning.history import diff

    shutil.rmtree(work / ".dvc" / "cache")
    result = diff(work, "HEAD~1", "HEAD")
    corpus = next(c for c in result["changes"] if c["path"] == "data/curated/corpus")
    assert corpus["source_of_counts"] == "metrics" and "not in the local DVC cache" in corpus["note"]
    assert (corpus["rows_a"], corpus["rows_b"]) == (10, 11)
    assert corpus["by_source_counts"]["code"] == {"rows_a": 4, "rows_b": 3}
    bad = llmops(["data", "diff", "nope", "HEAD", "--root", str(work)], monkeypatch)
    assert bad.exit_code == 2 and "unknown revision 'nope'" in bad.output


def test_plain_dvc_takes_the_endpoint_from_aws_endpoint_url(work, s3_server, s3_bucket):
    """With no `endpointurl` in the config, DVC's S3 remote (botocore) uses AWS_ENDPOINT_URL from the environment."""
    bucket, client = s3_bucket
    sh([DVC, "remote", "add", "--local", "s3", f"s3://{bucket}/env"], work)
    sh([DVC, "push", "-q", "-r", "s3"], work, AWS_ENDPOINT_URL=s3_server["endpoint_url"],
       AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert keys and all(k.startswith("env/files/md5/") for k in keys)


def test_make_s3_local_starts_moto_with_a_bucket_and_stops_it(tmp_path, monkeypatch, capsys):
    import boto3

    from pipelines.versioning import local_s3

    (tmp_path / "params.yaml").write_text("{}\n")
    monkeypatch.setenv("LLMOPS_ROOT", str(tmp_path))
    port = local_s3.free_port()
    endpoint = local_s3.start(port, "dev-bucket")
    try:
        assert endpoint == f"http://127.0.0.1:{port}"
        client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                              aws_secret_access_key="testing", region_name="us-east-1")
        assert "dev-bucket" in {b["Name"] for b in client.list_buckets()["Buckets"]}
        assert f"LLMOPS_S3_ENDPOINT_URL={endpoint}" in capsys.readouterr().out
    finally:
        local_s3.stop()
    assert not (tmp_path / ".dvc" / "tmp" / "s3-local.pid").exists()


# -- approved landing batches travel with push/pull ---------------------------------------------------------------

INGEST_LANDED = '''
import json, sys
from pathlib import Path
from pipelines.data.landing import landed_sources
rows = []
for src in landed_sources("data/landed"):
    for f in sorted(Path(".").glob(src.path)):
        rows += [dict(json.loads(line), source=src.name) for line in f.read_text().splitlines() if line.strip()]
Path("data/interim").mkdir(parents=True, exist_ok=True)
Path("data/interim/corpus.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\\n" for r in rows))
Path("metrics").mkdir(exist_ok=True)
Path("metrics/ingest.json").write_text(json.dumps({"rows": len(rows)}))
'''

INGEST_DVC_YAML = '''
stages:
  ingest:
    cmd: python ingest.py
    deps: [ingest.py, data/landed]
    outs: [data/interim/corpus.jsonl]
    metrics:
      - metrics/ingest.json: {cache: false}
'''


def test_landed_batches_are_dvc_tracked_so_a_fresh_clone_pulls_them_and_reproduces(tmp_path, s3_server, s3_bucket,
                                                                                  monkeypatch):
    """A batch approved at landing (the real `landing.accept`) is `dvc add`-ed with its approval record; pushed to
    S3 (moto_server), a fresh clone of the commit pulls it back, and the stage that reads landed data (ingest's
    shape) is up to date there and, forced, reproduces the same output."""
    import json

    import yaml

    from pipelines.data import landing

    bucket, client = s3_bucket
    env = s3_env(s3_server, bucket)
    repo = tmp_path / "origin"
    (repo / "data" / "landed").mkdir(parents=True)
    sh(["git", "init", "-q"], repo)
    sh([DVC, "init", "-q"], repo)
    shutil.copy(REPO / ".dvc" / "config", repo / ".dvc" / "config")
    shutil.copy(REPO / ".dvc" / ".gitignore", repo / ".dvc" / ".gitignore")
    shutil.copy(REPO / ".gitignore", repo / ".gitignore")  # the project's rules: landed data itself not in git
    (repo / "data" / "landed" / ".gitkeep").write_text("")
    (repo / "ingest.py").write_text(INGEST_LANDED)
    (repo / "dvc.yaml").write_text(INGEST_DVC_YAML)
    pythonpath = {"PYTHONPATH": str(REPO)}
    sh([DVC, "repro", "-q"], repo, **pythonpath)
    _git_commit(repo, "nothing landed yet")

    cfg = landing.LandingConfig(inbox=str(repo / "data" / "landing"), s3_inbox=None, flag_file="_READY",
                                poke_interval_s=1, landed_dir=str(repo / "data" / "landed"),
                                rejects_dir=str(repo / "data" / "rejects"), pii_scan_rows=10,
                                max_bad_line_fraction=0.5, dvc_track=True)
    rows = [{"instruction": f"Question {i}?", "input": "", "response": f"Answer {i}."} for i in range(5)]
    folder = repo / "data" / "landing" / "faq"
    folder.mkdir(parents=True)
    (folder / "source.yaml").write_text(yaml.safe_dump({"kind": "instruction", "format": "jsonl", "licence": "MIT",
                                                        "pii": "redact", "fields": {"prompt": "instruction",
                                                                                    "response": "response"}}))
    (folder / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = landing.accept(cfg, landing.scan_inbox(cfg), run_id="r1", approved_by="alice", approved_sources=["faq"])
    assert report["dvc_tracked"] == ["data/landed/faq.dvc", "data/landed/approvals.json.dvc"]
    landed_before = snapshot(repo, "data/landed")
    assert "data/landed/faq/r1__b.jsonl" in landed_before
    sh([DVC, "repro", "-q"], repo, **pythonpath)  # the retrain's ingest reads the landed batch
    assert json.loads((repo / "metrics" / "ingest.json").read_text()) == {"rows": 5}
    _git_commit(repo, "retrain on the landed batch")
    tracked = sh(["git", "ls-files", "data/landed"], repo).stdout.split()
    assert sorted(tracked) == ["data/landed/.gitignore", "data/landed/.gitkeep", "data/landed/approvals.json.dvc",
                               "data/landed/faq.dvc"]  # the data itself is not in git (DVC's .gitignore)

    assert llmops(["data", "remote", "--root", str(repo)], monkeypatch, env).exit_code == 0
    pushed = llmops(["data", "push", "-r", "s3", "--root", str(repo)], monkeypatch, env)
    assert pushed.exit_code == 0, pushed.output
    batch_md5 = hashlib.md5((repo / "data" / "landed" / "faq" / "r1__b.jsonl").read_bytes()).hexdigest()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert f"llmops/dvc/files/md5/{batch_md5[:2]}/{batch_md5[2:]}" in keys  # the batch itself went to S3

    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    assert not (clone / "data" / "landed" / "faq").exists()
    assert llmops(["data", "remote", "--root", str(clone)], monkeypatch, env).exit_code == 0
    pulled = llmops(["data", "pull", "-r", "s3", "--root", str(clone)], monkeypatch, env)
    assert pulled.exit_code == 0, pulled.output
    assert snapshot(clone, "data/landed") == landed_before
    status = sh([DVC, "status"], clone, **env, **pythonpath)
    assert "up to date" in status.stdout.lower(), status.stdout  # the retrain's inputs are all there
    sh([DVC, "repro", "-q", "-f", "ingest"], clone, **pythonpath)
    assert snapshot(clone, "data/interim") == snapshot(repo, "data/interim")
