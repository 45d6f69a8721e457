"""The platform's own data as plain functions: what an operator (or an agent, through `llmops mcp`) can ask.

Read side (`read`): the registry's versions and aliases, each version's gate decision, evaluation report (with the
paired bootstrap intervals) and model card, drift reports per monitor run, cost per stage, the maturity scorecard,
the versioned prompt templates, DVC / OpenLineage lineage down to the raw sources and their licences, the RAG index,
and the rollout state. Remote side: the served champion's HTTP API (`serving.ask`) and Airflow's REST API
(`airflow`: pending approvals, a manual lifecycle run). Acting side (`act`): retrain, rollback, abort a rollout,
each call written to an audit log with its caller. A2A side (`a2a`): the served RAG assistant's agent card and an
executor answering A2A messages through the serving API.

Every function takes a `Workspace` (a repository root and its params.yaml) and returns JSON-ready data; problems a
caller can fix raise `PlatformError` with a message that names them. Nothing here knows about MCP.
"""
from pipelines.platform_api.workspace import NotFound, PlatformError, Workspace

__all__ = ["NotFound", "PlatformError", "Workspace"]
