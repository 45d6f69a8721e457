"""API keys (hashed at rest, from a file or the environment) and per-key token-bucket rate limits.

Keys, never in the repo:
- `LLMOPS_API_KEYS_FILE`: a JSON file `{"keys": [{"id": "k1", "sha256": "<hex sha256 of the key>",
  "admin": false, "scopes": ["mcp"]}]}` (`llmops api-key` prints an entry and the key once; `scopes` is optional:
  `mcp` lets the key use `llmops mcp` over HTTP; `"training_use": true` records the holder's consent to their
  rated interactions becoming training data, read by the flywheel's harvest; absent: no consent);
- `LLMOPS_API_KEYS`: `id:secret,id2:secret2` (a bare `secret` gets the id `key-<sha256[:8]>`); hashed on load,
  the plain values are not kept;
- `LLMOPS_ADMIN_KEY`: a key for `POST /admin/reload` (entries with `"admin": true` work too).
With no key configured, `serve.auth.no_keys` decides: `open_on_loopback` serves everyone (key_id null in the
request log, admin endpoints open) when bound to a loopback address, and refuses to start on any other address;
`refuse` never starts without keys. With keys, a missing or wrong key is a 401.
SHA-256 (not a slow password hash) is right for long random API keys; compare with hmac.compare_digest.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import math
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pipelines.serving.errors import APIError

KEYS_FILE_ENV = "LLMOPS_API_KEYS_FILE"
KEYS_ENV = "LLMOPS_API_KEYS"
ADMIN_ENV = "LLMOPS_ADMIN_KEY"


def sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_key(key_id: str, admin: bool = False, scopes: tuple[str, ...] = (),
            training_use: bool = False) -> tuple[str, dict]:
    secret = "sk-llmops-" + secrets.token_urlsafe(32)
    return secret, {"id": key_id, "sha256": sha256(secret), "admin": admin, **({"scopes": list(scopes)} if scopes else {}),
                    **({"training_use": True} if training_use else {})}


@dataclass(frozen=True)
class Key:
    id: str
    sha256: str
    admin: bool
    scopes: frozenset[str] = frozenset()  # e.g. {"mcp"}: what else the key may use; an admin key has every scope
    # the key's holder consented to their rated interactions becoming training data (the flywheel's harvest,
    # pipelines/flywheel); absent: no consent. Keys from LLMOPS_API_KEYS / LLMOPS_ADMIN_KEY never consent.
    training_use: bool = False

    def has_scope(self, scope: str) -> bool:
        return self.admin or scope in self.scopes


def is_loopback(host: str) -> bool:
    if host in ("localhost", "::1"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class KeyStore:
    def __init__(self, keys: list[Key]):
        self.keys = keys
        self.by_hash = {k.sha256: k for k in keys}

    @classmethod
    def from_env(cls, environ=os.environ) -> "KeyStore":
        keys: list[Key] = []
        if path := environ.get(KEYS_FILE_ENV):
            p = Path(path)
            if not p.exists():
                raise FileNotFoundError(f"{KEYS_FILE_ENV}={path}: no such file")
            try:
                entries = json.loads(p.read_text(encoding="utf-8"))["keys"]
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}: expected {{\"keys\": [{{\"id\", \"sha256\", \"admin\"}}]}}: {exc}")
            for i, e in enumerate(entries):
                h = str(e.get("sha256", "")).lower()
                if len(h) != 64 or any(c not in "0123456789abcdef" for c in h) or not e.get("id"):
                    raise ValueError(f"{path}: keys[{i}] needs an 'id' and a 64-hex 'sha256'")
                scopes = e.get("scopes", [])
                if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
                    raise ValueError(f"{path}: keys[{i}].scopes must be a list of strings")
                training_use = e.get("training_use", False)
                if not isinstance(training_use, bool):
                    raise ValueError(f"{path}: keys[{i}].training_use must be true or false")
                keys.append(Key(str(e["id"]), h, bool(e.get("admin", False)), frozenset(scopes), training_use))
        for item in filter(None, (s.strip() for s in environ.get(KEYS_ENV, "").split(","))):
            key_id, sep, secret = item.partition(":")
            if not sep:
                secret, key_id = item, f"key-{sha256(item)[:8]}"
            keys.append(Key(key_id, sha256(secret), False))
        if admin := environ.get(ADMIN_ENV):
            keys.append(Key("admin", sha256(admin), True))
        return cls(keys)

    @property
    def empty(self) -> bool:
        return not self.keys

    def check(self, authorization: str | None, admin: bool = False) -> Key | None:
        """The key of an `Authorization: Bearer <key>` header; None in open mode; APIError 401 otherwise."""
        if self.empty:
            return None
        if not authorization or not authorization.lower().startswith("bearer "):
            raise APIError(401, "Missing API key: send 'Authorization: Bearer <key>'", "missing_api_key",
                           headers={"WWW-Authenticate": "Bearer"})
        digest = sha256(authorization[7:].strip())
        found = None
        for h, k in self.by_hash.items():  # constant-time compare against every key
            if hmac.compare_digest(h, digest):
                found = k
        if found is None:
            raise APIError(401, "Incorrect API key provided", "invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})
        if admin and not found.admin:
            raise APIError(401, "This endpoint needs an admin key", "admin_key_required")
        return found


class RateLimiter:
    """Token bucket per key: `rate` requests/s refill, `burst` capacity. `take(key)` raises 429 with Retry-After."""

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, burst
        self.buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> None:
        now = time.monotonic()
        with self._lock:
            tokens, last = self.buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens < 1.0:
                self.buckets[key] = (tokens, now)
                wait = max(1, math.ceil((1.0 - tokens) / self.rate))
                raise APIError(429, f"Rate limit reached for {key}: {self.rate:g} requests/s, burst {self.burst}; "
                                    f"retry after {wait} s", "rate_limit_exceeded", headers={"Retry-After": str(wait)})
            self.buckets[key] = (tokens - 1.0, now)
