"""`llmops mcp`: the platform as an MCP server (official `mcp` SDK) over stdio or streamable HTTP.

Only wiring: every tool, resource and prompt calls `pipelines.platform_api`. See docs/operations/mcp.md.
"""
