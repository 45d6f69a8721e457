"""pipelines/storage/s3.py: the project's one S3 URI parser, and a key with `#` / `?` read back from moto_server."""
from __future__ import annotations

import pytest

from pipelines.storage.s3 import split_uri


@pytest.mark.parametrize("uri, expected", [
    ("s3://bucket/a/b.jsonl", ("bucket", "a/b.jsonl")),
    ("s3a://bucket/prefix/", ("bucket", "prefix/")),
    ("s3://bucket", ("bucket", "")),
    ("s3://bucket/", ("bucket", "")),
    ("s3://bucket/batch#1/part?v=2.jsonl", ("bucket", "batch#1/part?v=2.jsonl")),
    ("s3://bucket/q?x#y", ("bucket", "q?x#y")),
    ("s3://bucket/dir with space/%41.json", ("bucket", "dir with space/%41.json")),  # no unquoting either
    ("S3://bucket/k", ("bucket", "k")),
])
def test_split_uri_keeps_the_whole_key(uri, expected):
    assert split_uri(uri) == expected


@pytest.mark.parametrize("uri", ["bucket/key", "https://bucket/key", "s3:///key", "s3://", "gs://b/k"])
def test_split_uri_refuses_what_is_not_an_s3_uri(uri):
    with pytest.raises(ValueError, match="not an s3:// URI"):
        split_uri(uri)


def test_key_with_hash_and_question_mark_round_trips_through_ingest_staging(s3_bucket, s3_server, monkeypatch,
                                                                          tmp_path):
    from pipelines.data.sources import stage_s3

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server["endpoint_url"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server["aws_secret_access_key"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", s3_server["region_name"])
    bucket, client = s3_bucket
    client.put_object(Bucket=bucket, Key="in/batch#7?v=1.jsonl", Body=b'{"text": "whole key"}\n')
    client.put_object(Bucket=bucket, Key="in/batch", Body=b"the truncated key: must not be read\n")
    got = stage_s3(f"s3://{bucket}/in/batch#7?v=1.jsonl", tmp_path, "one")
    assert got.name == "batch#7?v=1.jsonl" and got.read_text() == '{"text": "whole key"}\n'
