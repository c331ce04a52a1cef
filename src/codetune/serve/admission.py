"""Bounded admission: N generations at once, M requests waiting, the rest turned away (429).

A slot is held for as long as its worker thread runs, not as long as its HTTP request lives: a request
that timed out or whose client went away keeps its slot until the backend has actually stopped, so
the CPU is never asked for more than `max_concurrent` generations at a time.
"""

from __future__ import annotations

import asyncio
import collections
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class QueueFull(Exception):
    """Every slot is busy and the waiting line is full; try again after `retry_after` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"server busy: all generation slots and the queue are full; retry in {retry_after}s")
        self.retry_after = retry_after


class GenerationTimeout(Exception):
    """The request ran past its time limit (waiting for a slot plus generating)."""


class Admission:
    """Slots for `max_concurrent` generations, a FIFO line of at most `max_queue` waiting requests,
    and a per-request deadline of `timeout_s` seconds (queue wait + generation)."""

    def __init__(self, max_concurrent: int, max_queue: int, timeout_s: float) -> None:
        if max_concurrent < 1 or max_queue < 0:
            raise ValueError("max_concurrent must be >= 1 and max_queue >= 0")
        self.max_concurrent, self.max_queue, self.timeout_s = max_concurrent, max_queue, timeout_s
        self.running = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._pool = ThreadPoolExecutor(max_workers=max_concurrent, thread_name_prefix="codetune-gen")
        self._mean_s = 1.0  # running mean of generation time, for Retry-After

    @property
    def waiting(self) -> int:
        return sum(1 for w in self._waiters if not w.done())

    def retry_after(self) -> int:
        """Seconds until a slot is likely free for one more request (at least 1)."""
        return max(1, min(300, math.ceil(self._mean_s * (self.waiting + 1) / self.max_concurrent)))

    async def _acquire(self, deadline: float) -> None:
        if self.running < self.max_concurrent and not self._waiters:
            self.running += 1
            return
        if self.waiting >= self.max_queue:
            raise QueueFull(self.retry_after())
        slot: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(slot)
        try:
            await asyncio.wait_for(slot, max(0.0, deadline - time.monotonic()))
        except BaseException as e:
            if slot.done() and not slot.cancelled():  # handed a slot just as we gave up: pass it on
                self._release()
            elif slot in self._waiters:
                self._waiters.remove(slot)
            if isinstance(e, TimeoutError):
                raise GenerationTimeout(f"waited {self.timeout_s:g}s for a free generation slot") from None
            raise

    def _release(self) -> None:
        while self._waiters:
            slot = self._waiters.popleft()
            if not slot.done():
                slot.set_result(None)  # the slot passes straight to the next in line
                return
        self.running -= 1

    def _start(self, work: Callable[[], T]) -> asyncio.Future[T]:
        started = time.monotonic()

        def done(_: Any) -> None:
            self._mean_s = 0.8 * self._mean_s + 0.2 * (time.monotonic() - started)
            self._release()

        future = asyncio.get_running_loop().run_in_executor(self._pool, work)
        future.add_done_callback(done)
        return future

    async def call(self, work: Callable[[], T]) -> T:
        """Run `work` in a worker thread once a slot is free; its result, or GenerationTimeout."""
        deadline = time.monotonic() + self.timeout_s
        await self._acquire(deadline)
        future = self._start(work)
        try:
            return await asyncio.wait_for(asyncio.shield(future), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            raise GenerationTimeout(f"generation ran past the {self.timeout_s:g}s request limit") from None

    async def stream(self, open_stream: Callable[[], Iterator[str]]) -> PieceStream:
        """Wait for a slot, then start iterating `open_stream()` in a worker thread. Returns once the
        work has started, so a full queue is an HTTP 429 and not an error in the middle of a stream."""
        deadline = time.monotonic() + self.timeout_s
        await self._acquire(deadline)
        stream = PieceStream(asyncio.get_running_loop(), deadline)
        self._start(lambda: stream.pump(open_stream))
        return stream

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class PieceStream:
    """Text pieces handed from a worker thread to the event loop. Leaving the `async for` early (client
    disconnected, timeout) cancels: the worker closes the backend's iterator, which stops generating."""

    def __init__(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        self._loop, self.deadline = loop, deadline
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.cancel = threading.Event()

    def _put(self, kind: str, value: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, (kind, value))
        except RuntimeError:  # the event loop is gone (server shutting down): nobody is listening
            self.cancel.set()

    def pump(self, open_stream: Callable[[], Iterator[str]]) -> None:
        """Worker thread: iterate the backend until it ends, fails, is cancelled or passes the deadline."""
        pieces: Iterator[str] | None = None
        try:
            pieces = open_stream()
            for piece in pieces:
                self._put("piece", piece)
                if self.cancel.is_set() or time.monotonic() > self.deadline:
                    break
        except BaseException as e:  # handed to the consumer
            self._put("error", e)
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()  # a generator's finally runs here: the backend stops generating
            self._put("end", None)

    async def __aiter__(self) -> AsyncIterator[str]:
        try:
            while True:
                timeout = self.deadline - time.monotonic()
                try:
                    kind, value = await asyncio.wait_for(self._queue.get(), max(0.0, timeout))
                except TimeoutError:
                    raise GenerationTimeout("generation ran past the request time limit") from None
                if kind == "piece":
                    yield value
                elif kind == "error":
                    raise value
                else:
                    return
        finally:
            self.cancel.set()
