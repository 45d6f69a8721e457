"""The API's routes, one FastAPI router per endpoint family; `pipelines.serving.app.create_app` includes them.

- `health`: `GET /health`, `GET /metrics` (no auth)
- `admin`: `POST /admin/reload` (admin key)
- `models`: `GET /v1/models`
- `embeddings`: `POST /v1/embeddings`
- `chat`: `POST /v1/chat/completions`
- `feedback`: `POST /v1/feedback`

Shared request handling (auth, limits, admission, routing to an arm, request logging) lives in
pipelines.serving.runtime; a route gets the process's `Runtime` with `Depends(get_runtime)`.
"""
