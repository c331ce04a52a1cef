"""The llama.cpp backend: a GGUF file run on the CPU through `llama-cpp-python` (imported lazily).

Decoding is driven token by token here rather than through `create_completion`, so that stop
sequences, streaming hold-back, token counts and sampling settings behave exactly as in the
transformers backend: temperature 0 is greedy; otherwise top-k (0 = off), top-p, temperature, with no
min-p, typical-p or repetition penalty that llama-cpp-python would otherwise add by default.
"""

from __future__ import annotations

import codecs
import os
import threading
from collections.abc import Container, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from codetune.errors import CodetuneError
from codetune.models.backends.base import Completion, FimTokens, SamplingSettings, cut_at_stop, stop_filtered


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
    if _log_filter:
        return
    try:
        import ctypes

        from llama_cpp import _logger
    except ImportError:  # another llama-cpp-python layout: leave its logging as it is
        return
    forward = _logger.llama_log_callback

    @llama_cpp.llama_log_callback  # type: ignore[misc]
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
    ) -> None:
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
        self._vocab: frozenset[str] | None = None
        self._formatter: Any = None

    # -- decoding -------------------------------------------------------------------------------

    def _tokenize(self, text: str, *, add_bos: bool) -> list[int]:
        # special=True: chat prompts carry the model's control tokens as text (<|im_start|>, ...).
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True))

    def _pieces(self, prompt: str, s: SamplingSettings, seed: int, run: _Run) -> Iterator[str]:
        """Decoded text of one completion as it is produced; no stop handling. Caller holds the lock."""
        tokens = self._tokenize(prompt, add_bos=True)  # BOS only where the GGUF asks for one
        n_ctx = int(self._llm.n_ctx())
        run.prompt_tokens = len(tokens)
        if len(tokens) >= n_ctx:
            raise CodetuneError(
                f"prompt is {len(tokens)} tokens, the context window is {n_ctx}; shorten it or raise n_ctx"
            )
        budget = min(s.max_new_tokens, n_ctx - len(tokens))
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

    def _complete(self, prompt: str, s: SamplingSettings, seed: int) -> Completion:
        run = _Run()
        text, stopped = "", False
        longest = max((len(x) for x in s.stop), default=0)
        for piece in self._pieces(prompt, s, seed, run):
            text += piece
            # Only the tail can hold a stop that wasn't there before this piece.
            window = len(piece) + longest
            if s.stop and cut_at_stop(text[-window:], s.stop)[1]:
                text, stopped = cut_at_stop(text, s.stop)
                break
        reason: Literal["stop", "length"] = "stop" if stopped or run.eog else "length"
        return Completion(text, reason, run.prompt_tokens, run.completion_tokens)

    # -- Backend protocol -----------------------------------------------------------------------

    def generate(self, prompts: Sequence[str], settings: SamplingSettings) -> list[list[Completion]]:
        """`settings.n` completions per prompt; sample j of prompt i uses seed `seed + i * n + j`."""
        out: list[list[Completion]] = []
        with self._lock:
            for i, prompt in enumerate(prompts):
                seeds = [settings.seed + i * settings.n + j for j in range(settings.n)]
                out.append([self._complete(prompt, settings, seed) for seed in seeds])
        return out

    def stream(self, prompt: str, settings: SamplingSettings) -> Iterator[str]:
        """One completion's text as produced, holding back what could be the start of a stop."""
        with self._lock:
            yield from stop_filtered(self._pieces(prompt, settings, settings.seed, _Run()), settings.stop)

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
        self._llm.close()
