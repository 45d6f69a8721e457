"""The served RAG assistant as an A2A agent (`a2a-sdk`): its agent card and an executor that answers each message
through the serving API in RAG mode (guard included), with the version that answered and the citations.

The card lists one JSON-RPC interface (A2A protocol 1.0) at `<base>/a2a` and one skill; it is what
`GET /.well-known/agent-card.json` returns. The executor forwards the caller's bearer key to the serving API, so the
serving rate limits and guard overrides of that key apply, as they do for MCP's `ask`.
"""
from __future__ import annotations

import asyncio
from typing import Any

from a2a.helpers.proto_helpers import new_text_message
from a2a.server.agent_execution.agent_executor import AgentExecutor
from a2a.types.a2a_pb2 import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentProvider,
    AgentSkill,
    HTTPAuthSecurityScheme,
    SecurityRequirement,
    SecurityScheme,
    StringList,
)

from pipelines.platform_api import read, remote
from pipelines.platform_api.workspace import PlatformError, Workspace

RPC_PATH = "/a2a"
SKILL_ID = "rag_answer"


def agent_card(ws: Workspace, base_url: str, authenticated: bool) -> AgentCard:
    """The card of the served RAG assistant (the registry's champion behind the OpenAI-compatible API)."""
    reg = read.versions(ws)
    champion = reg["aliases"].get(reg["serving_alias"])
    card = AgentCard(
        name=f"{reg['model_name']} RAG assistant",
        description=(f"Answers questions from the platform's versioned corpus (RAG index {read.index_dir(ws).name}) "
                     f"with the served champion ({reg['model_name']} v{champion}), through the serving API and its "
                     "guard; every answer names the version that produced it and cites the chunks it used."),
        supported_interfaces=[AgentInterface(url=base_url.rstrip("/") + RPC_PATH, protocol_binding="JSONRPC",
                                             protocol_version="1.0")],
        provider=AgentProvider(organization="LLMOps platform", url=base_url.rstrip("/")),
        version=str(champion or 0),
        capabilities=AgentCapabilities(streaming=False, push_notifications=False),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[AgentSkill(id=SKILL_ID, name="Answer from the corpus",
                           description="Retrieves the top chunks of the RAG index and answers from them, citing "
                                       "them; refuses what the guard blocks.",
                           tags=["rag", "qa", "citations"], examples=["Where is the Eiffel Tower?"],
                           input_modes=["text/plain"], output_modes=["text/plain"])],
    )
    if authenticated:
        card.security_schemes["bearer"].CopyFrom(SecurityScheme(http_auth_security_scheme=HTTPAuthSecurityScheme(
            scheme="Bearer", description="a platform API key with the mcp scope (llmops api-key ID --scope mcp)")))
        card.security_requirements.append(SecurityRequirement(schemes={"bearer": StringList(list=[])}))
    return card


def format_answer(result: dict[str, Any]) -> str:
    lines = [result.get("answer") or ""]
    if result.get("citations"):
        lines.append("Sources: " + ", ".join(f"[{i}] {c.get('doc_id')}" for i, c in
                                             enumerate(result["citations"], 1)))
    lines.append(f"(answered by version {result.get('model_version')}"
                 + (", refused by the guard" if result.get("refused_by_guard") else "") + ")")
    return "\n".join(lines)


class RagAssistant(AgentExecutor):
    """One A2A message in, one message out: the serving API's RAG answer."""

    def __init__(self, ws: Workspace, max_tokens: int, fallback_key: str | None = None):
        self.ws, self.max_tokens, self.fallback_key = ws, max_tokens, fallback_key

    async def execute(self, context, event_queue) -> None:
        question = context.get_user_input()
        headers = (context.call_context.state or {}).get("headers") or {} if context.call_context else {}
        auth = headers.get("authorization") or ""
        key = auth[7:].strip() if auth.lower().startswith("bearer ") else self.fallback_key
        try:
            result = await asyncio.to_thread(remote.ask, self.ws, question, True, key, self.max_tokens)
            text = format_answer(result)
        except PlatformError as exc:
            text = f"error: {exc}"
        await event_queue.enqueue_event(new_text_message(text, context_id=context.context_id,
                                                         task_id=context.task_id))

    async def cancel(self, context, event_queue) -> None:
        raise PlatformError("a RAG answer cannot be cancelled: it is one request to the serving API")


def routes(ws: Workspace, base_url: str, authenticated: bool, max_tokens: int) -> list:
    """Starlette routes: the agent card at the well-known path and the JSON-RPC endpoint at RPC_PATH."""
    from a2a.server.request_handlers import DefaultRequestHandlerV2
    from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
    from a2a.server.tasks.inmemory_task_store import InMemoryTaskStore

    card = agent_card(ws, base_url, authenticated)
    handler = DefaultRequestHandlerV2(RagAssistant(ws, max_tokens), InMemoryTaskStore(), card)
    return [*create_agent_card_routes(card), *create_jsonrpc_routes(handler, RPC_PATH)]
