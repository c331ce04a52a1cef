"""The transformers backend: any Hugging Face causal or seq2seq model, LoRA adapters merged in."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch

from codetune.data.format import encode_prompt
from codetune.errors import CodetuneError
from codetune.models.backends.base import (
    Cancelled,
    Completion,
    FimTokens,
    SamplingSettings,
    call_hooks,
    cut_at_stop,
    stop_filtered,
)
from codetune.models.fim import detect_fim_tokens
from codetune.models.loading import forward_parameters

if TYPE_CHECKING:
    from codetune.devices import Runtime


class _StopOnStrings:
    """Stopping criterion for `model.generate` (seq2seq, streaming): a row is done once its newest
    tokens complete a stop string (or `cancel` is set)."""

    def __init__(
        self, tokenizer: Any, start: int, stop: Sequence[str], cancel: threading.Event | None = None
    ):
        self.start, self.watch, self.cancel = start, _StopWatch(tokenizer, stop), cancel

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        if self.cancel is not None and self.cancel.is_set():
            return torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        done = [self.watch.hit(row[self.start :]) for row in input_ids.tolist()]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class HFBackend:
    """Backend protocol over a transformers model, on the model's own device and in its own dtype.

    `runtime`: the device and precision it was loaded for (`from_path`); None for a model handed over
    in memory (training's evaluation), which stays where it is."""

    name = "transformers"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        kind: str,
        batch_size: int = 8,
        label: str = "",
        runtime: Runtime | None = None,
    ) -> None:
        self.model, self.tokenizer, self.kind, self.batch_size = model, tokenizer, kind, batch_size
        self.label, self.runtime = label, runtime
        self.device: torch.device = next(model.parameters()).device
        self._lock = threading.Lock()  # one generation at a time per model
        # transformers 5 names the cache argument `cache`, earlier versions `past_key_values`
        self._cache_key = "cache" if "cache" in forward_parameters(model) else "past_key_values"

    @classmethod
    def from_path(
        cls, path: str, batch_size: int = 8, device: str = "auto", precision: str = "auto"
    ) -> HFBackend:
        """Load `path` in the dtype of `precision` onto `device` (`generate.device`/`generate.precision`:
        auto is a GPU in bf16/fp16 where there is one, else the CPU in fp32)."""
        from codetune.devices import attention_implementation, resolve_runtime
        from codetune.models.loading import load_for_inference

        runtime = resolve_runtime(device, precision, "generate")
        model, tok, kind, _ = load_for_inference(
            path, dtype=runtime.dtype, attn_implementation=attention_implementation("auto", runtime)
        )
        return cls(model.to(runtime.device), tok, kind, batch_size, label=path, runtime=runtime)

    # -- helpers --------------------------------------------------------------------------------

    def _inputs(self, prompts: Sequence[str]) -> tuple[dict[str, torch.Tensor], list[int]]:
        tok = self.tokenizer
        if self.kind == "seq2seq":
            encoded = [tok(p, add_special_tokens=True)["input_ids"] for p in prompts]
        else:
            encoded = [encode_prompt(tok, p) for p in prompts]
        width = max(len(e) for e in encoded)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        ids = torch.full((len(encoded), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, e in enumerate(encoded):  # causal: left padding, so every row ends where generation starts
            if self.kind == "seq2seq":
                ids[i, : len(e)], mask[i, : len(e)] = torch.tensor(e), 1
            else:
                ids[i, width - len(e) :], mask[i, width - len(e) :] = torch.tensor(e), 1
        inputs = {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}
        return inputs, [len(e) for e in encoded]

    def _gen_kwargs(self, s: SamplingSettings, start: int, cancel: threading.Event | None) -> dict[str, Any]:
        from transformers import StoppingCriteriaList

        tok = self.tokenizer
        kw: dict[str, Any] = {
            "max_new_tokens": s.max_new_tokens,
            "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
            "eos_token_id": tok.eos_token_id,
            "stopping_criteria": StoppingCriteriaList([_StopOnStrings(tok, start, s.stop, cancel)]),
        }
        if s.temperature > 0:
            kw.update(do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k or None)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kw

    def _finish(self, new_ids: torch.Tensor, s: SamplingSettings, n_prompt: int) -> Completion:
        tok = self.tokenizer
        ids = new_ids.tolist()
        pad = tok.pad_token_id
        eos_hit = tok.eos_token_id in ids
        if eos_hit:
            ids = ids[: ids.index(tok.eos_token_id)]
        while ids and pad is not None and ids[-1] == pad and pad != tok.eos_token_id:
            ids.pop()
        text, stopped = cut_at_stop(tok.decode(ids, skip_special_tokens=True), s.stop)
        reason: Literal["stop", "length"] = (
            "stop" if (stopped or eos_hit or len(ids) < s.max_new_tokens) else "length"
        )
        return Completion(text, reason, n_prompt, len(ids))

    # -- Backend protocol -----------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], settings: SamplingSettings) -> list[list[Completion]]:
        """`settings.n` completions per prompt; sample j of prompt i is seeded with `seed + i * n + j`
        (like llama.cpp), so a caller that splits the prompts into calls and moves the seed on by
        `offset * n` for a call starting at prompt `offset` gets the same samples.

        Causal models decode here (`_decode_causal`): each prompt is encoded once and its n samples
        share that encoding; up to `batch_size` rows from several prompts decode together, and each row
        leaves the batch as soon as it ends. Seq2seq models go through `model.generate`."""
        with self._lock:
            if self.kind == "causal":
                return self._decode_causal(prompts, settings)
            return self._generate_seq2seq(prompts, settings)

    def _generate_seq2seq(self, prompts: Sequence[str], settings: SamplingSettings) -> list[list[Completion]]:
        out: list[list[Completion]] = []
        step = 1 if settings.temperature > 0 else self.batch_size
        cancelled = call_hooks().cancelled
        for b in range(0, len(prompts), step):
            if cancelled is not None and cancelled():  # between calls: model.generate runs to its end
                raise Cancelled()
            chunk = prompts[b : b + step]
            inputs, lengths = self._inputs(chunk)
            with torch.random.fork_rng(devices=self._rng_devices()):
                torch.manual_seed(settings.seed + b * settings.n)
                seqs = self.model.generate(
                    **inputs, num_return_sequences=settings.n, **self._gen_kwargs(settings, 0, None)
                )
            for i in range(len(chunk)):
                rows = seqs[i * settings.n : (i + 1) * settings.n]
                out.append([self._finish(r[1:], settings, lengths[i]) for r in rows])
        return out

    def _rng_devices(self) -> list[torch.device]:
        return [self.device] if self.device.type == "cuda" else []

    def _decode_causal(self, prompts: Sequence[str], s: SamplingSettings) -> list[list[Completion]]:
        """Waves of `batch_size // n` prompts (at least one): one left-padded prompt pass, its cache
        repeated for the n samples, then one token per live row per step."""
        per_wave = max(1, self.batch_size // max(1, s.n))
        out: list[list[Completion]] = []
        for first in range(0, len(prompts), per_wave):
            out.extend(self._wave(prompts[first : first + per_wave], s, first))
        return out

    def _wave(self, prompts: Sequence[str], s: SamplingSettings, first: int) -> list[list[Completion]]:
        from transformers import DynamicCache

        inputs, lengths = self._inputs(prompts)
        mask = inputs["attention_mask"]  # (P, T)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: each prompt counts from 0
        cache_key = self._cache_key
        cache = DynamicCache()
        result = self.model(
            input_ids=inputs["input_ids"], attention_mask=mask, position_ids=positions,
            use_cache=True, logits_to_keep=1, **{cache_key: cache},
        )  # fmt: skip
        logits = result.logits[:, -1, :]  # (P, V)
        n = s.n
        if n > 1:  # the n samples of a prompt share its encoding
            cache.batch_repeat_interleave(n)
            logits, mask = logits.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)
        rows = len(prompts) * n
        last = positions[:, -1].repeat_interleave(n)  # (R,)
        pick = _TokenPicker(s, [s.seed + first * n + r for r in range(rows)], self.device)
        stops = _StopWatch(self.tokenizer, s.stop)
        eos = self.tokenizer.eos_token_id
        made: list[list[int]] = [[] for _ in range(rows)]
        ended: dict[int, bool] = {}  # row -> ended by EOS or a stop string (False: max_new_tokens)
        live = list(range(rows))  # the rows still in the batch, in batch order
        hooks = call_hooks()
        while live:
            if hooks.cancelled is not None and hooks.cancelled():
                raise Cancelled()
            tokens = pick(logits, live)  # (A,)
            if hooks.on_step is not None:
                hooks.on_step(len(live))
            keep: list[int] = []
            for at, (row, token) in enumerate(zip(live, tokens.tolist(), strict=True)):
                if token == eos:
                    ended[row] = True
                    continue
                made[row].append(token)
                if stops.hit(made[row]):
                    ended[row] = True
                elif len(made[row]) >= s.max_new_tokens:
                    ended[row] = False
                else:
                    keep.append(at)
            if not keep:
                break
            if len(keep) < len(live):  # finished rows leave the batch
                index = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(index)
                mask, last, tokens = mask[index], last[index], tokens[index]
                live = [live[at] for at in keep]
            mask = torch.cat([mask, mask.new_ones((len(live), 1))], dim=1)
            last = last + 1
            result = self.model(
                input_ids=tokens[:, None], attention_mask=mask, position_ids=last[:, None],
                use_cache=True, **{cache_key: cache},
            )  # fmt: skip
            logits = result.logits[:, -1, :]
        out: list[list[Completion]] = []
        for i, n_prompt in enumerate(lengths):
            out.append([self._complete(made[i * n + j], ended[i * n + j], s, n_prompt) for j in range(n)])
        return out

    def _complete(self, ids: list[int], ended: bool, s: SamplingSettings, n_prompt: int) -> Completion:
        text, stopped = cut_at_stop(self.tokenizer.decode(ids, skip_special_tokens=True), s.stop)
        return Completion(text, "stop" if (ended or stopped) else "length", n_prompt, len(ids))

    def stream(self, prompt: str, settings: SamplingSettings) -> Iterator[str]:
        from transformers import TextIteratorStreamer

        inputs, _ = self._inputs([prompt])
        start = inputs["input_ids"].shape[1] if self.kind == "causal" else 0
        streamer = TextIteratorStreamer(
            self.tokenizer, skip_prompt=self.kind == "causal", skip_special_tokens=True, timeout=600
        )
        cancel = threading.Event()
        kwargs = {**inputs, **self._gen_kwargs(settings, start, cancel), "streamer": streamer}
        errors: list[BaseException] = []

        def run() -> None:
            try:
                with self._lock, torch.no_grad(), torch.random.fork_rng():
                    torch.manual_seed(settings.seed)
                    self.model.generate(**kwargs)
            except BaseException as e:  # surfaced to the consumer below
                errors.append(e)
                streamer.on_finalized_text("", stream_end=True)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        ended = False

        def pieces() -> Iterator[str]:
            nonlocal ended
            yield from streamer
            ended = True

        try:
            yield from stop_filtered(pieces(), settings.stop)
        finally:
            cancel.set()  # also when the consumer stops early (client disconnected)
            if not ended:
                for _ in streamer:  # drain up to the end signal so the generating thread can finish
                    pass
            thread.join(timeout=60)
        if errors:
            raise errors[0]

    def chat_prompt(self, messages: Sequence[dict[str, str]]) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            raise CodetuneError(
                f"model {self.label or '(in memory)'} has no chat template; use a plain prompt"
            )
        return str(
            self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        )

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def fim_tokens(self) -> FimTokens | None:
        return detect_fim_tokens(self.tokenizer.get_vocab())


class _TokenPicker:
    """The next token of each live row: argmax (temperature 0), or a draw after temperature, top-k and
    top-p with each row's own generator, so a row's samples don't depend on the rows beside it."""

    def __init__(self, s: SamplingSettings, seeds: Sequence[int], device: torch.device) -> None:
        self.s = s
        self.generators = (
            [torch.Generator(device=device).manual_seed(seed) for seed in seeds] if s.temperature > 0 else []
        )

    def __call__(self, logits: torch.Tensor, live: Sequence[int]) -> torch.Tensor:
        if self.s.temperature <= 0:
            return logits.argmax(dim=-1)
        scores = logits.float() / self.s.temperature  # (A, V)
        if self.s.top_k > 0:
            kth = scores.topk(min(self.s.top_k, scores.size(-1)), dim=-1).values[:, -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if self.s.top_p < 1.0:
            ordered, order = scores.sort(dim=-1, descending=True)
            cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
            drop = cumulative - ordered.softmax(dim=-1) > self.s.top_p  # keep the first token past top_p
            scores = scores.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
        probs = scores.softmax(dim=-1)
        return torch.cat(
            [torch.multinomial(probs[a], 1, generator=self.generators[row]) for a, row in enumerate(live)]
        )


class _StopWatch:
    """Whether a row's newest tokens complete a stop string: only the tail that could hold one is
    decoded at each step (a token is at least one byte, a character at most four)."""

    def __init__(self, tokenizer: Any, stop: Sequence[str]) -> None:
        self.tokenizer, self.stop = tokenizer, [x for x in stop if x]
        self.window = 4 * max((len(x) for x in self.stop), default=0) + 1

    def hit(self, ids: list[int]) -> bool:
        if not self.stop:
            return False
        tail = self.tokenizer.decode(ids[-self.window :], skip_special_tokens=True)
        return any(x in tail for x in self.stop)
