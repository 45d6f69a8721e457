"""Deployment after promote: the serving layer must answer with the new champion, or the alias moves back.

The servers poll the registry alias themselves (serve.reload_poll_s); `deploy_champion` also asks each one to
reload now (POST /admin/reload, with the admin key from LLMOPS_ADMIN_KEY when auth is on) and then waits until
its /health reports the champion's version. No server listening is "not_running" (nothing to deploy to: the next
server start loads the champion), not a failure; a server that keeps answering with another version is a failure,
and the lifecycle DAG's rollback task then moves the alias back to the previous champion.
"""
from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from typing import Any, TypedDict

from pipelines.config import load_params, load_section, project_root
from pipelines.io import read_json, write_json
from pipelines.models.registry import RegistryConfig, find_champion

DEPLOYMENT_RECORD = "reports/deployment.json"


class DeployReport(TypedDict):
    version: int | None
    status: str  # deployed | not_running | no_champion
    servers: dict[str, Any]  # url -> served version / error
    waited_s: float


def _serve_urls() -> list[str]:
    serve = load_params().get("serve", {})
    urls = serve.get("urls") or [f"http://{serve.get('host', '127.0.0.1')}:{serve.get('port', 8000)}"]
    return [u.rstrip("/") for u in urls]


def _request(url: str, method: str = "GET", timeout: float = 5.0) -> dict[str, Any]:
    req = urllib.request.Request(url, method=method, data=b"{}" if method == "POST" else None,
                                 headers={"content-type": "application/json"})
    if key := os.environ.get("LLMOPS_ADMIN_KEY"):
        req.add_header("authorization", f"Bearer {key}")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"{}")


def _served_version(health: dict[str, Any]) -> int | None:
    version = health.get("version", health.get("model_version"))
    try:
        return int(version) if version is not None else None
    except (TypeError, ValueError):
        return None


def deploy_champion(registry: RegistryConfig | None = None, *, timeout_s: float = 120.0) -> DeployReport:
    registry = registry or load_section("registry", RegistryConfig)
    champion = find_champion(registry).info
    if champion is None:
        return DeployReport(version=None, status="no_champion", servers={}, waited_s=0.0)
    want = champion["version"]
    servers: dict[str, Any] = {}
    started = time.monotonic()
    for url in _serve_urls():
        try:
            _request(f"{url}/admin/reload", "POST", timeout=timeout_s)
        except urllib.error.HTTPError as exc:  # 401/404: the server's own poll still picks the alias up
            servers[url] = {"reload": f"HTTP {exc.code}"}
        except (urllib.error.URLError, OSError) as exc:
            servers[url] = {"status": "not_running", "error": str(exc)}
            continue
        while True:
            try:
                served = _served_version(_request(f"{url}/health"))
            except (urllib.error.URLError, OSError) as exc:
                served, servers[url] = None, {"error": str(exc)}
            if served == want:
                servers[url] = {**servers.get(url, {}), "status": "deployed", "version": served}
                break
            if time.monotonic() - started > timeout_s:
                raise RuntimeError(f"{url} still serves version {served} {timeout_s:.0f} s after champion moved to "
                                   f"{want}; rolling back")
            time.sleep(1.0)
    reachable = [s for s in servers.values() if s.get("status") == "deployed"]
    report = DeployReport(version=want, status="deployed" if reachable else "not_running", servers=servers,
                          waited_s=round(time.monotonic() - started, 2))
    write_json(project_root() / DEPLOYMENT_RECORD, {**report, "model_name": registry.model_name,
                                                    "alias": registry.alias, "at": time.time()})
    return report


class RollbackReport(TypedDict):
    model_name: str
    alias: str
    version: int
    previous_version: int | None
    reason: str


def rollback_champion(registry: RegistryConfig | None = None, *, reason: str) -> RollbackReport:
    """Move the alias back to the champion before the last promotion (`llmops rollback`, the tag promote wrote)."""
    from pipelines.serving.rollback import rollback

    registry = registry or load_section("registry", RegistryConfig)
    moved = rollback(registry)
    return RollbackReport(model_name=moved["model_name"], alias=moved["alias"], version=moved["version"],
                          previous_version=moved["previous_version"], reason=reason)


def gate_summary(decision_path: str = "reports/gate_decision.json",
                 report_path: str = "reports/evaluate.html") -> dict[str, str]:
    """What the promotion approver sees: the gate's decision, its failed checks and where the eval report is."""
    decision = read_json(project_root() / decision_path)
    lines = [f"### Gate decision: **{decision.get('decision')}** (champion: version {decision.get('champion')})", ""]
    for check in decision.get("reasons", []):
        lines.append(f"- {check.get('check')} {check.get('metric') or ''}: observed {check.get('observed')} "
                     f"{check.get('op') or ''} {check.get('threshold')} -> {'pass' if check.get('passed') else 'FAIL'}")
    lines += ["", f"Evaluation report: [{report_path}](/llmops/reports/{report_path.split('/')[-1]}) "
                  f"(file {project_root() / report_path})"]
    candidate = (decision.get("candidate_sha256") or "")[:12] or "candidate"
    return {"decision": str(decision.get("decision")), "candidate": candidate, "body": "\n".join(lines)}
