"""Concurrent requests on one model decoded together: one backend call for every waiting request with
the same decoding settings, instead of one call each.

The admission layer lets up to `serve.max_concurrent` requests generate at once; each runs in its own
thread and calls `Batcher.generate`. One thread at a time runs the backend: it takes every waiting
request whose settings equal its own and makes one `backend.generate` call over all their prompts
(the backends decode those prompts together), then hands each request its rows. Requests that arrive
meanwhile form the next batch. Only greedy requests are combined: a sampled request's samples are seeded
by their place in the call, so it runs alone and stays reproducible whatever else is being served.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from codetune.models.backends.base import Backend, Completion, SamplingSettings


class Cancelled(Exception):
    """The request was withdrawn (its client left) before its batch started."""


@dataclass(eq=False)
class _Ticket:
    prompts: Sequence[str]
    settings: SamplingSettings
    cancel: threading.Event | None
    done: threading.Event = field(default_factory=threading.Event)
    rows: list[list[Completion]] | None = None
    error: BaseException | None = None


class Batcher:
    """`generate(prompts, settings)` with the Backend's meaning, sharing backend calls between threads.

    `calls` and `batched_requests` count backend calls and the requests that shared one with another."""

    def __init__(self, backend: Backend, max_prompts: int = 64) -> None:
        self.backend, self.max_prompts = backend, max_prompts
        self._waiting: list[_Ticket] = []
        self._lock = threading.Lock()  # guards _waiting
        self._run = threading.Lock()  # one backend call at a time
        self.calls = 0
        self.batched_requests = 0

    def generate(
        self, prompts: Sequence[str], settings: SamplingSettings, cancel: threading.Event | None = None
    ) -> list[list[Completion]]:
        """Rows for `prompts`; raises Cancelled when `cancel` is set before a batch took the request."""
        ticket = _Ticket(prompts, settings, cancel)
        with self._lock:
            self._waiting.append(ticket)
        while not ticket.done.is_set():
            with self._run:
                if not ticket.done.is_set():  # nobody took this request along: lead a batch
                    self._serve(self._take(ticket))
        if ticket.error is not None:
            raise ticket.error
        assert ticket.rows is not None
        return ticket.rows

    def _take(self, lead: _Ticket) -> list[_Ticket]:
        """`lead` and the waiting requests that can share its call (greedy, same settings)."""
        with self._lock:
            batch = [lead]
            if lead.settings.temperature <= 0:
                room = self.max_prompts - len(lead.prompts)
                for other in self._waiting:
                    if other is not lead and other.settings == lead.settings and len(other.prompts) <= room:
                        batch.append(other)
                        room -= len(other.prompts)
            for ticket in batch:
                self._waiting.remove(ticket)
        withdrawn = [t for t in batch if t.cancel is not None and t.cancel.is_set()]
        for ticket in withdrawn:  # a client that left is not generated for
            ticket.error = Cancelled()
            ticket.done.set()
        return [t for t in batch if t not in withdrawn]

    def _serve(self, batch: list[_Ticket]) -> None:
        if not batch:
            return
        self.calls += 1
        self.batched_requests += len(batch) if len(batch) > 1 else 0
        try:
            rows = self.backend.generate([p for t in batch for p in t.prompts], batch[0].settings)
        except BaseException as e:  # every request of the batch gets the backend's error
            for ticket in batch:
                ticket.error = e
                ticket.done.set()
            return
        at = 0
        for ticket in batch:
            ticket.rows, at = rows[at : at + len(ticket.prompts)], at + len(ticket.prompts)
            ticket.done.set()
