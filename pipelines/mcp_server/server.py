"""The MCP server: resources, read-only tools, acting tools and prompts over `pipelines.platform_api`.

Transports:
- stdio: a desktop client starts `llmops mcp` in the repository; the server reads that local workspace only. No key
  travels over stdio, so the acting tools are refused there.
- streamable HTTP (`--transport http`): every request carries `Authorization: Bearer <key>`, checked against the
  platform's API keys (pipelines/serving/auth.py); a key needs the scope `mcp` (or to be an admin key). With no key
  configured, `serve.auth.no_keys` decides as it does for serving: open on a loopback address, refused elsewhere.
  The same app publishes the served RAG assistant as an A2A agent (pipelines/platform_api/a2a.py): its card at
  /.well-known/agent-card.json (public) and its JSON-RPC endpoint at /a2a (same keys).

Acting tools (`trigger_retrain`, `rollback`, `abort_rollout`) run only when `mcp.acting_tools` is true, over HTTP,
for an admin key; every call, allowed or refused, is a line of `mcp.audit_log` with its caller. Approvals are never
tools. A problem the caller can fix (an unknown version, a bad argument, a service that is down) is an MCP error
whose message names it; the server keeps serving.
"""
from __future__ import annotations

import getpass
import json
import logging
from dataclasses import dataclass
from typing import Any, Callable, Literal

from mcp.server.mcpserver import Context, MCPServer

from pipelines.config import StageConfig, parse_section
from pipelines.platform_api import act, read, remote
from pipelines.platform_api.workspace import NotFound, PlatformError, Workspace

log = logging.getLogger("llmops.mcp")

SCOPE = "mcp"
ACTING_TOOLS = ("trigger_retrain", "rollback", "abort_rollout")


class McpConfig(StageConfig):
    """The `mcp` section of params.yaml."""

    transport: Literal["stdio", "http"]  # stdio: a desktop client starts the server; http: streamable HTTP
    host: str  # http: bind address (a non-loopback one needs API keys)
    port: int  # http: 0 picks a free port (printed on start)
    path: str  # http: the endpoint path (/mcp)
    acting_tools: bool  # true: trigger_retrain, rollback, abort_rollout run (HTTP, admin key); false: refused
    audit_log: str  # JSONL: every acting call, allowed or refused, with its caller
    serve_url: str | None  # the served API that `ask` calls; null: http://serve.host:serve.port
    serve_api_key_env: str  # stdio: env variable holding the key `ask` sends (HTTP forwards the caller's own key)
    airflow_url: str | None  # Airflow's REST API; null: http://airflow.api_host:airflow.api_port
    airflow_user_env: str  # env variables holding the Airflow user and password; unset: admin and the password
    airflow_password_env: str  # Airflow generated into AIRFLOW_HOME (llmops airflow up)
    retrain_dag: str  # the DAG `trigger_retrain` runs
    timeout_s: float  # each call to the serving API or Airflow
    ask_max_tokens: int  # max_tokens of an `ask`
    search_k: int  # hits `search_corpus` returns unless asked for another number


@dataclass(frozen=True)
class Caller:
    id: str
    admin: bool
    transport: Literal["stdio", "http"]
    api_key: str | None = None  # HTTP: the caller's own key, forwarded to the serving API by `ask`


def _mcp_error(exc: Exception):
    from mcp.shared.exceptions import MCPError
    from mcp.types import INTERNAL_ERROR, INVALID_PARAMS

    if isinstance(exc, remote.RemoteError):
        return MCPError(code=INTERNAL_ERROR, message=str(exc))
    return MCPError(code=INVALID_PARAMS, message=str(exc))


def _answer(fn: Callable[[], Any]) -> Any:
    """The domain call's result; its PlatformError (or a bad value) as an MCP error naming the problem."""
    try:
        return fn()
    except (PlatformError, ValueError) as exc:
        raise _mcp_error(exc) from None


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


