"""The one small interface every generation backend implements (transformers, llama.cpp)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Literal, Protocol


@dataclass(frozen=True)
class SamplingSettings:
    """Decoding settings shared by every backend. temperature 0 means greedy decoding."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ()
    n: int = 1
    seed: int = 0


@dataclass(frozen=True)
class Completion:
    """One generated continuation, already cut at the first stop sequence (the stop is not included)."""

    text: str
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class FimTokens:
    """A model's own fill-in-the-middle special tokens (prefix, suffix, middle; optional end-of-text)."""

    prefix: str
    suffix: str
    middle: str
    eot: str | None = None
    extra_stop: tuple[str, ...] = field(default_factory=tuple)


@dataclass(eq=False)
class Job:
    """Prompts to decode with their own settings inside a batch that is already running (continuous
    batching: `LlamaCppBackend.decode_joined`). When the job is over, `done(job)` is called with
    `rows` set (what `generate(prompts, settings)` would return), or `error` set (a prompt could not be
    decoded, or `cancelled()` turned true: Cancelled), or neither: it does not fit this batch's context
    and must be offered again later. `emit`, if given, streams each sample's text as it is decided (never
    a piece that a stop sequence could still cut: what `stream` yields)."""

    prompts: Sequence[str]
    settings: SamplingSettings
    done: Callable[[Job], None]
    cancelled: Callable[[], bool] | None = None  # true: stop decoding it (error: Cancelled)
    emit: Callable[[int, int, str], None] | None = None  # (prompt, sample, text) as the text grows
    rows: list[list[Completion]] | None = None
    error: BaseException | None = None


class Cancelled(Exception):
    """A request was withdrawn (its client left): it is not generated for, or no longer."""


@dataclass(frozen=True)
class CallHooks:
    """What the caller of `generate` asks of it while it runs, on this thread (`generate_hooks`)."""

    cancelled: Callable[[], bool] | None = None  # true: stop at the next decoding step, raise Cancelled
    on_step: Callable[[int], None] | None = None  # after each decoding step: the tokens it made


_HOOKS: ContextVar[CallHooks | None] = ContextVar("codetune_generate_hooks", default=None)
_NO_HOOKS = CallHooks()


@contextmanager
def generate_hooks(
    *, cancelled: Callable[[], bool] | None = None, on_step: Callable[[int], None] | None = None
) -> Iterator[None]:
    """Within it, `generate` calls on this thread stop once `cancelled()` is true (the server, when every
    client of a call has left) and report each step's tokens to `on_step` (a live rate in a long call)."""
    token = _HOOKS.set(CallHooks(cancelled, on_step))
    try:
        yield
    finally:
        _HOOKS.reset(token)


def call_hooks() -> CallHooks:
    """The hooks of the innermost `generate_hooks` block (none set outside one)."""
    return _HOOKS.get() or _NO_HOOKS


class Backend(Protocol):
    """What evaluation, `codetune generate` and the server need from a model."""

    name: str

    def generate(self, prompts: Sequence[str], settings: SamplingSettings) -> list[list[Completion]]:
        """Return `settings.n` completions for each prompt, in prompt order."""
        ...

    def stream(self, prompt: str, settings: SamplingSettings) -> Iterator[str]:
        """Yield text pieces of one completion as they are produced (n is ignored), honouring stops."""
        ...

    def chat_prompt(self, messages: Sequence[dict[str, str]]) -> str:
        """Render messages with the model's own chat template, ending with the assistant turn opened."""
        ...

    def count_tokens(self, text: str) -> int:
        """Number of tokens `text` encodes to (no special tokens added)."""
        ...

    def fim_tokens(self) -> FimTokens | None:
        """The model's FIM tokens, or None when it has none."""
        ...


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut `text` at the earliest stop sequence. Returns (text, whether a stop was found)."""
    cut = len(text)
    for s in stop:
        if not s:
            continue
        i = text.find(s)
        if i != -1 and i < cut:
            cut = i
    return text[:cut], cut != len(text)


def stop_holdback(text: str, stop: Sequence[str]) -> int:
    """How many trailing characters of `text` could be the start of a stop sequence (for streaming)."""
    hold = 0
    for s in stop:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    return hold


def stop_filtered(pieces: Iterable[str], stop: Sequence[str]) -> Iterator[str]:
    """Re-yield streamed text pieces, ending at the first stop sequence (not included) and holding back
    any tail that could still turn out to be the start of one."""
    text, sent = "", 0
    for piece in pieces:
        text += piece
        cut, stopped = cut_at_stop(text, stop)
        if stopped:
            if len(cut) > sent:
                yield cut[sent:]
            return
        safe = len(text) - stop_holdback(text, stop)
        if safe > sent:
            yield text[sent:safe]
            sent = safe
    if len(text) > sent:
        yield text[sent:]
