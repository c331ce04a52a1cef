"""The llama.cpp backend: a GGUF file run on the CPU through `llama-cpp-python` (imported lazily).

Decoding is driven token by token here rather than through `create_completion`, so that stop
sequences, streaming hold-back, token counts and sampling settings behave exactly as in the
transformers backend: temperature 0 is greedy; otherwise top-k (0 = off), top-p, temperature, with no
min-p, typical-p or repetition penalty that llama-cpp-python would otherwise add by default.

`generate` decodes up to `max_batch` sequences together on llama.cpp's low-level API (one
`llama_decode` per step, one token per sequence, in one context with a KV stream per sequence): the
prefix all prompts share is encoded once, each prompt once on top of it, and its KV stream copied to
each of its n samples; a sequence leaves the batch as soon as it ends and the next waiting sample takes
its place. `decode_joined` is the same loop fed while it runs (continuous batching, for the server): new
jobs join as slots free up and each ends on its own. `stream` decodes one sequence through
`Llama.generate`. Sample j of prompt i is seeded `seed + i * n + j` whatever the batch, and a call
repeated gives the same text. Batched and one-at-a-time output agree only as far as the logits do:
llama.cpp's CPU matrix products are not batch-invariant (one row and several rows take different
kernels, with the activations quantized to 8 bits differently), so greedy output can go the other
way at a near tie between the top two tokens, and sampled output whenever a draw lands near the edge
between two tokens (measured in benchmarks/README.md, `generation_throughput.py`).
"""

from __future__ import annotations

import codecs
import ctypes
import itertools
import os
import threading
from collections import deque
from collections.abc import Callable, Container, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from codetune.errors import CodetuneError
from codetune.models.backends.base import (
    Cancelled,
    Completion,
    FimTokens,
    Job,
    SamplingSettings,
    call_hooks,
    cut_at_stop,
    stop_filtered,
    stop_holdback,
)


def _import_llama_cpp() -> Any:
    # OpenMP threads that spin while waiting are ruinous on a shared CPU: measured on 2 busy cores,
    # 2 threads gave 1.5-4 tokens/s spinning and 11-15 tokens/s passive. Read when libgomp loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import llama_cpp
    except ImportError as e:
        raise CodetuneError(
            "the llamacpp backend needs llama-cpp-python, which is not installed; run `make llamacpp` "
            "(builds it from source for this CPU, ~15 min) or use generate.backend=hf"
        ) from e
    _filter_llama_log(llama_cpp)
    return llama_cpp


# llama.cpp logs, at error level, one line per adapted tensor when a LoRA is applied over a repacked
# (Q4_K, CPU) model: "lora for 'blk.12.ffn_down.weight' cannot use buft 'CPU_REPACK', fallback to CPU".
# It is expected and harmless (the adapter's tensors live in plain CPU memory), so it is dropped; every
# other message goes to llama-cpp-python's own handler unchanged.
_LOG_NOISE = (b"cannot use buft 'CPU_REPACK', fallback to CPU",)
_log_filter: list[Any] = []  # the installed ctypes callback, kept alive for as long as the process


def _filter_llama_log(llama_cpp: Any) -> None:
    callback_type = getattr(llama_cpp, "llama_log_callback", None)
    if _log_filter or callback_type is None or not hasattr(llama_cpp, "llama_log_set"):
        return  # installed already, or a llama_cpp without these bindings (another layout, a stand-in)
    try:
        from llama_cpp import _logger
    except ImportError:  # another llama-cpp-python layout: leave its logging as it is
        return
    forward = _logger.llama_log_callback

    @callback_type  # type: ignore[misc]
    def callback(level: int, text: bytes, user_data: Any) -> None:
        if not any(noise in text for noise in _LOG_NOISE):
            forward(level, text, user_data)

    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    _log_filter.append(callback)