def build_server(ws: Workspace, cfg: McpConfig, transport: Literal["stdio", "http"], keys=None):
    """The MCPServer for `ws`. `keys`: the KeyStore HTTP requests were checked against (None over stdio)."""
    from mcp.server.mcpserver.prompts.base import Prompt, PromptArgument, UserMessage
    from mcp.types import ToolAnnotations

    reg_name = ws.registry().model_name
    server = MCPServer(
        "llmops",
        title="LLMOps platform",
        instructions=(f"The LLMOps platform of {ws.root.name}: model registry ({reg_name}), gate decisions, "
                      "evaluations with intervals, drift, lineage, cost, rollout, the RAG corpus and the served "
                      "champion. Approvals stay with a person in Airflow's UI."),
        version="1",
        log_level="WARNING",
    )
    read_only = ToolAnnotations(read_only_hint=True, destructive_hint=False, open_world_hint=False)
    remote_read = ToolAnnotations(read_only_hint=True, destructive_hint=False, open_world_hint=True)
    acting = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=False,
                             open_world_hint=True)

    def caller_of(ctx: Context) -> Caller:
        request = ctx.request_context.request if ctx is not None else None
        if request is None:
            return Caller(f"stdio:{getpass.getuser()}", False, "stdio")
        header = request.headers.get("authorization")
        key = keys.check(header) if keys is not None else None  # the ASGI layer already refused a bad key
        secret = header[7:].strip() if header and header.lower().startswith("bearer ") else None
        return Caller(key.id if key else "anonymous@loopback", bool(key and key.admin), "http", secret)

    def guarded(tool: str, ctx: Context, arguments: dict[str, Any], fn: Callable[[Caller], dict]) -> str:
        caller = caller_of(ctx)
        refusal = None
        if not cfg.acting_tools:
            refusal = f"{tool} is disabled: acting tools are off (mcp.acting_tools: false in params.yaml)"
        elif caller.transport != "http":
            refusal = f"{tool} needs an admin API key, and no key travels over stdio: use the HTTP transport"
        elif not caller.admin:
            refusal = f"{tool} needs an admin API key; the key '{caller.id}' is not one"
        if refusal:
            act.audit(ws, tool, caller.id, arguments, "refused", refusal)
            log.warning("refused %s for %s", tool, caller.id)
            from mcp.shared.exceptions import MCPError

            raise MCPError(code=-32003, message=refusal)  # -32003: forbidden (server-defined range)
        log.warning("%s called by %s with %s", tool, caller.id, arguments)
        return _json(_answer(lambda: act.audited(ws, tool, caller.id, arguments, lambda: fn(caller))))

    # ------------------------------------------------------------------------------------- read-only tools
    @server.tool(annotations=read_only)
    def status() -> str:
        """What serves (champion, challenger), the latest gate decision and evaluation, drift of the latest monitor
        run, the rollout, recent retrains and approved sources."""
        return _json(_answer(lambda: read.status(ws)))

    @server.tool(annotations=read_only)
    def compare_versions(a: int, b: int) -> str:
        """Two registered versions side by side: recorded metrics and their difference, each one's evaluation,
        and the paired bootstrap intervals when one was evaluated against the other."""
        return _json(_answer(lambda: read.compare_versions(ws, a, b)))

    @server.tool(annotations=read_only)
    def explain_gate(version: int | None = None) -> str:
        """Why the gate promoted (or rejected) a version: every check with observed value, threshold, interval.
        Without a version: the workspace's latest gate decision."""
        return _json(_answer(lambda: read.explain_gate(ws, version)))

    @server.tool(annotations=read_only)
    def lineage(version: int) -> str:
        """A version's lineage: DVC content hashes per stage, OpenLineage jobs, raw sources and their licences."""
        return _json(_answer(lambda: read.lineage(ws, version)))

    @server.tool(annotations=read_only)
    def drift_history() -> str:
        """Every monitor run's drift windows (tests triggered, p-values), the drift stage's report, retrains."""
        return _json(_answer(lambda: read.drift_history(ws)))

    @server.tool(annotations=read_only)
    def search_corpus(query: str, k: int | None = None, source: str | None = None) -> str:
        """Top-k chunks of the RAG index serving uses, with scores (as `llmops retrieve`)."""
        return _json(_answer(lambda: read.search_corpus(ws, query, k or cfg.search_k, [source] if source else None)))

    @server.tool(annotations=remote_read)
    def ask(question: str, ctx: Context, rag: bool = False) -> str:
        """Ask the served champion through its HTTP API (guard included); rag=true answers from the corpus with
        citations. Names the version that answered."""
        import os

        caller = caller_of(ctx)
        key = caller.api_key if caller.transport == "http" else os.environ.get(cfg.serve_api_key_env)
        return _json(_answer(lambda: remote.ask(ws, question, rag, key, cfg.ask_max_tokens)))

    @server.tool(annotations=remote_read)
    def pending_approvals() -> str:
        """Human approvals waiting in Airflow (new source, promotion, final rollout step), each with the URL where
        a person answers it. Approving is not a tool."""
        return _json(_answer(lambda: remote.pending_approvals(ws)))

    # ---------------------------------------------------------------------------------------- acting tools
    @server.tool(annotations=acting)
    def trigger_retrain(reason: str, ctx: Context) -> str:
        """Start a manual lifecycle run in Airflow (admin key, acting tools enabled); logged with the caller."""
        return guarded("trigger_retrain", ctx, {"reason": reason},
                       lambda c: act.trigger_retrain(ws, reason, c.id))

    @server.tool(annotations=acting)
    def rollback(ctx: Context, to: int | None = None) -> str:
        """Move the champion alias back to the previous champion (or to version `to`); servers follow on their
        next alias poll (admin key, acting tools enabled); logged with the caller."""
        return guarded("rollback", ctx, {"to": to}, lambda c: act.rollback(ws, c.id, to))

    @server.tool(annotations=acting)
    def abort_rollout(reason: str, ctx: Context) -> str:
        """Abort the running canary/shadow rollout: replicas serve the champion only (admin key, acting tools
        enabled); logged with the caller."""
        return guarded("abort_rollout", ctx, {"reason": reason}, lambda c: act.abort_rollout(ws, reason, c.id))

    # ------------------------------------------------------------------------------------------- resources
    def resource(uri: str, fn: Callable[[], Any], description: str, mime: str = "application/json") -> None:
        name = uri.removeprefix("llmops://").replace("/", "_")

        def handler() -> str:
            value = _answer(fn)
            return value if isinstance(value, str) else _json(value)

        server.resource(uri, name=name, description=description, mime_type=mime)(handler)

    resource("llmops://status", lambda: read.status(ws), "status: what serves, gate, evaluation, drift, rollout")
    resource("llmops://registry/versions", lambda: read.versions(ws), "every registered version, tags and aliases")
    resource("llmops://gate/decision", lambda: read.workspace_gate(ws) or _missing("gate", "decision"),
             "the workspace's latest gate decision (reports/gate_decision.json)")
    resource("llmops://evaluation/report", lambda: read.workspace_evaluation(ws) or _missing("evaluate", "metrics"),
             "the latest evaluation per task, with paired bootstrap intervals of candidate - reference")
    resource("llmops://drift/history", lambda: read.drift_history(ws), "drift windows of every monitor run")
    resource("llmops://rollout/status", lambda: read.rollout_status(ws), "the rollout state (canary / shadow)")
    resource("llmops://cost", lambda: read.cost(ws), "cost per stage (llmops cost --json)")
    resource("llmops://maturity", lambda: read.maturity(ws), "the maturity scorecard (llmops maturity)")
    resource("llmops://prompts", lambda: [{k: t[k] for k in ("name", "file", "sha256", "variables")}
                                          for t in read.prompt_templates(ws)], "the versioned prompt templates")

    def _missing(section: str, key: str):
        raise NotFound(f"{ws.section(section).get(key)} does not exist yet (run the {section} stage)")

    @server.resource("llmops://versions/{version}/card", name="model_card", mime_type="text/markdown",
                     description="the model card of a registered version")
    def card(version: str) -> str:
        return _answer(lambda: read.model_card(ws, version))

    @server.resource("llmops://versions/{version}/gate", name="version_gate", mime_type="application/json",
                     description="the gate decision recorded with a version, explained")
    def version_gate(version: str) -> str:
        return _json(_answer(lambda: read.explain_gate(ws, read.parse_version(version))))

    @server.resource("llmops://versions/{version}/evaluation", name="version_evaluation",
                     mime_type="application/json", description="the evaluation recorded with a version")
    def version_evaluation(version: str) -> str:
        return _json(_answer(lambda: read.version_evaluation(ws, version)))

    @server.resource("llmops://drift/runs/{run}", name="drift_report", mime_type="application/json",
                     description="the drift reports (and online evaluation) of one monitor run")
    def drift_run(run: str) -> str:
        return _json(_answer(lambda: read.drift_report(ws, run)))

    @server.resource("llmops://prompts/{name}", name="prompt_template", mime_type="text/plain",
                     description="a versioned prompt template's source")
    def prompt_source(name: str) -> str:
        return _answer(lambda: read.prompt_template(ws, name))["text"]

    # --------------------------------------------------------------------------------------------- prompts
    for t in read.prompt_templates(ws):
        def render(_name=t["name"], **arguments: str):
            return [UserMessage(_answer(lambda: read.render_prompt(ws, _name, arguments)))]

        server.add_prompt(Prompt(
            name=t["name"], title=f"prompt template {t['file']}",
            description=f"pipelines/serving/prompts/{t['file']} (sha256 {t['sha256'][:12]}), rendered as serving "
                        "renders it" + ("; contexts: a JSON list or blank-line-separated passages"
                                        if "contexts" in t["variables"] else ""),
            arguments=[PromptArgument(name=v, required=True) for v in t["variables"]], fn=render))
    return server


