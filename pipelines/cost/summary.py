"""Per-stage resources and cost of one or more revisions side by side (`llmops cost`).

A stage's figures are the `resources` block that `run_stage` writes into its metrics file (pipelines.cost.meter).
Metrics files are git-tracked DVC metrics (`cache: false` in dvc.yaml), so a revision's figures are
`git show REV:<metrics path>`, the path read from that revision's params.yaml (`<section>.metrics`); the workspace
reads the files on disk. A revision whose metrics file is missing, or was written before the meter existed (no
`resources`), shows "-" for that stage.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

WORKSPACE = "workspace"
# (key in the resources block, column title, format)
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("wall_seconds", "wall s", "{:.1f}"),
    ("cpu_seconds", "CPU s", "{:.1f}"),
    ("peak_rss_mb", "peak MB", "{:.0f}"),
    ("gpu_seconds", "GPU s", "{:.1f}"),
    ("cost_usd", "cost USD", "{:.6f}"),
)
SUMMED = ("wall_seconds", "cpu_seconds", "gpu_seconds", "cost_usd", "tokens")  # peak MB is a max, not a sum


class CostError(RuntimeError):
    """A revision git does not know, or a root that is not a git repository."""


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)


def resolve(root: Path, rev: str) -> dict[str, str | None]:
    """{"rev": as given, "commit": short hash (None for the workspace)}."""
    if rev == WORKSPACE:
        return {"rev": rev, "commit": None}
    proc = _git(root, "rev-parse", "--verify", "--short", f"{rev}^{{commit}}")
    if proc.returncode != 0:
        raise CostError(f"unknown revision '{rev}' in {root}: {proc.stderr.strip() or proc.stdout.strip()}")
    return {"rev": rev, "commit": proc.stdout.strip()}


def read_at(root: Path, commit: str | None, path: str) -> str | None:
    """The text of `path` (relative to `root`) at `commit`, or on disk when `commit` is None; None when absent."""
    if commit is None:
        p = root / path
        return p.read_text(encoding="utf-8") if p.is_file() else None
    proc = _git(root, "show", f"{commit}:./{path}")
    return proc.stdout if proc.returncode == 0 else None


def _json(text: str | None) -> Any:
    try:
        return json.loads(text) if text is not None else None
    except json.JSONDecodeError:
        return None


def stage_resources(root: Path, commit: str | None, sections: Mapping[str, str]) -> dict[str, dict | None]:
    """stage -> its `resources` block at `commit` (None: no metrics file there, or one without resources)."""
    try:
        params = yaml.safe_load(read_at(root, commit, "params.yaml") or "") or {}
    except yaml.YAMLError:
        params = {}
    out: dict[str, dict | None] = {}
    for stage, section in sections.items():
        node = params.get(section) if isinstance(params, dict) else None
        path = node.get("metrics") if isinstance(node, dict) else None
        metrics = _json(read_at(root, commit, path)) if isinstance(path, str) else None
        res = metrics.get("resources") if isinstance(metrics, dict) else None
        out[stage] = res if isinstance(res, dict) else None
    return out


def _totals(blocks: Sequence[dict | None]) -> dict | None:
    present = [b for b in blocks if b]
    if not present:
        return None
    total: dict[str, float] = {k: sum(float(b.get(k) or 0) for b in present) for k in SUMMED}
    total["peak_rss_mb"] = max(float(b.get("peak_rss_mb") or 0) for b in present)
    total["stages"] = len(present)
    return total


def summarise(root: str | Path, revs: Sequence[str], sections: Mapping[str, str],
              serving: dict | None = None) -> dict:
    """The figures of every stage (`sections`: stage -> its params.yaml section) at each revision, the totals, and
    (optionally) serving's request-log summary. JSON-ready."""
    root = Path(root).resolve()
    if any(r != WORKSPACE for r in revs) and _git(root, "rev-parse", "--git-dir").returncode != 0:
        raise CostError(f"{root} is not a git repository: only the workspace can be summarised")
    resolved = [resolve(root, r) for r in revs]
    per_rev = [stage_resources(root, r["commit"], sections) for r in resolved]
    stages = [{"stage": s, "by_rev": [blocks[s] for blocks in per_rev]} for s in sections]
    return {
        "revisions": resolved,
        "stages": stages,
        "totals": [_totals(list(blocks.values())) for blocks in per_rev],
        "serving": serving,
    }


# ------------------------------------------------------------------------------------------------ terminal table

def _cell(block: dict | None, key: str, fmt: str) -> str:
    value = block.get(key) if block else None
    return "-" if value is None else fmt.format(float(value))


def _diff(first: dict | None, last: dict | None, key: str, fmt: str) -> str:
    a, b = (first or {}).get(key), (last or {}).get(key)
    if a is None or b is None:
        return "-"
    d = float(b) - float(a)
    return ("+" if d >= 0 else "") + fmt.format(d)


