"""Progress for every long stage: a rich bar in a terminal, plain periodic lines in a log, nothing with --quiet.

One small API used by prepare, evaluate, models fetch/conversion, export, self-training and training:

    from codetune import progress

    with progress.task("prepare: read data/train.jsonl", total=n_rows, unit="rows") as bar:
        for row in rows:
            ...
            bar.advance()                      # or bar.update(done), bar.advance(tokens=n) for tok/s

    for item in progress.track(items, "evaluate: execute", unit="programs"):
        ...

    # a stage that reports `progress(done, total)` through a callback (generation, benchmarks):
    with progress.task("evaluate: generate base", total=len(prompts), unit="prompts") as bar:
        generate(prompts, ..., progress=bar.callback)

Where the output goes is decided when a task starts, from the stream it writes to (stderr, so stdout keeps
the stage's result, e.g. the output folder a script can capture):

- a terminal: a rich progress bar (done/total, elapsed, time left, tok/s and any extra fields);
- not a terminal (a log file, a pipe, CI): plain lines, one at the start, one per `every_percent` step or
  `every_s` seconds (whichever comes first) and one at the end, with no control characters (no ANSI
  escapes, no carriage returns), e.g. ``prepare: read a.jsonl: 500/1000 rows (50%), 3.1 s, 1,204 tok/s``;
- `configure(quiet=True)` (the CLI's global ``--quiet``) or ``CODETUNE_QUIET=1``: nothing at all.

``CODETUNE_PROGRESS=plain`` (or ``rich``) overrides the terminal check, ``CODETUNE_PROGRESS_EVERY_S`` the
period. A task is safe to update from several threads (generation workers call back from threads).
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TextIO, TypeVar

T = TypeVar("T")

_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x08\x0b-\x1f\x7f]")


@dataclass
class _Settings:
    quiet: bool = False  # or CODETUNE_QUIET=1
    mode: str | None = None  # "rich" | "plain" | None (decide from the stream)
    every_s: float | None = None  # None: read CODETUNE_PROGRESS_EVERY_S, else 10 s
    every_percent: float = 10.0


_settings = _Settings()


def configure(
    *,
    quiet: bool | None = None,
    mode: str | None = None,
    every_s: float | None = None,
    every_percent: float | None = None,
) -> None:
    """Set the process-wide progress behaviour (the CLI calls this once for ``--quiet``).

    `mode` is "rich", "plain" or "auto" (decide per task from whether stderr is a terminal). A value left
    as None keeps the current setting.
    """
    if quiet is not None:
        _settings.quiet = quiet
    if mode is not None:
        if mode not in ("rich", "plain", "auto"):
            raise ValueError(f"progress mode must be rich, plain or auto, got {mode!r}")
        _settings.mode = None if mode == "auto" else mode
    if every_s is not None:
        _settings.every_s = every_s
    if every_percent is not None:
        _settings.every_percent = every_percent


def is_quiet() -> bool:
    """True when progress is silenced (``--quiet`` or ``CODETUNE_QUIET=1``)."""
    if _settings.quiet:
        return True
    return os.environ.get("CODETUNE_QUIET", "").strip().lower() in ("1", "true", "yes")


def _mode(stream: TextIO) -> str:
    if is_quiet():
        return "quiet"
    forced = _settings.mode or os.environ.get("CODETUNE_PROGRESS", "").strip().lower()
    if forced in ("rich", "plain"):
        return forced
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return "rich" if tty and os.environ.get("TERM") != "dumb" else "plain"


def _every_s() -> float:
    if _settings.every_s is not None:
        return _settings.every_s
    try:
        return float(os.environ.get("CODETUNE_PROGRESS_EVERY_S", "10"))
    except ValueError:
        return 10.0


def clean_text(text: str) -> str:
    """`text` without ANSI escapes or control characters (tabs and newlines become spaces)."""
    return _CONTROL.sub("", text.replace("\t", " ").replace("\n", " "))


def _seconds(s: float) -> str:
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(int(s), 60)
    return f"{m} min {sec:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


class Task:
    """One long step being tracked. Create it with `task()`; update it with `advance`/`update`."""

    def __init__(self, label: str, total: int | None, unit: str, stream: TextIO, mode: str) -> None:
        self.label = clean_text(label)
        self.total = total
        self.unit = unit
        self.done = 0
        self.tokens = 0
        self.fields: dict[str, Any] = {}
        self._stream = stream
        self._mode = mode
        self._lock = threading.Lock()
        self._started = time.perf_counter()
        self._last_line_t = self._started
        self._last_line_pct = -1.0
        self._rich: Any = None
        self._rich_task: Any = None

    # -- updates -----------------------------------------------------------------------------------
    def advance(self, n: int = 1, *, tokens: int = 0, **fields: Any) -> None:
        """`n` more items done (and `tokens` more tokens, for a tok/s figure); `fields` are shown as-is."""
        with self._lock:
            self.done += n
            self._set(tokens, fields)

    def update(
        self, done: int, *, total: int | None = None, tokens: int | None = None, **fields: Any
    ) -> None:
        """Set the absolute count done (and optionally the total and the token count so far)."""
        with self._lock:
            self.done = done
            if total is not None:
                self.total = total
            if tokens is not None:
                self.tokens = 0
            self._set(tokens or 0, fields)

    def callback(self, done: int, total: int) -> None:
        """A `progress(done, total)` callback, as generation and the benchmark runners take."""
        self.update(done, total=total)

    def note(self, text: str) -> None:
        """One line of text beside the progress (e.g. a count at the end of a step), unless quiet."""
        if self._mode == "quiet":
            return
        if self._rich is not None:
            self._rich.console.print(text, highlight=False, markup=False)
        else:
            self._write(f"{self.label}: {clean_text(text)}")

    # -- rendering ---------------------------------------------------------------------------------
    def _set(self, tokens: int, fields: dict[str, Any]) -> None:
        self.tokens += tokens
        self.fields.update(fields)
        if self._mode == "rich":
            self._rich.update(
                self._rich_task, completed=self.done, total=self.total, extra=self._extra(with_rate=True)
            )
        elif self._mode == "plain":
            self._maybe_line()

    def _rate(self) -> str:
        elapsed = time.perf_counter() - self._started
        if not self.tokens or elapsed <= 0:
            return ""
        return f"{self.tokens / elapsed:,.0f} tok/s"

    def _extra(self, with_rate: bool) -> str:
        parts = [self._rate()] if with_rate else []
        parts += [f"{k} {v}" for k, v in self.fields.items()]
        return ", ".join(p for p in parts if p)

    def _line(self, final: bool) -> str:
        elapsed = _seconds(time.perf_counter() - self._started)
        if final:
            head = f"{self.label}: done, {self.done} {self.unit} in {elapsed}"
        elif self.total:
            pct = 100.0 * self.done / self.total
            head = f"{self.label}: {self.done}/{self.total} {self.unit} ({pct:.0f}%), {elapsed}"
        else:
            head = f"{self.label}: {self.done} {self.unit}, {elapsed}"
        extra = self._extra(with_rate=True)
        return f"{head}, {extra}" if extra else head

    def _maybe_line(self) -> None:
        now = time.perf_counter()
        pct = 100.0 * self.done / self.total if self.total else -1.0
        step = _settings.every_percent
        crossed = self.total and pct >= self._last_line_pct + step and self.done < self.total
        finished = self.total is not None and self.done >= self.total  # the final line says it
        if crossed or (now - self._last_line_t >= _every_s() and not finished):
            self._last_line_t = now
            if self.total:
                self._last_line_pct = pct - (pct % step)
            self._write(self._line(final=False))

    def _write(self, line: str) -> None:
        self._stream.write(clean_text(line) + "\n")
        self._stream.flush()

    # -- life cycle (used by task()) ---------------------------------------------------------------
    def _start(self, console: Any) -> None:
        if self._mode == "rich":
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._rich = Progress(
                TextColumn("{task.description}", markup=False),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(self.unit, markup=False),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[extra]}", markup=False),
                console=console or Console(file=self._stream),
                transient=False,
            )
            self._rich.start()
            self._rich_task = self._rich.add_task(self.label, total=self.total, extra="")
        elif self._mode == "plain":
            total = f"{self.total} {self.unit}" if self.total is not None else self.unit
            self._write(f"{self.label}: started ({total})")

    def _finish(self) -> None:
        if self._mode == "rich":
            self._rich.update(self._rich_task, completed=self.done, extra=self._extra(with_rate=True))
            self._rich.stop()
        elif self._mode == "plain":
            self._write(self._line(final=True))


@contextmanager
def task(
    label: str,
    total: int | None = None,
    *,
    unit: str = "items",
    console: Any = None,
    stream: TextIO | None = None,
) -> Iterator[Task]:
    """Track one long step: yields a `Task` to advance; prints the final line when the block ends.

    `console` is the stage's rich Console, so a bar and the stage's own lines share one display; `stream`
    is where plain lines go (default: the current sys.stderr).
    """
    out = stream or (console.file if console is not None else sys.stderr)
    quiet_console = console is not None and getattr(console, "quiet", False)  # e.g. other ranks' consoles
    t = Task(label, total, unit, out, "quiet" if quiet_console else _mode(out))
    t._start(console)
    try:
        yield t
    finally:
        t._finish()


def track(
    items: Iterable[T], label: str, total: int | None = None, *, unit: str = "items", console: Any = None
) -> Iterator[T]:
    """Iterate over `items`, advancing a progress task by one per item."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with task(label, total, unit=unit, console=console) as t:
        for item in items:
            yield item
            t.advance()


def callback_for(t: Task) -> Callable[[int, int], None]:
    """The `progress(done, total)` callback of task `t` (same as `t.callback`)."""
    return t.callback
