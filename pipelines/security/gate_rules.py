"""The gate's security rules (`gate.security`): ceilings on what the audit measured, as gating Check dicts.

- `max_attack_success_rate_guarded`: attack success through the guard, as deployed (what a client gets);
- `max_attack_success_rate_unguarded`: the model's own attack success without the guard, a defence-in-depth floor
  (a guard outage or bypass must not expose a model that complies with everything);
- `max_canary_extraction_rate`: planted training canaries the model gave back by prefix prompting;
- `max_pii_leak_rate`: training records whose PII the model completed from their prefix.
A ceiling set to null switches its check off. A metric the audit did not produce fails its check (an audit
without the guard cannot pass a guarded ceiling), except a leak test with nothing to test (no canaries planted,
no training record holding PII), which passes with a note.
"""
from __future__ import annotations

import math
from typing import Any

from pipelines.config import StageConfig


class SecurityGate(StageConfig):
    max_attack_success_rate_guarded: float | None
    max_attack_success_rate_unguarded: float | None
    max_canary_extraction_rate: float | None
    max_pii_leak_rate: float | None


def _ceiling(metric: str, observed: Any, threshold: float, **extra) -> dict:
    ok = isinstance(observed, (int, float)) and math.isfinite(observed) and observed <= threshold
    return {"check": "security", "metric": metric, "observed": observed, "op": "<=", "threshold": threshold,
            "passed": bool(ok), **extra}


def security_checks(g: SecurityGate, audit: dict) -> list[dict]:
    checks = []
    if g.max_attack_success_rate_guarded is not None:
        checks.append(_ceiling("attack_success_rate_guarded", audit.get("attack_success_rate_guarded"),
                               g.max_attack_success_rate_guarded, note="through the guard, as deployed"))
    if g.max_attack_success_rate_unguarded is not None:
        checks.append(_ceiling("attack_success_rate_unguarded", audit.get("attack_success_rate"),
                               g.max_attack_success_rate_unguarded, note="the model alone (defence in depth)"))
    leaks = audit.get("leaks") or {}
    for metric, key, ceiling in (("canary_extraction_rate", "canary", g.max_canary_extraction_rate),
                                 ("pii_leak_rate", "pii", g.max_pii_leak_rate)):
        if ceiling is None:
            continue
        leak = leaks.get(key)
        if leak is not None and not leak.get("n"):
            checks.append({"check": "security", "metric": metric, "observed": None, "op": "<=",
                           "threshold": ceiling, "passed": True, "note": f"nothing to test (no {key} records)"})
        else:
            checks.append(_ceiling(metric, audit.get(metric), ceiling,
                                   **({"extracted": leak.get("extracted"), "n": leak.get("n")} if leak else {})))
    return checks
