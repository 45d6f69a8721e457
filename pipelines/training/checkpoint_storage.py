"""Where Ray Train writes a run's checkpoints: a temp dir on this machine, a local or shared path, or S3."""
from __future__ import annotations

import tempfile
from typing import NamedTuple


class CheckpointStorage(NamedTuple):
    path: str  # RunConfig.storage_path
    filesystem: object | None  # pyarrow filesystem handed to Ray (S3), or None: Ray picks it from the path
    owned: bool  # a temp dir of this run, to delete afterwards


def checkpoint_storage(storage_path: str | None) -> CheckpointStorage:
    """`storage_path` (absolute, or a URI) as Ray Train takes it; None: a fresh temp dir this run owns."""
    if storage_path is None:
        return CheckpointStorage(tempfile.mkdtemp(prefix="llmops-finetune-"), None, True)
    if storage_path.startswith(("s3://", "s3a://")):
        from pipelines.storage.s3 import arrow_filesystem, split_uri

        # Ray takes a scheme-less path when handed the filesystem (endpoint + credentials from the environment).
        bucket, key = split_uri(storage_path)
        return CheckpointStorage(f"{bucket}/{key}".rstrip("/"), arrow_filesystem(), False)
    return CheckpointStorage(storage_path, None, False)