@dataclass
class _Run:
    """Counts for one completion, filled in while its tokens are produced."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    eog: bool = False  # the model ended its turn (an end-of-generation token)


@dataclass
class _Sequence:
    """One completion decoding in a batch slot: what it feeds next, its sampler and its text so far."""

    prompt: int  # index of its prompt in the call
    sample: int  # which of the prompt's n samples
    budget: int  # the most tokens it may produce
    sampler: Any  # its own llama_sampler chain: greedy, or seeded as `Llama.generate` builds it
    token: int  # the token it feeds at the next step, at position `pos`
    pos: int
    decoder: codecs.IncrementalDecoder
    text: str = ""
    completion_tokens: int = 0
    stopped: bool = False  # a stop sequence ended it
    eog: bool = False  # the model ended its turn
    sent: int = 0  # characters of `text` emitted (streaming jobs)

    def completion(self, prompt_tokens: int) -> Completion:
        reason: Literal["stop", "length"] = "stop" if self.stopped or self.eog else "length"
        return Completion(self.text, reason, prompt_tokens, self.completion_tokens)


@dataclass(eq=False)
class _Prompt:
    """One prompt of a job in the batch: its tokens, how many it may add, and where its rows go."""

    tokens: list[int]
    budget: int  # the most tokens each sample may produce (max_new_tokens, within the context window)
    job: Job
    index: int  # its place in job.prompts
    shared: int  # leading tokens it takes from the shared-prefix holder


def _sampler_chain(lib: Any, s: SamplingSettings, seed: int) -> Any:
    """The chain `Llama.generate` builds for these settings (less its no-op repetition penalty)."""
    chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
    if s.temperature > 0:
        parts = [
            lib.llama_sampler_init_top_k(s.top_k),
            lib.llama_sampler_init_typical(1.0, 1),
            lib.llama_sampler_init_top_p(s.top_p, 1),
            lib.llama_sampler_init_min_p(0.0, 1),
            lib.llama_sampler_init_temp(s.temperature),
            lib.llama_sampler_init_dist(seed),
        ]
    else:
        parts = [lib.llama_sampler_init_greedy()]
    for part in parts:
        lib.llama_sampler_chain_add(chain, part)  # the chain owns its parts
    return chain


SHARED_PREFIX_MIN = 16  # tokens: below this, a separate prefix isn't worth its copies


def _shared_prefix(prompts: Sequence[Sequence[int]]) -> int:
    """How many leading tokens every prompt shares (leaving each at least its last token), when it is
    worth encoding them once for all: two or more distinct prompts, at least SHARED_PREFIX_MIN tokens."""
    if len({tuple(p) for p in prompts}) < 2:
        return 0
    shared = min(len(p) for p in prompts) - 1
    first = prompts[0]
    for p in prompts[1:]:
        shared = next((k for k in range(shared) if p[k] != first[k]), shared)
    return shared if shared >= SHARED_PREFIX_MIN else 0


class _BatchContext:
    """A llama_context for decoding up to `slots` sequences together. Sequence ids 0..slots-1 are
    the slots; id `slots` holds the prompt whose samples are being started, and id `slots + 1` the
    prefix that every prompt of the call shares (a chat template's system turn and instruction).

    `unified` True: one pool of KV cells for every sequence; a prompt copied to n sequences is stored
    once, but every token's attention runs over all the cells of all sequences (masked). False: one
    KV stream per sequence; a copy duplicates the prompt's stream, and a token attends to its own."""

    unified = False  # 16 HumanEval prompts x 64 steps, 2 cores at load ~4: steps 44 s, against 76 s unified

    def __init__(self, lib: Any, llm: Any, *, slots: int, n_ctx: int, n_batch: int, threads: int) -> None:
        self.lib, self.slots, self.n_ctx, self.n_batch = lib, slots, n_ctx, max(n_batch, slots)
        params = lib.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = params.n_ubatch = self.n_batch
        params.n_seq_max = slots + 2
        params.kv_unified = self.unified
        params.n_threads = params.n_threads_batch = threads
        self.ctx = lib.llama_init_from_model(llm._model.model, params)
        if self.ctx is None:
            raise CodetuneError(
                f"llama.cpp could not make a context of {n_ctx} tokens for {slots} sequences; "
                "lower max_batch or max_new_tokens"
            )
        adapter = getattr(llm, "_lora_adapter", None)
        if adapter is not None:  # the LoRA the Llama loaded applies to this context too
            adapters = (lib.llama_adapter_lora_p_ctypes * 1)(adapter)
            scales = (ctypes.c_float * 1)(float(llm.lora_scale))
            if lib.llama_set_adapters_lora(self.ctx, adapters, 1, scales) != 0:
                raise CodetuneError(f"llama.cpp could not apply the LoRA {llm.lora_path}")
        self.memory = lib.llama_get_memory(self.ctx)
        self.batch = lib.llama_batch_init(self.n_batch, 0, 1)

    def _decode(self, rows: Sequence[tuple[int, int, int]], logits: bool) -> None:
        """One llama_decode of (sequence id, token, position) rows; logits for every row or none."""
        batch = self.batch
        for i, (seq, token, pos) in enumerate(rows):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = logits
        batch.n_tokens = len(rows)
        code = self.lib.llama_decode(self.ctx, batch)
        if code != 0:
            raise CodetuneError(f"llama_decode failed (code {code}) on a batch of {len(rows)} tokens")

    def prefill(self, seq: int, tokens: Sequence[int], at: int = 0) -> None:
        """Encode `tokens` at positions at.. into sequence `seq`, in chunks of n_batch, no logits."""
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start : start + self.n_batch]
            self._decode([(seq, t, at + start + k) for k, t in enumerate(chunk)], logits=False)

    def step(self, rows: Sequence[tuple[int, int, int]]) -> None:
        """One token for each of several sequences; the logits of row i are then at index i."""
        self._decode(rows, logits=True)

    def copy(self, src: int, dst: int, length: int) -> None:
        # across streams llama.cpp copies a whole stream (the source holds nothing else the copy shouldn't carry)
        span = (0, length) if self.unified else (-1, -1)
        self.lib.llama_memory_seq_cp(self.memory, src, dst, *span)

    def remove(self, seq: int) -> None:
        self.lib.llama_memory_seq_rm(self.memory, seq, -1, -1)

    def clear(self) -> None:
        self.lib.llama_memory_clear(self.memory, True)

    def close(self) -> None:
        if self.ctx is not None:
            self.lib.llama_batch_free(self.batch)
            self.lib.llama_free(self.ctx)
            self.ctx = None


