"""One generation path used by `codetune generate`, evaluation and the server.

(Named generation.py, not generate.py, so that `from codetune import generate` is always the function.)
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from codetune.config import Config, GenerateConfig, PromptConfig
from codetune.data.format import build_answer, build_prompt
from codetune.errors import CodetuneError
from codetune.models.backends.base import Backend, Completion, SamplingSettings
from codetune.models.fim import fim_prompt

_FENCE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:```|$)", re.DOTALL)


def sampling_settings(g: GenerateConfig, extra_stop: Sequence[str] = ()) -> SamplingSettings:
    return SamplingSettings(
        max_new_tokens=g.max_new_tokens,
        temperature=g.temperature,
        top_p=g.top_p,
        top_k=g.top_k,
        stop=tuple(g.stop) + tuple(s for s in extra_stop if s not in g.stop),
        n=g.n,
        seed=g.seed,
    )


def load_backend(g: GenerateConfig, model: str | None = None) -> Backend:
    """The backend named by `g.backend` for `model` (default `g.model`); heavy imports happen here."""
    name = model or g.model
    if not name:
        raise CodetuneError("no model given: set generate.model or pass --model")
    if g.backend == "hf":
        from codetune.models.backends.hf import HFBackend

        return HFBackend.from_path(name, batch_size=g.batch_size, device=g.device, precision=g.precision)
    if g.backend == "llamacpp":
        from codetune.models.backends.llamacpp import LlamaCppBackend

        path = Path(name)
        kwargs: dict[str, object] = {"n_threads": g.threads} if g.threads else {}
        if path.is_dir():
            path, kwargs["lora_path"] = _gguf_for_folder(path)
        elif not path.is_file():
            from codetune.models import pack

            if name not in pack.PACKS:
                raise CodetuneError(f"generate.model {name!r}: not a GGUF file nor a model pack name")
            path = pack.fetch_model(name, convert=False).gguf_path
        return LlamaCppBackend(str(path), seed=g.seed, max_batch=g.max_batch, **kwargs)  # type: ignore[arg-type]
    raise CodetuneError(f"generate.backend {g.backend!r} is not one of: hf, llamacpp")


def backend_runtime(backend: Backend) -> dict[str, Any] | None:
    """The device and precision a backend runs in, for a manifest (None: llama.cpp, or a model handed
    over in memory)."""
    runtime = getattr(backend, "runtime", None)
    return runtime.to_dict() if runtime is not None else None


def _gguf_for_folder(folder: Path) -> tuple[Path, Path | None]:
    """A codetune model folder on llama.cpp: a LoRA over a model pack runs as the pack's GGUF plus the
    adapter exported to a LoRA GGUF (written once into the folder); a pack's own `hf/` folder runs as
    its GGUF."""
    from codetune.models.export import ADAPTER_GGUF, base_gguf_of, lora_to_gguf
    from codetune.models.loading import read_meta

    meta = read_meta(folder)
    if (folder / "codetune-conversion.json").is_file():
        base = base_gguf_of({"base_model": str(folder)})
        if base is not None:
            return base, None
    base = base_gguf_of(meta) if meta.get("format") == "lora" else None
    if base is None:
        raise CodetuneError(
            f"{folder}: the llamacpp backend runs GGUF files; this folder is a transformers model "
            "(use generate.backend=hf), or a LoRA over a base that did not come from a GGUF model pack"
        )
    adapter = folder / ADAPTER_GGUF
    weights = folder / "adapter_model.safetensors"
    if not adapter.is_file() or adapter.stat().st_mtime < weights.stat().st_mtime:
        lora_to_gguf(folder, adapter)
    return base, adapter


def parse_model_spec(spec: str) -> tuple[str, str]:
    """`label=path`, or a bare path labelled by its last two parts (`runs/x/final` -> `x-final`)."""
    if "=" in spec and not Path(spec).exists():
        label, path = spec.split("=", 1)
        return label, path
    parts = [p for p in Path(spec).parts if p not in ("/", ".")][-2:]
    return re.sub(r"[^\w.-]+", "-", "-".join(parts)) or "model", spec


def model_prompt_config(model: str, fallback: PromptConfig) -> PromptConfig:
    """The prompt settings a codetune-trained model folder was trained with (else `fallback`)."""
    from codetune.models.loading import prompt_config_of, read_meta

    path = Path(model)
    return prompt_config_of(read_meta(path) if path.is_dir() else {}, fallback)


def extract_code(text: str, prompt: PromptConfig) -> str:
    """The code in a reply: the first fenced block when the model answers in Markdown (chat models,
    or an answer template with a fence), else the text itself."""
    if prompt.style == "chat" or "```" in prompt.answer_template:
        m = _FENCE.search(text)
        if m:
            return m.group(2).rstrip()
    return text


def answer_stops(prompt: PromptConfig) -> tuple[str, ...]:
    """Stops implied by the answer template: a fenced answer ends at its closing fence. Where the same
    text also opens the answer (a Markdown fence), the stop needs the line break after it: a reply that
    writes a sentence before its block would otherwise be cut at "\n```python" and keep no code."""
    before, after = build_answer("\x00", prompt).split("\x00", 1)
    if not after.strip():
        return ()
    return (after + "\n",) if after.strip() in before else (after,)


def description_prompt(description: str, prompt: PromptConfig, backend: Backend) -> str:
    """The prompt for one description, built the way the model was trained (`generate` and the server)."""
    return build_prompt(description, prompt, backend.chat_prompt)


def infill_prompt(
    prefix: str, suffix: str, backend: Backend, who: str = "this model"
) -> tuple[str, tuple[str, ...]]:
    """The model's own fill-in-the-middle prompt for the hole between `prefix` and `suffix`, and the
    stops that end the middle. A model without FIM tokens is a CodetuneError that says so."""
    tokens = backend.fim_tokens()
    if tokens is None:
        raise CodetuneError(
            f"{who} has no fill-in-the-middle tokens (e.g. <|fim_prefix|>, <fim_prefix>); "
            "send the prompt without a suffix, or serve a FIM-trained code model"
        )
    stops = tuple(s for s in (tokens.eot, *tokens.extra_stop) if s)
    return fim_prompt(prefix, suffix, tokens), stops


def generate(
    descriptions: Sequence[str], cfg: Config, model: str | None = None, backend: Backend | None = None
) -> list[list[Completion]]:
    """Description -> code: prompt each description the way the model was trained, decode with
    `cfg.generate`, and return `n` completions per description (code extracted from Markdown)."""
    name = model or cfg.generate.model
    if backend is None:
        backend = load_backend(cfg.generate, name)
    prompt_cfg = model_prompt_config(name, cfg.prompt) if name else cfg.prompt
    prompts = [description_prompt(d, prompt_cfg, backend) for d in descriptions]
    settings = sampling_settings(cfg.generate, answer_stops(prompt_cfg))
    results = backend.generate(prompts, settings)
    return [
        [
            Completion(
                extract_code(c.text, prompt_cfg), c.finish_reason, c.prompt_tokens, c.completion_tokens
            )
            for c in row
        ]
        for row in results
    ]


# --- generation in fixed units, in this process or in worker processes ---------------------------


@dataclass(frozen=True)
class GenerationWorkers:
    """`count` processes on this machine that each load `model` with `generate` (`eval.workers`)."""

    generate: GenerateConfig
    model: str
    count: int = 1


def settings_from(settings: SamplingSettings, offset: int) -> SamplingSettings:
    """The settings for a call whose first prompt is prompt `offset` of the whole list.

    Backends seed sample j of a call's prompt i from `seed + i * n (+ j)`; moving the seed on by
    `offset * n` makes every prompt's samples a function of its place in the whole list, not of how
    the list was split into calls."""
    return replace(settings, seed=settings.seed + offset * settings.n)


def generation_units(count: int, unit_size: int) -> list[range]:
    """Consecutive runs of `unit_size` prompt indices: the same whatever the number of workers."""
    size = max(1, unit_size)
    return [range(start, min(start + size, count)) for start in range(0, count, size)]


def generate_units(
    prompts: Sequence[str],
    settings: SamplingSettings,
    *,
    unit_size: int,
    backend: Backend | None = None,
    workers: GenerationWorkers | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[list[Completion]]:
    """`settings.n` completions per prompt, in prompt order, generated in fixed units of `unit_size`
    prompts, the unit starting at prompt o with `settings_from(settings, o)`.

    With `workers.count` > 1 the units go to that many spawned processes (each loads its own model);
    otherwise they run here on `backend` (loaded from `workers` when None). A unit is computed the
    same way wherever it runs, so the results don't depend on the number of workers. A worker's
    error is raised here. `progress(done, total)` is called as prompts finish."""
    units = generation_units(len(prompts), unit_size)
    if workers is not None and workers.count < 1:
        raise CodetuneError(f"{workers.count} generation workers: need at least 1 (eval.workers)")
    if workers is not None and workers.count > 1 and len(units) > 1:
        return _generate_in_workers(prompts, settings, units, workers, progress)
    if backend is None:
        if workers is None:
            raise CodetuneError("generate_units needs a backend or the model to load in workers")
        backend = load_backend(workers.generate, workers.model)
    out: list[list[Completion]] = []
    for unit in units:
        out.extend(backend.generate(prompts[unit.start : unit.stop], settings_from(settings, unit.start)))
        if progress is not None:
            progress(len(out), len(prompts))
    return out


def _generate_in_workers(
    prompts: Sequence[str],
    settings: SamplingSettings,
    units: list[range],
    workers: GenerationWorkers,
    progress: Callable[[int, int], None] | None,
) -> list[list[Completion]]:
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    _release_memory()
    count = min(workers.count, len(units))
    threads = max(1, _cpu_count() // count)
    results: dict[int, list[list[Completion]]] = {}
    done = 0
    # spawn, not fork: the parent may hold threads (torch, the sandbox pool's) and a CUDA context
    pool = ProcessPoolExecutor(count, mp_context=multiprocessing.get_context("spawn"))
    try:
        pending: dict[Future[list[list[Completion]]], range] = {
            pool.submit(
                _worker_generate,
                workers,
                threads,
                list(prompts[u.start : u.stop]),
                settings_from(settings, u.start),
            ): u
            for u in units
        }
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                unit = pending.pop(future)
                results[unit.start] = future.result()  # a worker's exception is raised here
                done += len(unit)
                if progress is not None:
                    progress(done, len(prompts))
    except BrokenProcessPool as e:
        raise CodetuneError(
            f"a generation worker process for {workers.model} died (out of memory?); "
            f"try fewer eval.workers (now {workers.count})"
        ) from e
    finally:  # on an error: drop the units not started, let the running ones end, no process left
        pool.shutdown(wait=True, cancel_futures=True)
    return [row for u in units for row in results[u.start]]


def _release_memory() -> None:
    """Hand back what a dropped model held (its GPU memory is otherwise kept by torch's cache) before
    the workers load theirs."""
    import gc
    import sys

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _cpu_count() -> int:
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1


_worker_backend: Backend | None = None  # a worker process's model, loaded by its first unit


def _worker_generate(
    workers: GenerationWorkers, threads: int, prompts: list[str], settings: SamplingSettings
) -> list[list[Completion]]:
    """One unit in a worker process (loading the model there first, with `threads` CPU threads)."""
    global _worker_backend
    if _worker_backend is None:
        g = workers.generate
        if g.backend == "hf":
            import torch

            torch.set_num_threads(threads)
        _worker_backend = load_backend(g if g.threads else replace(g, threads=threads), workers.model)
    return _worker_backend.generate(prompts, settings)
