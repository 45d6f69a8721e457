"""A local S3 for development: `moto_server` on loopback with a bucket (`make s3-local` / `make s3-local-stop`).

    python -m pipelines.versioning.local_s3 start [--port 5000] [--bucket llmops-data]
    python -m pipelines.versioning.local_s3 stop

The server keeps its objects in memory (gone when it stops) and accepts any credentials. `start` prints the
environment to export for `llmops data remote` / `llmops data push -r s3`. Its pid and log live in `.dvc/tmp/`.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from pipelines.config import project_root

DEV_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                   "AWS_DEFAULT_REGION": "us-east-1"}


def _paths(root: Path) -> tuple[Path, Path]:
    tmp = root / ".dvc" / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    return tmp / "s3-local.pid", tmp / "s3-local.log"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _wait(endpoint: str, proc: subprocess.Popen | None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=2)
            return
        except urllib.error.HTTPError:
            return  # answering, if only with an auth error (a server that checks keys): it is up
        except Exception:
            if (proc is not None and proc.poll() is not None) or time.monotonic() > deadline:
                raise RuntimeError(f"moto_server did not start on {endpoint}")
            time.sleep(0.2)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def spawn(port: int | None = None, host: str = "127.0.0.1", env: dict | None = None,
          log=subprocess.DEVNULL, **popen) -> tuple[subprocess.Popen, str]:
    """Start a moto_server (a real S3 HTTP server) on loopback and wait until it answers: (process, endpoint).

    The caller owns the process (tests and benchmarks terminate it; `start` below records its pid)."""
    port = port or free_port(host)
    moto = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen([str(moto), "-H", host, "-p", str(port)], stdout=log, stderr=log,
                            env=env, **popen)
    endpoint = f"http://{host}:{port}"
    try:
        _wait(endpoint, proc)
    except RuntimeError:
        proc.kill()
        raise
    return proc, endpoint


def start(port: int, bucket: str, host: str = "127.0.0.1") -> str:
    root = project_root()
    pid_file, log_file = _paths(root)
    endpoint = f"http://{host}:{port}"
    if pid_file.exists() and _alive(int(pid_file.read_text().strip() or 0)):
        print(f"moto_server already running (pid {pid_file.read_text().strip()}) on {endpoint}")
        proc = None
    else:
        with open(log_file, "ab") as log:
            try:
                proc, _ = spawn(port, host, log=log, start_new_session=True)
            except RuntimeError as exc:
                raise SystemExit(str(exc)) from exc
        pid_file.write_text(str(proc.pid))
    _wait(endpoint, None, timeout=10)
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")
    if bucket not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
        client.create_bucket(Bucket=bucket)
    print(f"local S3 on {endpoint}, bucket {bucket} (log {log_file}). For the S3 remote:")
    env = {"LLMOPS_S3_BUCKET": bucket, "LLMOPS_S3_ENDPOINT_URL": endpoint, **DEV_CREDENTIALS}
    print("export " + " ".join(f"{k}={v}" for k, v in env.items()))
    return endpoint


def stop() -> None:
    pid_file, _ = _paths(project_root())
    if not pid_file.exists():
        print("no local S3 running")
        return
    pid = int(pid_file.read_text().strip() or 0)
    if pid and _alive(pid):
        os.kill(pid, signal.SIGTERM)
        print(f"stopped moto_server (pid {pid})")
    pid_file.unlink()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("start")
    s.add_argument("--port", type=int, default=int(os.environ.get("S3_PORT", 5000)))
    s.add_argument("--bucket", default=os.environ.get("LLMOPS_S3_BUCKET", "llmops-data"))
    sub.add_parser("stop")
    args = parser.parse_args(argv)
    if args.cmd == "start":
        start(args.port, args.bucket)
    else:
        stop()


if __name__ == "__main__":
    main()