def _per_1k(block: dict | None) -> float | None:
    if not block or not block.get("tokens"):
        return None
    return float(block.get("cost_usd") or 0) / float(block["tokens"]) * 1000


def _aligned(rows: list[list[str]], groups: list[tuple[str, int]] | None = None) -> list[str]:
    """Rows of cells as text columns: the first left-aligned, the rest right-aligned, two spaces apart; `groups`
    (title, number of columns) adds a header line above spanning those columns (the first column excluded)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    if groups:  # a group title wider than its columns widens its last column
        col = 1
        for title, span in groups:
            have = sum(widths[col:col + span]) + 2 * (span - 1)
            if len(title) > have:
                widths[col + span - 1] += len(title) - have
            col += span
    out = []
    if groups:
        line, col = " " * widths[0], 1
        for title, span in groups:
            have = sum(widths[col:col + span]) + 2 * (span - 1)
            line += "  " + f"{title:>{have}}"
            col += span
        out.append(line)
    for r in rows:
        out.append("  ".join([f"{r[0]:<{widths[0]}}", *(f"{c:>{w}}" for c, w in zip(r[1:], widths[1:]))]).rstrip())
    return out


def table(summary: dict) -> str:
    """Stages down, (metric x revision) across; with two revisions or more a `diff` column (last - first) per
    metric; totals last; then cost per 1k tokens of the stages that count tokens, and serving's."""
    revs = summary["revisions"]
    labels = [r["rev"] if r["commit"] is None or r["commit"] == r["rev"] else f"{r['rev']} ({r['commit']})"
              for r in revs]
    compare = len(revs) > 1
    names = [chr(ord("A") + i) for i in range(len(revs))] if compare else [""]
    lines = [("revisions: " + ", ".join(f"{n} = {lab}" for n, lab in zip(names, labels))
              + f"; diff = {names[-1]} - {names[0]}") if compare else f"revision: {labels[0]}"]

    def row(name: str, blocks: list[dict | None]) -> list[str]:
        cells = [name]
        for key, _, fmt in COLUMNS:
            cells += [_cell(b, key, fmt) for b in blocks]
            if compare:
                cells.append(_diff(blocks[0], blocks[-1], key, fmt))
        return cells

    if compare:
        header = ["stage", *([*names, "diff"] * len(COLUMNS))]
        groups = [(title, len(names) + 1) for _, title, _ in COLUMNS]
    else:
        header, groups = ["stage", *(title for _, title, _ in COLUMNS)], None
    shown = [s for s in summary["stages"] if any(s["by_rev"])]
    body = [row(s["stage"], s["by_rev"]) for s in shown]
    total = row("total", summary["totals"])
    text = _aligned([header, *body, total], groups)
    rule = "-" * max(len(t) for t in text)
    head_lines = 2 if groups else 1
    lines += [*text[:head_lines], rule, *text[head_lines:-1], rule, text[-1]]
    counts = [t["stages"] if t else 0 for t in summary["totals"]]
    if compare and len(set(counts)) > 1:
        lines.append("totals over the stages with figures: " + ", ".join(f"{n} {c}" for n, c in zip(names, counts)))
    missing = [s["stage"] for s in summary["stages"] if not any(s["by_rev"])]
    if missing:
        lines.append("no resources recorded (no metrics file, or written before the meter): " + ", ".join(missing))

    tokened = [s for s in summary["stages"] if any(b and b.get("tokens") for b in s["by_rev"])]
    if tokened:
        rows = [["cost per 1k tokens (USD)", *names, *(["diff"] if compare else []), "tokens"]]
        for s in tokened:
            values = [_per_1k(b) for b in s["by_rev"]]
            cells = [f"  {s['stage']}", *("-" if v is None else f"{v:.8f}" for v in values)]
            if compare:
                a, b = values[0], values[-1]
                cells.append("-" if a is None or b is None else f"{b - a:+.8f}")
            cells.append(" / ".join("-" if not b or not b.get("tokens") else str(int(b["tokens"]))
                                    for b in s["by_rev"]))
            rows.append(cells)
        lines += ["", *_aligned(rows)]
    serving = summary.get("serving")
    if serving:
        lines += ["", serving_line(serving)]
    return "\n".join(lines)


def serving_line(s: dict) -> str:
    per_1k = s.get("cost_per_1k_tokens_usd")
    return (f"serving ({s['path']}, workspace): {s['requests']} requests, {s['metered_requests']} with CPU-seconds, "
            f"{s['tokens']} tokens, {s['cpu_seconds']:.2f} CPU s, {s['cost_usd']:.6f} USD, "
            + (f"{per_1k:.8f} USD per 1k tokens" if per_1k is not None else "no per-request CPU-seconds logged"))
