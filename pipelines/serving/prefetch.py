"""Start an async generator now and buffer what it yields: the model prefills while the input guard decides.

`Ahead(gen)` pulls `gen` in a background task from the moment it is made; iterating it yields the same items in
the same order, re-raising what `gen` raised. Nothing reaches the client until the caller iterates, so a request
the guard blocks is cancelled (`aclose`) before a token leaves. `first_at` is when the first item arrived
(perf_counter), which is what the guard's added latency is measured against.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

_END = object()


class Ahead:
    def __init__(self, gen: AsyncIterator[Any]):
        self._gen = gen
        self._queue: asyncio.Queue = asyncio.Queue()
        self.first_at: float | None = None
        self._task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        try:
            async for item in self._gen:
                if self.first_at is None:
                    self.first_at = time.perf_counter()
                self._queue.put_nowait((item, None))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # handed to the consumer, raised where it iterates
            self._queue.put_nowait((_END, exc))
            return
        self._queue.put_nowait((_END, None))

    def __aiter__(self) -> "Ahead":
        return self

    async def __anext__(self) -> Any:
        item, exc = await self._queue.get()
        if item is _END:
            self._queue.put_nowait((item, exc))  # stays at the end for a second __anext__
            if exc is not None:
                raise exc
            raise StopAsyncIteration
        return item

    async def aclose(self) -> None:
        """Stops the generation (the cancellation runs the generator's own cleanup) and waits for it."""
        if not self._task.done():
            self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._gen.aclose()
