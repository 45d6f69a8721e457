"""An event trigger for an S3 landing inbox: fires when the producer's flag object appears under the prefix, and
deletes it (the S3 twin of Airflow's DirectoryFileDeleteTrigger). The amazon provider's event trigger is SQS-based
and would need a queue wired to bucket notifications; a flag object works on any S3 endpoint (MinIO, moto).

Credentials and endpoint come from the standard AWS environment variables (AWS_ENDPOINT_URL for MinIO/moto), as
everywhere in this project: nothing is stored in the trigger's serialized arguments.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent


class S3FlagTrigger(BaseEventTrigger):
    def __init__(self, *, uri: str, flag: str, poke_interval: float = 5.0) -> None:
        super().__init__()
        self.uri = uri
        self.flag = flag
        self.poke_interval = poke_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("llmops_airflow.triggers.S3FlagTrigger",
                {"uri": self.uri, "flag": self.flag, "poke_interval": self.poke_interval})

    def _take_flag(self) -> bool:
        import boto3
        from botocore.exceptions import ClientError

        from pipelines.storage.s3 import endpoint_url, split_uri

        bucket, prefix = split_uri(self.uri)
        key = f"{prefix.rstrip('/')}/{self.flag}" if prefix else self.flag
        s3 = boto3.client("s3", endpoint_url=endpoint_url())
        try:
            s3.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        s3.delete_object(Bucket=bucket, Key=key)
        return True

    async def run(self) -> AsyncIterator[TriggerEvent]:
        while True:
            if await asyncio.to_thread(self._take_flag):
                self.log.info("Flag %s found under %s (deleted)", self.flag, self.uri)
                yield TriggerEvent({"uri": self.uri, "flag": self.flag})
                return
            await asyncio.sleep(self.poke_interval)


class FeedbackVolumeTrigger(BaseEventTrigger):
    """Fires when enough ratings wait for the flywheel: `flywheel.min_feedback_lines` feedback lines in the harvest
    window and after the last written batch, counted every `poke_interval` s (pipelines.flywheel.harvest.
    volume_check). The llmops_flywheel DAG runs on it as well as on its cron. A run that saw the volume and wrote
    nothing (no consent, too few keys) leaves the count high: the watcher then waits for `min_lines` more ratings
    after that run before it fires again, instead of a no-op harvest at every check."""

    def __init__(self, *, min_lines: int, poke_interval: float = 300.0) -> None:
        super().__init__()
        self.min_lines = min_lines
        self.poke_interval = poke_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("llmops_airflow.triggers.FeedbackVolumeTrigger",
                {"min_lines": self.min_lines, "poke_interval": self.poke_interval})

    def _check(self) -> dict:
        from pipelines.flywheel.config import load
        from pipelines.flywheel.harvest import volume_check

        return volume_check(load(min_feedback_lines=self.min_lines)[0])

    async def run(self) -> AsyncIterator[TriggerEvent]:
        while True:
            check = await asyncio.to_thread(self._check)
            if check["fire"]:
                self.log.info("%d new ratings wait for the flywheel (>= %d), %d since the last harvest that saw "
                              "the volume", check["pending"], self.min_lines, check["since_last_look"])
                yield TriggerEvent({"pending_feedback": check["pending"],
                                    "since_last_look": check["since_last_look"]})
                return
            await asyncio.sleep(self.poke_interval)
