"""DVC remotes: the committed local-directory default and an S3 remote configured from the environment.

DVC reads its config files literally (no `${ENV}` expansion), so the S3 remote is written into the git-ignored
`.dvc/config.local` from these variables (`llmops data remote` / `make data-remote`):

| variable | meaning | default |
|---|---|---|
| `LLMOPS_S3_BUCKET` | bucket (required) | — |
| `LLMOPS_S3_PREFIX` | key prefix under the bucket | `dvc` |
| `LLMOPS_S3_ENDPOINT_URL` (else `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`) | any S3 endpoint (MinIO, moto, Ceph...) | AWS |
| `LLMOPS_S3_REGION` (else `AWS_REGION`, `AWS_DEFAULT_REGION`) | region | botocore's default |

Credentials are never written: DVC (s3fs/aiobotocore) and the pre-flight check (boto3) both take them from the
standard AWS chain (`AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`, `AWS_PROFILE`, instance
roles). When `endpointurl` is not set in the DVC config, botocore also honours `AWS_ENDPOINT_URL_S3` /
`AWS_ENDPOINT_URL` at run time, so `AWS_ENDPOINT_URL=http://127.0.0.1:5000 dvc push -r s3` works too (checked
with dvc-s3 on moto_server).

`check_remote` is the pre-flight: one `HeadBucket` with a 3 s connect timeout and no retries, so a bad endpoint,
bad credentials or a missing bucket give one readable line within seconds instead of DVC's retry loop and
traceback-like "unexpected error".
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from pipelines.storage.s3 import split_uri

ENV_BUCKET = "LLMOPS_S3_BUCKET"
ENV_PREFIX = "LLMOPS_S3_PREFIX"
ENV_ENDPOINTS = ("LLMOPS_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
ENV_REGIONS = ("LLMOPS_S3_REGION", "AWS_REGION", "AWS_DEFAULT_REGION")
DEFAULT_S3_REMOTE = "s3"
CONNECT_TIMEOUT_S = 3
READ_TIMEOUT_S = 15


class RemoteError(RuntimeError):
    """A remote that cannot be used as configured; the message says what to fix."""


def _first_env(env: Mapping[str, str], names: tuple[str, ...]) -> Optional[str]:
    for name in names:
        if env.get(name):
            return env[name]
    return None


@dataclass(frozen=True)
class S3Settings:
    bucket: str
    prefix: str = "dvc"
    endpoint_url: Optional[str] = None
    region: Optional[str] = None

    @property
    def url(self) -> str:
        prefix = self.prefix.strip("/")
        return f"s3://{self.bucket}/{prefix}" if prefix else f"s3://{self.bucket}"

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None) -> "S3Settings":
        env = os.environ if env is None else env
        bucket = env.get(ENV_BUCKET, "").strip()
        if not bucket:
            raise RemoteError(f"{ENV_BUCKET} is not set: export the bucket name (and {ENV_ENDPOINTS[0]} for a "
                              "non-AWS endpoint) before configuring the S3 remote")
        return cls(bucket=bucket, prefix=env.get(ENV_PREFIX, "dvc"),
                    endpoint_url=_first_env(env, ENV_ENDPOINTS), region=_first_env(env, ENV_REGIONS))


def _config(root: Path):
    from dvc.config import Config

    return Config(dvc_dir=str(Path(root) / ".dvc"))


def configure_s3_remote(root: Path, settings: S3Settings, name: str = DEFAULT_S3_REMOTE) -> dict[str, str]:
    """Write (or replace) remote `name` in `.dvc/config.local`: url, endpoint, region. Never credentials."""
    section: dict[str, str] = {"url": settings.url}
    if settings.endpoint_url:
        section["endpointurl"] = settings.endpoint_url
    if settings.region:
        section["region"] = settings.region
    cfg = _config(root)
    with cfg.edit("local") as conf:
        conf.setdefault("remote", {})[name] = dict(section)
    return section


def remote_settings(root: Path, name: Optional[str] = None) -> tuple[str, dict[str, Any]]:
    """(name, merged config section) of `name`, or of the default remote (`core.remote`) when name is None."""
    conf = _config(root)
    name = name or conf.get("core", {}).get("remote")
    if not name:
        raise RemoteError("no DVC remote given and no default remote (core.remote) in .dvc/config")
    remotes = conf.get("remote", {})
    if name not in remotes:
        hint = (" (run `llmops data remote` with LLMOPS_S3_BUCKET set to add it)" if name == DEFAULT_S3_REMOTE
                else "")
        raise RemoteError(f"DVC remote '{name}' is not configured; known: {', '.join(sorted(remotes)) or 'none'}"
                          f"{hint}")
    return name, dict(remotes[name])


def _s3_client(section: Mapping[str, Any]):
    import boto3
    from botocore.config import Config as BotoConfig

    session = boto3.session.Session(profile_name=section.get("profile")) if section.get("profile") \
        else boto3.session.Session()
    kwargs: dict[str, Any] = {
        "config": BotoConfig(connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S,
                             retries={"max_attempts": 1, "mode": "standard"}),
    }
    if section.get("endpointurl"):
        kwargs["endpoint_url"] = section["endpointurl"]
    if section.get("region"):
        kwargs["region_name"] = section["region"]
    if section.get("access_key_id"):
        kwargs["aws_access_key_id"] = section["access_key_id"]
        kwargs["aws_secret_access_key"] = section.get("secret_access_key")
        kwargs["aws_session_token"] = section.get("session_token")
    return session.client("s3", **kwargs)


_CREDENTIAL_CODES = {"403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken",
                     "InvalidToken", "TokenRefreshRequired", "InvalidClientTokenId", "UnrecognizedClientException"}
_MISSING_BUCKET_CODES = {"404", "NoSuchBucket"}


def check_s3(section: Mapping[str, Any], name: str = DEFAULT_S3_REMOTE) -> str:
    """HeadBucket on the remote's bucket; raises RemoteError with one readable line. Returns the endpoint used."""
    import botocore.exceptions as bexc

    try:
        bucket, _ = split_uri(section["url"])
    except ValueError as exc:
        raise RemoteError(f"remote '{name}': {exc}") from None
    try:
        client = _s3_client(section)
    except bexc.ProfileNotFound as exc:
        raise RemoteError(f"remote '{name}': {exc}") from None
    endpoint = client.meta.endpoint_url
    try:
        client.head_bucket(Bucket=bucket)
    except (bexc.EndpointConnectionError, bexc.ConnectTimeoutError, bexc.ReadTimeoutError,
            bexc.ConnectionClosedError) as exc:
        raise RemoteError(f"cannot reach S3 endpoint {endpoint} (remote '{name}'): {exc}. Is the server running "
                          "and the endpoint (LLMOPS_S3_ENDPOINT_URL / endpointurl) right?") from None
    except bexc.NoCredentialsError:
        raise RemoteError(f"no AWS credentials for S3 endpoint {endpoint} (remote '{name}'): set "
                          "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE") from None
    except bexc.ClientError as exc:
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        if code in _MISSING_BUCKET_CODES or status == "404":
            raise RemoteError(f"bucket {bucket} does not exist at {endpoint} (remote '{name}'): create it or fix "
                              "LLMOPS_S3_BUCKET") from None
        if code in _CREDENTIAL_CODES or status in {"401", "403"}:
            raise RemoteError(f"credentials rejected by {endpoint} for bucket {bucket} (remote '{name}', "
                              f"{code or status}): check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / "
                              "AWS_PROFILE") from None
        raise RemoteError(f"S3 endpoint {endpoint} refused HeadBucket on {bucket} (remote '{name}'): "
                          f"{code} {err.get('Message', '')}".rstrip()) from None
    except bexc.BotoCoreError as exc:
        raise RemoteError(f"S3 remote '{name}' at {endpoint}: {exc}") from None
    return endpoint


def check_remote(root: Path, name: Optional[str] = None, for_pull: bool = False) -> tuple[str, dict[str, Any]]:
    """Resolve and check a remote before any transfer. Returns (name, section); raises RemoteError."""
    name, section = remote_settings(root, name)
    url = str(section.get("url", ""))
    if url.startswith("s3://"):
        check_s3(section, name)
    elif "://" not in url:  # a local directory
        path = Path(url)
        if for_pull and not path.is_dir():
            raise RemoteError(f"local remote '{name}' has no data: {path} does not exist (push to it first, or "
                              f"point it at a copy: `dvc remote modify --local {name} url /path/to/storage`)")
        if not for_pull:
            parent = next((p for p in (path, *path.parents) if p.exists()), None)
            if parent is None or not os.access(parent, os.W_OK):
                raise RemoteError(f"local remote '{name}': cannot write under {path}")
    return name, section
