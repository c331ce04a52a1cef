"""Concurrent requests on one model decoded together, instead of one backend call each.

The admission layer lets up to `serve.max_concurrent` requests generate at once; each runs in its own
thread and calls `Batcher.generate`, which queues the request and waits for its answer. One worker
thread runs the backend, batch after batch, the oldest waiting request leading each.

- Continuous batching (backends with `decode_joined`: llama.cpp): the worker starts a batch with
  every waiting greedy request, and requests that arrive while it runs join it as soon as sequences
  free their slots; each request is answered the moment its own sequences end. A request too long for
  the running batch's KV streams waits for the next batch, which it leads.
- Otherwise (transformers): the worker makes one `backend.generate` call over every waiting request
  with the same settings; requests that arrive meanwhile form the next batch.

Only greedy requests are combined: a sampled request's samples are seeded by their place in the call,
so it runs alone and stays reproducible whatever else is being served. A request whose client leaves
stops being decoded: at once in a joined batch, and in a plain `generate` call once every request of the
call has left (`generate_hooks`).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

from codetune.models.backends.base import (
    Backend,
    Cancelled,
    Completion,
    Job,
    SamplingSettings,
    generate_hooks,
)

__all__ = ["Batcher", "Cancelled"]


@dataclass(eq=False)
class _Ticket:
    prompts: Sequence[str]
    settings: SamplingSettings
    cancel: threading.Event | None
    finished: bool = False
    alone: bool = False  # handed back by a running batch it did not fit: it leads the next one
    pieces: queue.Queue[str | None] | None = None  # a stream's text as it grows; None when it ends
    rows: list[list[Completion]] | None = None
    error: BaseException | None = None


class Batcher:
    """`generate(prompts, settings)` with the Backend's meaning, sharing backend calls between threads.

    `calls` and `batched_requests` count batches and the requests that shared one with another."""

    def __init__(self, backend: Backend, max_prompts: int = 64) -> None:
        self.backend, self.max_prompts = backend, max_prompts
        # continuous batching, where the backend has it
        self._decode_joined: Callable[..., None] | None = getattr(backend, "decode_joined", None)
        self._waiting: list[_Ticket] = []
        self._cv = threading.Condition()  # guards _waiting and every ticket's state
        self._worker: threading.Thread | None = None  # runs the batches, started on first use
        self._running: list[_Ticket] = []  # the requests the worker's current batch has taken
        self.calls = 0
        self.batched_requests = 0

    def generate(
        self, prompts: Sequence[str], settings: SamplingSettings, cancel: threading.Event | None = None
    ) -> list[list[Completion]]:
        """Rows for `prompts`; raises Cancelled when `cancel` is set before a batch took the request
        (or, with continuous batching, before its sequences ended: they leave the batch)."""
        ticket = self._submit(_Ticket(prompts, settings, cancel))
        with self._cv:
            while not ticket.finished:
                self._cv.wait()
        if ticket.error is not None:
            raise ticket.error
        assert ticket.rows is not None
        return ticket.rows

    def stream(self, prompt: str, settings: SamplingSettings) -> Iterator[str]:
        """`backend.stream(prompt, settings)`; a greedy one joins the running batch where the backend
        batches continuously. Closing the iterator early withdraws the request."""
        if self._decode_joined is None or settings.temperature > 0:
            yield from self.backend.stream(prompt, settings)
            return
        cancel = threading.Event()
        ticket = self._submit(_Ticket([prompt], replace(settings, n=1), cancel, pieces=queue.Queue()))
        assert ticket.pieces is not None
        try:
            while (piece := ticket.pieces.get()) is not None:
                yield piece
        finally:
            cancel.set()  # left early: its sequence leaves the batch (nothing, once it has ended)
        if ticket.error is not None:
            raise ticket.error

    def _submit(self, ticket: _Ticket) -> _Ticket:
        with self._cv:
            if self._worker is None:
                self._worker = threading.Thread(target=self._serve, name="codetune-batcher", daemon=True)
                self._worker.start()
            self._waiting.append(ticket)
            self._cv.notify_all()
        return ticket

    def _serve(self) -> None:
        """The worker: batch after batch while requests wait. It runs the backend, not a request's own
        thread, so that every request is answered when its sequences end, not when its batch does."""
        while True:
            with self._cv:
                while not self._waiting:
                    self._cv.wait()
            try:
                self._lead()
            except BaseException as e:  # a bug here must not leave requests waiting forever
                with self._cv:
                    stuck = list(dict.fromkeys([t for t in self._running if not t.finished] + self._waiting))
                    self._waiting = []
                self._finish(stuck, error=e)

    def _lead(self) -> None:
        """Run one batch led by the oldest waiting request (first come, first served)."""
        with self._cv:
            if not self._waiting:
                return
            lead = self._waiting[0]
        batch = self._take(lead, self.max_prompts)
        self._running = taken = list(batch)
        if not batch:
            return
        if self._decode_joined is None or lead.settings.temperature > 0:
            return self._call(batch)

        def intake(free: int) -> list[Job]:
            joiners = self._take(None, free)
            taken.extend(joiners)
            return [self._job(t) for t in joiners]

        self.calls += 1
        try:
            self._decode_joined([self._job(t) for t in batch], intake)
        except BaseException as e:  # every request still decoding gets the backend's error
            with self._cv:
                decoding = [t for t in taken if not t.finished and t not in self._waiting]
            self._finish(decoding, error=e)
        self.batched_requests += len(taken) if len(taken) > 1 else 0

    def _take(self, lead: _Ticket | None, room: int) -> list[_Ticket]:
        """`lead` (if given) and the waiting requests that can share its batch, `room` prompts at most:
        greedy, the same settings (without continuous batching), and joining a running batch (`lead`
        None) only if no batch has handed it back, and only while no request that can't join waits.
        Withdrawn requests leave the queue first, answered Cancelled."""
        with self._cv:  # a client that left while it waited is not generated for, nor waited for
            withdrawn = [t for t in self._waiting if t.cancel is not None and t.cancel.is_set()]
            self._waiting = [t for t in self._waiting if t not in withdrawn]
            self._finish(withdrawn, error=Cancelled())
            if lead in withdrawn or (
                lead is None and any(t.alone or t.settings.temperature > 0 for t in self._waiting)
            ):
                return []  # a request the running batch can't take waits: let the batch drain
            batch = []  # in arrival order
            room -= 0 if lead is None else len(lead.prompts) * lead.settings.n
            for other in self._waiting:
                fits = len(other.prompts) * other.settings.n <= room
                same = self._decode_joined is not None or lead is None or other.settings == lead.settings
                joins = lead is not None or not other.alone
                greedy = other.settings.temperature <= 0 and (lead is None or lead.settings.temperature <= 0)
                if other is lead or (greedy and fits and same and joins):
                    batch.append(other)
                    room -= 0 if other is lead else len(other.prompts) * other.settings.n
            for ticket in batch:
                self._waiting.remove(ticket)
        return batch

    def _job(self, ticket: _Ticket) -> Job:
        def done(job: Job) -> None:
            if job.rows is None and job.error is None:  # did not fit the running batch
                with self._cv:
                    ticket.alone = True
                    self._waiting.insert(0, ticket)
            else:
                self._finish([ticket], rows=job.rows, error=job.error)

        cancel, pieces = ticket.cancel, ticket.pieces
        emit = (lambda i, j, text: pieces.put(text)) if pieces is not None else None
        return Job(
            ticket.prompts,
            ticket.settings,
            done,
            cancelled=cancel.is_set if cancel is not None else None,
            emit=emit,
        )

    def _finish(
        self,
        tickets: Sequence[_Ticket],
        rows: list[list[Completion]] | None = None,
        error: BaseException | None = None,
    ) -> None:
        with self._cv:
            for ticket in tickets:
                ticket.rows, ticket.error, ticket.finished = rows, error, True
                if ticket.pieces is not None:
                    ticket.pieces.put(None)
            self._cv.notify_all()

    def _call(self, batch: list[_Ticket]) -> None:
        """One `backend.generate` over the batch's prompts."""
        self.calls += 1
        self.batched_requests += len(batch) if len(batch) > 1 else 0
        cancels = [t.cancel for t in batch]
        try:  # once every client of the call has left, the backend stops at its next step
            with generate_hooks(cancelled=lambda: all(c is not None and c.is_set() for c in cancels)):
                rows = self.backend.generate([p for t in batch for p in t.prompts], batch[0].settings)
        except BaseException as e:  # every request of the batch gets the backend's error (or Cancelled)
            self._finish(batch, error=e)
            return
        at = 0
        for ticket in batch:
            self._finish([ticket], rows=rows[at : at + len(ticket.prompts)])
            at += len(ticket.prompts)