# ------------------------------------------------------------------------------------------------- transports


PUBLIC_PATHS = ("/.well-known/agent-card.json",)  # A2A discovery: the card is public, the endpoint is not


class KeyAuth:
    """ASGI wrapper: every HTTP request needs a key with the `mcp` scope (or an admin key); 401/403 otherwise.
    With no keys configured the app is open (the caller made sure it is bound to loopback)."""

    def __init__(self, app, keys):
        self.app, self.keys = app, keys

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.keys.empty or (
                scope.get("path") in PUBLIC_PATHS and scope.get("method") in ("GET", "HEAD")):
            return await self.app(scope, receive, send)
        from pipelines.serving.errors import APIError

        header = next((v.decode("latin-1") for k, v in scope.get("headers") or [] if k == b"authorization"), None)
        try:
            key = self.keys.check(header)
        except APIError as exc:
            return await exc.response()(scope, receive, send)
        if not key.has_scope(SCOPE):
            denied = APIError(403, f"the key '{key.id}' lacks the '{SCOPE}' scope", "scope_required")
            return await denied.response()(scope, receive, send)
        return await self.app(scope, receive, send)


def load_config(ws: Workspace) -> McpConfig:
    return parse_section(ws.params, "mcp", McpConfig)


def http_app(ws: Workspace, cfg: McpConfig, keys=None, host: str | None = None, base_url: str | None = None):
    """The streamable HTTP app behind key auth; refuses a non-loopback bind without keys (serve.auth.no_keys).
    Beside `cfg.path` it serves the A2A agent card of the served RAG assistant (public, at
    /.well-known/agent-card.json) and its JSON-RPC endpoint (/a2a, same keys); `base_url` is the address clients
    reach this server at (default: http://host:port)."""
    from pipelines.serving.auth import KeyStore, is_loopback

    keys = keys if keys is not None else KeyStore.from_env()
    host = host or cfg.host
    if keys.empty:
        policy = (ws.section("serve").get("auth") or {}).get("no_keys", "open_on_loopback")
        if policy != "open_on_loopback" or not is_loopback(host):
            raise PlatformError(f"llmops mcp over HTTP on {host}: no API key is configured (LLMOPS_API_KEYS_FILE, "
                                f"LLMOPS_API_KEYS, LLMOPS_ADMIN_KEY) and serve.auth.no_keys is {policy}: refusing "
                                "to serve the platform unauthenticated")
    server = build_server(ws, cfg, "http", keys)
    app = server.streamable_http_app(streamable_http_path=cfg.path, host=host)
    from pipelines.platform_api import a2a

    app.router.routes.extend(a2a.routes(ws, base_url or f"http://{host}:{cfg.port}", not keys.empty,
                                        cfg.ask_max_tokens))
    return KeyAuth(app, keys)


def serve(ws: Workspace, cfg: McpConfig, transport: str, host: str | None = None, port: int | None = None) -> None:
    if transport == "stdio":
        build_server(ws, cfg, "stdio").run("stdio")
        return
    import socket

    import uvicorn

    host = host or cfg.host
    port = cfg.port if port is None else port
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    base = f"http://{'[' + host + ']' if ':' in host else host}:{bound}"
    app = http_app(ws, cfg, host=host, base_url=base)
    print(f"llmops mcp: streamable HTTP on {base}{cfg.path}; A2A agent card at {base}/.well-known/agent-card.json",
          flush=True)
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])
