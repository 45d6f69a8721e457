"""S3 settings from the environment for pyarrow (Ray Train checkpoint storage); boto3 reads the same variables itself.

Nothing here is read from params.yaml or the repository: the endpoint comes from `AWS_ENDPOINT_URL_S3` or
`AWS_ENDPOINT_URL` (the AWS SDKs' own variables; unset means AWS itself), credentials from the standard chain
(`AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`, a profile, or an instance role).
"""
from __future__ import annotations

import os
from urllib.parse import urlparse


def endpoint_url() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def arrow_filesystem():
    """A pyarrow S3FileSystem for the configured endpoint.

    Built explicitly (not from the URI) because Ray pickles it into every worker: workers of an already running
    Ray instance did not inherit this process's environment, so credentials and endpoint must travel with it.
    """
    from pyarrow import fs

    kw: dict = {"region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"}
    endpoint = endpoint_url()
    if endpoint:
        parsed = urlparse(endpoint)
        kw["endpoint_override"] = parsed.netloc or parsed.path
        kw["scheme"] = parsed.scheme or "https"
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        kw["access_key"] = os.environ["AWS_ACCESS_KEY_ID"]
        kw["secret_key"] = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
        if os.environ.get("AWS_SESSION_TOKEN"):
            kw["session_token"] = os.environ["AWS_SESSION_TOKEN"]
    return fs.S3FileSystem(**kw)


def split_uri(uri: str) -> tuple[str, str]:
    """s3://bucket/key/prefix (or s3a://) -> ("bucket", "key/prefix"); the key keeps a trailing slash and may be
    empty. The one S3 URI parser of the project (ingest staging, checkpoints, DVC remotes).

    The key is everything after the bucket, verbatim: `#` and `?` are legal in S3 keys, and a URL parser would
    take them for a fragment or a query and drop the tail (`s3://b/a#1.jsonl` is the key `a#1.jsonl`)."""
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme.lower() not in ("s3", "s3a"):
        raise ValueError(f"not an s3:// URI: {uri}")
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"not an s3:// URI with a bucket: {uri}")
    return bucket, key.lstrip("/")