class LlamaCppBackend:
    """Backend protocol over a GGUF model (see `codetune.models.backends.base.Backend`)."""

    name = "llamacpp"

    def __init__(
        self,
        gguf_path: str | Path,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        seed: int = 0,
        n_batch: int = 512,
        lora_path: str | Path | None = None,
        max_batch: int = 16,
    ) -> None:
        """`max_batch`: how many sequences `generate` decodes together (1 = one at a time)."""
        if max_batch < 1:
            raise CodetuneError(f"max_batch is {max_batch}; it must be at least 1")
        self._lib = _import_llama_cpp()
        path = Path(gguf_path)
        if not path.is_file():
            raise CodetuneError(
                f"GGUF file {path} not found; fetch a model pack (`codetune models fetch NAME`)"
            )
        self.gguf_path = str(path)
        self.lora_path = str(lora_path) if lora_path is not None else None
        if self.lora_path is not None and not Path(self.lora_path).is_file():
            raise CodetuneError(f"LoRA GGUF {self.lora_path} not found")
        self.seed = seed
        threads = n_threads or len(os.sched_getaffinity(0))
        self.max_batch, self._threads, self._n_batch = max_batch, threads, n_batch
        self._llm = self._lib.Llama(
            model_path=self.gguf_path,
            n_ctx=n_ctx,
            n_batch=n_batch,
            n_threads=threads,
            n_threads_batch=threads,
            seed=seed,
            verbose=False,
            **({"lora_path": self.lora_path} if self.lora_path else {}),
        )
        self._lock = threading.Lock()  # one generation at a time: the model has a single KV cache
        self._queued = 0  # `stream` calls waiting for the lock: a joined batch takes no more work then
        self._queued_lock = threading.Lock()
        self._vocab: frozenset[str] | None = None
        self._formatter: Any = None
        self._batched: _BatchContext | None = None  # made by the first `generate`, grown as needed

    # -- decoding -------------------------------------------------------------------------------

    def _tokenize(self, text: str, *, add_bos: bool) -> list[int]:
        # special=True: chat prompts carry the model's control tokens as text (<|im_start|>, ...).
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True))

    def _prompt_tokens(self, prompt: str) -> list[int]:
        tokens = self._tokenize(prompt, add_bos=True)  # BOS only where the GGUF asks for one
        n_ctx = int(self._llm.n_ctx())
        if len(tokens) >= n_ctx:
            raise CodetuneError(
                f"prompt is {len(tokens)} tokens, the context window is {n_ctx}; shorten it or raise n_ctx"
            )
        if not tokens:
            raise CodetuneError("the prompt is empty (0 tokens); give the model some text to continue")
        return tokens

    def _pieces(self, prompt: str, s: SamplingSettings, seed: int, run: _Run) -> Iterator[str]:
        """Decoded text of one completion as it is produced; no stop handling. Caller holds the lock."""
        tokens = self._prompt_tokens(prompt)
        run.prompt_tokens = len(tokens)
        budget = min(s.max_new_tokens, int(self._llm.n_ctx()) - len(tokens))
        if budget <= 0:
            return
        self._llm.set_seed(seed)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        vocab = self._llm._model.vocab
        for token in self._llm.generate(
            tokens,
            top_k=s.top_k if s.temperature > 0 else 0,
            top_p=s.top_p,
            min_p=0.0,
            typical_p=1.0,
            temp=max(s.temperature, 0.0),
            repeat_penalty=1.0,
        ):
            if self._lib.llama_vocab_is_eog(vocab, token):
                run.eog = True
                break
            run.completion_tokens += 1
            piece = decoder.decode(self._llm._model.detokenize([token], special=False))
            if piece:
                yield piece
            if run.completion_tokens >= budget:
                break
        tail = decoder.decode(b"", final=True)
        if tail:
            yield tail

    # -- batched decoding -----------------------------------------------------------------------

    def _batch_context(self, slots: int, longest: int) -> _BatchContext:
        """A context for `slots` sequences of up to `longest` tokens each, plus the prompt and prefix
        holders: one KV stream of `longest` (rounded up to 256, as llama.cpp does) per sequence."""
        ctx, per_seq = self._batched, -(-longest // 256) * 256
        if ctx is not None and ctx.slots >= slots and ctx.n_ctx >= (ctx.slots + 2) * per_seq:
            return ctx
        if ctx is not None:  # grow, never shrink, so that a mixed workload settles on one context
            slots, per_seq = max(slots, ctx.slots), max(per_seq, ctx.n_ctx // (ctx.slots + 2))
            ctx.close()
            self._batched = None
        n_ctx = (slots + 2) * per_seq
        self._batched = _BatchContext(
            self._lib, self._llm, slots=slots, n_ctx=n_ctx, n_batch=self._n_batch, threads=self._threads
        )
        return self._batched

    def _decode_jobs(self, first: Sequence[Job], intake: Callable[[int], Sequence[Job]] | None) -> None:
        """Decode every (prompt, sample) of `first` up to `max_batch` at a time, refilling freed slots;
        with `intake`, also the jobs `intake(free)` hands in while the batch runs (asked whenever fewer
        than `max_batch` samples are decoding or waiting). A prompt of `first` that can't be tokenized
        raises; a joining job gets the error, or neither rows nor error when its longest sequence
        (prompt + max_new_tokens) is longer than this batch's KV streams. Caller holds the lock."""
        n_ctx = int(self._llm.n_ctx())
        prompts: dict[int, _Prompt] = {}  # by id, while their job runs (a server's batch may run for hours)
        waiting: deque[tuple[int, int]] = deque()  # (prompt, sample) not started yet
        unfinished: dict[Job, int] = {}  # samples of the job not ended yet
        count = itertools.count()

        def admit(job: Job, tokens: list[list[int]]) -> list[_Prompt]:
            s = job.settings
            job.rows = [[Completion("", "length", len(t), 0)] * s.n for t in tokens]
            unfinished[job] = 0
            added = []
            for k, t in enumerate(tokens):
                budget = min(s.max_new_tokens, n_ctx - len(t))
                if budget > 0 and s.n > 0:
                    i = next(count)
                    prompts[i] = _Prompt(t, budget, job, k, shared=0)
                    added.append(prompts[i])
                    waiting.extend((i, j) for j in range(s.n))
                    unfinished[job] += s.n
            if not unfinished[job]:
                end(job)
            return added

        def end(job: Job) -> None:
            del unfinished[job]
            for i in [i for i, p in prompts.items() if p.job is job]:
                del prompts[i]
            job.done(job)

        for job in first:
            admit(job, [self._prompt_tokens(p) for p in job.prompts])
        if not waiting:
            return
        slots = self.max_batch if intake is not None else min(self.max_batch, len(waiting))
        ctx = self._batch_context(slots, max(len(p.tokens) + p.budget + 1 for p in prompts.values()))
        room = ctx.n_ctx // (ctx.slots + 2)  # each KV stream's cells
        holder, held = ctx.slots, -1  # the sequence id holding prompt `held`'s tokens
        shared = _shared_prefix([p.tokens for p in prompts.values()])
        prefix = next(iter(prompts.values())).tokens[:shared]
        if shared:  # encoded once, copied under each prompt's own tokens
            ctx.prefill(holder + 1, prefix)
            for p in prompts.values():
                p.shared = shared

        def join(job: Job) -> None:
            try:
                tokens = [self._prompt_tokens(p) for p in job.prompts]
            except CodetuneError as e:
                job.error = e
                job.done(job)
                return
            if any(len(t) + min(job.settings.max_new_tokens, n_ctx - len(t)) + 1 > room for t in tokens):
                job.done(job)  # too long for these streams: offered again, it leads a batch of its own
                return
            for p in admit(job, tokens):
                p.shared = shared if shared and len(p.tokens) > shared and p.tokens[:shared] == prefix else 0

        active: dict[int, _Sequence] = {}  # slot -> the sample decoding in it
        on_step = call_hooks().on_step

        def withdraw() -> None:
            """Drop every sample of a job whose `cancelled()` is true; the job ends with Cancelled."""
            gone = [job for job in unfinished if job.cancelled is not None and job.cancelled()]
            for job in gone:
                for seq in [seq for seq, q in active.items() if prompts[q.prompt].job is job]:
                    self._lib.llama_sampler_free(active.pop(seq).sampler)
                    ctx.remove(seq)
                kept = [(i, j) for i, j in waiting if prompts[i].job is not job]
                waiting.clear()
                waiting.extend(kept)
                job.rows, job.error = None, Cancelled()
                end(job)

        try:
            while True:
                if intake is not None and not self._queued and len(active) + len(waiting) < slots:
                    for job in intake(slots - len(active) - len(waiting)):
                        join(job)
                withdraw()
                if not waiting and not active:
                    break
                while waiting and len(active) < slots:
                    i, j = waiting.popleft()
                    p = prompts[i]
                    if held != i:  # encode the prompt once, all but its last token (fed at step 1)
                        ctx.remove(holder)
                        if p.shared:
                            ctx.copy(holder + 1, holder, p.shared)
                        ctx.prefill(holder, p.tokens[p.shared : -1], at=p.shared)
                        held = i
                    seq = min(set(range(slots)) - active.keys())
                    ctx.copy(holder, seq, len(p.tokens) - 1)
                    active[seq] = self._start(i, j, p)
                rows = sorted(active.items())  # ascending ids: see `_compact`
                ctx.step([(seq, q.token, q.pos) for seq, q in rows])
                if on_step is not None:
                    on_step(len(rows))
                for row, (seq, q) in enumerate(rows):
                    token = self._lib.llama_sampler_sample(q.sampler, ctx.ctx, row)
                    p = prompts[q.prompt]
                    ended = self._advance(q, token, p.job.settings.stop)
                    if p.job.emit is not None:
                        self._emit(q, p, ended)
                    if ended:
                        assert p.job.rows is not None
                        p.job.rows[p.index][q.sample] = q.completion(len(p.tokens))
                        self._lib.llama_sampler_free(q.sampler)
                        ctx.remove(seq)
                        del active[seq]
                        unfinished[p.job] -= 1
                        if not unfinished[p.job]:
                            end(p.job)
                if not waiting:  # nothing will refill the freed slots
                    self._compact(ctx, active)
        finally:
            for q in active.values():
                self._lib.llama_sampler_free(q.sampler)
            ctx.clear()

    @staticmethod
    def _compact(ctx: _BatchContext, active: dict[int, _Sequence]) -> None:
        """Move the highest-numbered sequences into the free slots below them, so that the live ones
        are 0..k-1. With a KV stream per sequence, llama.cpp puts only a run of consecutive sequence
        ids into one micro-batch and computes each run separately: live ids with gaps (0, 1, 5, 9)
        make a step of 4 sequences cost three graph computations of 2, 1 and 1 rows. Measured on a
        HumanEval run before this (80 problems, 32 slots): steps cost twice a lock-step's."""
        if ctx.unified:
            return  # one stream: llama.cpp splits the batch by size only
        live = len(active)  # as many ids at or above `live` are in use as ids below it are free
        free = sorted(set(range(live)) - active.keys())
        for dst, src in zip(free, sorted(s for s in active if s >= live), strict=True):
            ctx.copy(src, dst, active[src].pos)
            ctx.remove(src)
            active[dst] = active.pop(src)

    def _start(self, i: int, j: int, p: _Prompt) -> _Sequence:
        s = p.job.settings
        seed = s.seed + p.index * s.n + j  # as one at a time: sample j of the job's prompt p.index
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        sampler = _sampler_chain(self._lib, s, seed)
        tokens = p.tokens
        return _Sequence(i, j, p.budget, sampler, token=tokens[-1], pos=len(tokens) - 1, decoder=decoder)

    def _advance(self, q: _Sequence, token: int, stop: Sequence[str]) -> bool:
        """Take sequence `q`'s next token; True when it has ended (end of turn, stop or budget)."""
        if self._lib.llama_vocab_is_eog(self._llm._model.vocab, token):
            q.eog = True
            self._grow(q, q.decoder.decode(b"", final=True), stop)
            return True
        q.completion_tokens += 1
        piece = q.decoder.decode(self._llm._model.detokenize([token], special=False))
        if self._grow(q, piece, stop):
            return True
        if q.completion_tokens >= q.budget:
            self._grow(q, q.decoder.decode(b"", final=True), stop)
            return True
        q.token, q.pos = token, q.pos + 1
        return False

    @staticmethod
    def _emit(q: _Sequence, p: _Prompt, ended: bool) -> None:
        """Hand a streaming job the text of `q` that no stop sequence can cut any more."""
        assert p.job.emit is not None
        safe = len(q.text) if ended else len(q.text) - stop_holdback(q.text, p.job.settings.stop)
        if safe > q.sent:
            p.job.emit(p.index, q.sample, q.text[q.sent : safe])
            q.sent = safe

    @staticmethod
    def _grow(q: _Sequence, piece: str, stop: Sequence[str]) -> bool:
        """Append `piece`; True (and the text cut) when a stop sequence has appeared."""
        if not piece:
            return False
        q.text += piece
        # Only the tail can hold a stop that wasn't there before this piece.
        window = len(piece) + max((len(x) for x in stop), default=0)
        if stop and cut_at_stop(q.text[-window:], stop)[1]:
            q.text, q.stopped = cut_at_stop(q.text, stop)[0], True
        return q.stopped

    # -- Backend protocol -----------------------------------------------------------------------

    def generate(self, prompts: Sequence[str], settings: SamplingSettings) -> list[list[Completion]]:
        """`settings.n` completions per prompt, decoded up to `max_batch` sequences together;
        sample j of prompt i uses seed `seed + i * n + j`, whatever the batch."""
        job = Job(prompts, settings, done=lambda job: None, cancelled=call_hooks().cancelled)
        with self._lock:
            self._decode_jobs([job], None)
        if job.error is not None:  # Cancelled (see `generate_hooks`)
            raise job.error
        assert job.rows is not None  # set for every job `_decode_jobs` is given
        return job.rows

    def decode_joined(self, first: Sequence[Job], intake: Callable[[int], Sequence[Job]]) -> None:
        """Continuous batching: decode `first` and every job `intake(free)` hands in while they run
        (`free`: how many more samples would start at once), each finishing on its own (`Job.done`).
        Returns when nothing is decoding and `intake` has nothing more. While a `stream` call waits,
        `intake` is not asked: the batch drains and the stream goes next."""
        with self._lock:
            self._decode_jobs(first, intake)

    def stream(self, prompt: str, settings: SamplingSettings) -> Iterator[str]:
        """One completion's text as produced, holding back what could be the start of a stop."""
        with self._queued_lock:
            self._queued += 1
        try:
            self._lock.acquire()
        finally:
            with self._queued_lock:
                self._queued -= 1
        try:
            yield from stop_filtered(self._pieces(prompt, settings, settings.seed, _Run()), settings.stop)
        finally:
            self._lock.release()

    def chat_prompt(self, messages: Sequence[dict[str, str]]) -> str:
        """Render with the GGUF's own `tokenizer.chat_template` (jinja, as transformers renders it)."""
        if self._formatter is None:
            template = self._llm.metadata.get("tokenizer.chat_template")
            if not template:
                raise CodetuneError(
                    f"{self.gguf_path} has no chat template in its metadata; use a plain prompt"
                )
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            model = self._llm._model
            self._formatter = Jinja2ChatFormatter(
                template=template,
                eos_token=model.token_get_text(model.token_eos()),
                bos_token=model.token_get_text(model.token_bos()),
                add_generation_prompt=True,
            )
        return str(self._formatter(messages=list(messages)).prompt)

    def count_tokens(self, text: str) -> int:
        return len(self._tokenize(text, add_bos=False))

    def fim_tokens(self) -> FimTokens | None:
        from codetune.models.fim import detect_fim_tokens

        return detect_fim_tokens(self._vocabulary())

    def _vocabulary(self) -> Container[str]:
        if self._vocab is None:
            model = self._llm._model
            texts = set()
            for i in range(model.n_vocab()):
                try:
                    texts.add(model.token_get_text(i))
                except UnicodeDecodeError:  # a raw byte piece; never a FIM marker
                    continue
            self._vocab = frozenset(texts)
        return self._vocab

    def close(self) -> None:
        """Free the model now rather than at garbage collection."""
        if self._batched is not None:
            self._batched.close()
            self._batched = None
        self._llm.close()
