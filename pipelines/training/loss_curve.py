"""The loss curve of a fine-tuning run as the CSV `dvc plots` reads: `step, loss, eval_loss` (eval_loss empty at
steps without a held-out evaluation)."""
from __future__ import annotations

import csv
import io


def loss_curve_csv(losses: list[float], eval_history: list[tuple[int, float]]) -> str:
    """One row per optimizer step (1-based), losses with 6 decimals."""
    evals = dict(eval_history)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["step", "loss", "eval_loss"])
    for i, loss in enumerate(losses, start=1):
        writer.writerow([i, f"{loss:.6f}", f"{evals[i]:.6f}" if i in evals else ""])
    return buf.getvalue()
