"""Requests that arrive together answered by one call (dynamic batching): a bounded queue, a maximum batch and a
maximum wait, the calls made in a thread of their own so that the event loop stays free while the model runs."""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

from .errors import InputError

Item = TypeVar("Item")
Result = TypeVar("Result")


class BusyError(Exception):
    """The queue is full: the caller should try again later (HTTP 503)."""


class Batcher(Generic[Item, Result]):
    """Collects items submitted from the event loop into batches of at most `max_batch`, waiting at most
    `max_wait` seconds after the first for more, and runs `run(items) -> results` (same order) on them in one
    worker thread; at most `max_queue` items wait (being made or queued), a further one raises BusyError."""

    def __init__(self, run: Callable[[list[Item]], list[Result]], max_batch: int, max_wait: float, max_queue: int):
        if max_batch < 1 or max_queue < 1 or max_wait < 0:
            raise InputError(f"the batch and the queue need at least 1 place and the wait cannot be negative, got "
                             f"batch {max_batch}, queue {max_queue}, wait {max_wait}")
        self.run, self.max_batch, self.max_wait, self.max_queue = run, max_batch, max_wait, max_queue
        self._queue: asyncio.Queue | None = None
        self._arrived: asyncio.Event | None = None
        self._making = 0  # items holding a place in the queue while they are made

    @property
    def queued(self) -> int:
        """Items waiting for a batch, those being made included (not those being run)."""
        return self._making + (self._queue.qsize() if self._queue is not None else 0)

    async def submit(self, item: Item) -> Result:
        """The result of `item`, once its batch has run; BusyError at once if the queue is full."""
        async def made() -> Item:
            return item

        return await self.make_and_submit(made)

    async def make_and_submit(self, make: Callable[[], Awaitable[Item]]) -> Result:
        """The result of the item `make()` returns, once its batch has run. The item holds its place in the
        queue while it is made (a photo decoded), so that BusyError comes at once, before anything is made,
        when `max_queue` items are waiting."""
        if self._queue is None:
            raise RuntimeError("the batcher is not running: submit inside `async with batcher.running()`")
        if self.queued >= self.max_queue:
            raise BusyError(f"{self.max_queue} requests are waiting already; try again shortly")
        self._making += 1
        try:
            item = await make()
        finally:
            self._making -= 1
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, future))  # unbounded: the places are counted above
        self._arrived.set()
        return await future

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator["Batcher"]:
        """Batch and run what is submitted while inside; on leaving, the worker stops."""
        self._queue, self._arrived = asyncio.Queue(), asyncio.Event()
        with ThreadPoolExecutor(1, thread_name_prefix="batcher") as worker:
            task = asyncio.create_task(self._serve(worker))
            try:
                yield self
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                self._queue = None

    async def _next_batch(self) -> list[tuple[Item, asyncio.Future]]:
        """The first item waiting (or the next to come), then what else arrives within max_wait."""
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        deadline = loop.time() + self.max_wait
        while len(batch) < self.max_batch:
            with contextlib.suppress(asyncio.QueueEmpty):
                batch.append(self._queue.get_nowait())
                continue
            left = deadline - loop.time()
            if left <= 0:
                break
            self._arrived.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), left)
        return [(item, future) for item, future in batch if not future.done()]  # a cancelled caller is gone

    async def _serve(self, worker: ThreadPoolExecutor) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            try:
                results = await loop.run_in_executor(worker, self.run, [item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"{len(results)} results for a batch of {len(batch)}")
            except Exception as err:  # every caller of the batch gets the error; the next batch runs
                for _, future in batch:
                    if not future.done():
                        future.set_exception(err)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
