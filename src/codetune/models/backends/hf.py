"""The transformers backend: any Hugging Face causal or seq2seq model, LoRA adapters merged in."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch

from codetune.data.format import encode_prompt
from codetune.errors import CodetuneError
from codetune.models.backends.base import Completion, FimTokens, SamplingSettings, cut_at_stop, stop_filtered
from codetune.models.fim import detect_fim_tokens

if TYPE_CHECKING:
    from codetune.devices import Runtime


class _StopOnStrings:
    """Stopping criterion: a row is done once its new text contains a stop string (or `cancel` is set)."""

    def __init__(
        self, tokenizer: Any, start: int, stop: Sequence[str], cancel: threading.Event | None = None
    ):
        self.tokenizer, self.start, self.stop, self.cancel = tokenizer, start, [s for s in stop if s], cancel

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        rows = input_ids.shape[0]
        if self.cancel is not None and self.cancel.is_set():
            return torch.ones(rows, dtype=torch.bool, device=input_ids.device)
        if not self.stop:
            return torch.zeros(rows, dtype=torch.bool, device=input_ids.device)
        done = [
            any(s in self.tokenizer.decode(row[self.start :], skip_special_tokens=True) for s in self.stop)
            for row in input_ids.tolist()
        ]
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
        """`settings.n` completions per prompt. Greedy goes in left-padded batches of `batch_size`;
        sampling goes one prompt at a time, prompt i seeded with `seed + i * n` (the n samples come
        from that one stream), so a caller that splits the prompts into calls and moves the seed on
        by `offset * n` for a call starting at prompt `offset` gets the same samples (like llama.cpp's
        `seed + i * n + j` for sample j)."""
        out: list[list[Completion]] = []
        sampling = settings.temperature > 0
        step = 1 if sampling else self.batch_size
        with self._lock:
            for b in range(0, len(prompts), step):
                chunk = prompts[b : b + step]
                inputs, lengths = self._inputs(chunk)
                start = inputs["input_ids"].shape[1] if self.kind == "causal" else 0
                with torch.random.fork_rng():
                    torch.manual_seed(settings.seed + b * settings.n)
                    seqs = self.model.generate(
                        **inputs, num_return_sequences=settings.n, **self._gen_kwargs(settings, start, None)
                    )
                for i in range(len(chunk)):
                    rows = seqs[i * settings.n : (i + 1) * settings.n]
                    out.append(
                        [
                            self._finish(r[start:] if self.kind == "causal" else r[1:], settings, lengths[i])
                            for r in rows
                        ]
                    )
        return out

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
