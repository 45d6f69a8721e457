"""Request bodies of the OpenAI surface (pydantic).

Which OpenAI parameters exist and what happens to each is pipelines.serving.conformance (the single source of truth,
rendered as docs/serving/conformance.md): a refused or unknown parameter never reaches these models, the routes call
`conformance.check_request` first (400 `unsupported_parameter`). The fields here are exactly the implemented, no-op
and extension rows of that table (tests/test_openai_params.py checks it). Range checks that OpenAI answers with 400
(more than 4 stop sequences, top_logprobs above 20, completions logprobs above 5) are done where the request is
planned (pipelines.serving.openai_params), so they are 400s naming the parameter, not 422s.
"""
from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class FunctionCallIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str
    arguments: str


class ToolCallIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[TextPart], None] = None
    tool_calls: list[ToolCallIn] | None = None  # an assistant turn of the client's tool loop
    tool_call_id: str | None = None  # a tool message: the call it answers
    name: str | None = None

    @model_validator(mode="after")
    def _content_present(self):
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("content is required (only an assistant message with tool_calls may omit it)")
        return self

    def text(self) -> str:
        """The message as the model sees it (tool calls and results in the format of pipelines.serving.tools)."""
        body = "" if self.content is None else (
            self.content if isinstance(self.content, str) else "".join(p.text for p in self.content))
        if self.role == "tool":
            return f"<tool_response>{body}</tool_response>"
        if self.tool_calls:
            from pipelines.serving.tools import render_call

            body += "".join(render_call(c.function.name, c.function.arguments) for c in self.tool_calls)
        return body


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False
    include_obfuscation: bool | None = None  # no-op: no obfuscation padding is sent


Stop = Union[str, list[str], None]


class _Sampling(BaseModel):
    """Decoding parameters shared by chat and completions."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=0)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: Stop = None
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    n: int | None = Field(default=None, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0)
    response_format: dict[str, Any] | None = None
    tools: list[Any] | None = None
    tool_choice: Union[str, dict[str, Any], None] = None
    parallel_tool_calls: bool | None = None
    modalities: list[str] | None = None
    # no-ops (OpenAI platform features that do not change the output; pipelines.serving.conformance)
    metadata: dict[str, Any] | None = None
    store: bool | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    prompt_cache_options: dict[str, Any] | None = None
    safety_identifier: str | None = None
    rag: bool | None = None  # extension: retrieve top-k chunks and answer from them (or model "<name>-rag")


class CompletionRequest(_Sampling):
    prompt: Union[str, list[int], list[Union[str, list[int]]]]
    max_tokens: int | None = Field(default=16, ge=0)
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0)

    @property
    def rag(self) -> bool:  # Runtime.route reads it; completions have no RAG mode
        return False


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    input: Union[str, list[str]]
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None
