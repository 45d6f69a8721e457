"""Repository hygiene (issue 15): detect-secrets over the tracked source/config/docs files against the committed
`.secrets.baseline`, and bandit on pipelines/ against `.bandit-baseline.json`. A finding not in a baseline fails:
fix it, mark a false positive inline (`# pragma: allowlist secret`, `# nosec BXXX`), or re-baseline on purpose
(commands in each assertion message)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
SCANNED = (".py", ".md", ".yaml", ".yml", ".toml", ".cfg", ".ini", ".sh", ".j2", ".txt", ".env")
SKIPPED = ("data/", "great_expectations/", "infra/schemas/")


def tracked_files(root: Path) -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout.split("\n")
    return [f for f in out if f.endswith(SCANNED) and not f.startswith(SKIPPED) and (root / f).is_file()]


def test_no_new_secrets(repo_root):
    if not (repo_root / ".git").exists():
        pytest.skip("not a git checkout")
    files = tracked_files(repo_root)
    proc = subprocess.run([str(BIN / "detect-secrets-hook"), "--baseline", ".secrets.baseline", *files],
                          cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (
        "detect-secrets found secrets not in .secrets.baseline:\n" + proc.stdout[-4000:] + proc.stderr[-2000:]
        + "\nre-baseline on purpose: .venv/bin/python -c 'import tests.test_security_scan as t; t.rebaseline()'")


def test_no_new_bandit_findings(repo_root):
    proc = subprocess.run([str(BIN / "bandit"), "-r", "pipelines", "-q", "-f", "json", "-b", ".bandit-baseline.json"],
                          cwd=repo_root, capture_output=True, text=True, timeout=300)
    report = json.loads(proc.stdout)
    new = [f"{r['filename']}:{r['line_number']} {r['test_id']} {r['issue_text']}" for r in report["results"]]
    assert not new, ("bandit findings not in .bandit-baseline.json:\n" + "\n".join(new)
                     + "\nre-baseline on purpose: .venv/bin/bandit -r pipelines -q -f json -o .bandit-baseline.json")


def rebaseline(root: Path = Path(".")) -> None:
    """Write .secrets.baseline from the tracked files (after reviewing every finding)."""
    files = tracked_files(root)
    out = subprocess.run([str(BIN / "detect-secrets"), "scan", *files], cwd=root, capture_output=True, text=True,
                         check=True).stdout
    (root / ".secrets.baseline").write_text(out)
