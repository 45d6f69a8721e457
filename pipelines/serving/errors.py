"""OpenAI-style error bodies: {"error": {"message", "type", "param", "code"}} with the matching status code, so
the official client raises its matching exception (400 BadRequestError, 401 AuthenticationError, 404
NotFoundError, 413/422 -> APIStatusError/UnprocessableEntityError, 429 RateLimitError, 5xx InternalServerError)."""
from __future__ import annotations

from fastapi.responses import JSONResponse

TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
         404: "invalid_request_error", 413: "invalid_request_error", 422: "invalid_request_error",
         429: "rate_limit_error", 500: "server_error", 503: "server_error", 504: "server_error"}


class APIError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}

    def response(self, extra_headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(status_code=self.status, content=self.body(),
                            headers={**self.headers, **(extra_headers or {})})
