"""Translation between programming languages: `codetune translate FILE --to LANG`.

The model is prompted as translation pairs were trained (`format.translation_instruction` inside the
model's prompt template or chat template; a seq2seq model gets the task prefix alone, as
`format.build_example_prompt` gives it). A chat model's reply is opened with a fence in the target
language, as the humaneval-py2js / humaneval-js2py benchmarks do; the code is taken from the fence.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from codetune.config import Config, PromptConfig
from codetune.data.format import build_example_prompt, translation_instruction
from codetune.data.translation import EXTENSIONS
from codetune.errors import CodetuneError
from codetune.generation import answer_stops, load_backend, model_prompt_config, sampling_settings
from codetune.models.backends.base import Backend, Completion, cut_at_stop

_FENCE = re.compile(r"```[ \t]*[\w+#.-]*[^\n]*\n(.*?)(?:\n[ \t]*```|\Z)", re.DOTALL)
FENCE_STOP = "\n```"


def language_of(path: Path) -> str:
    """The language of a source file from its extension."""
    for language, extensions in EXTENSIONS.items():
        if path.suffix.lower() in extensions:
            return language
    known = ", ".join(ext for exts in EXTENSIONS.values() for ext in exts)
    raise CodetuneError(
        f"{path}: cannot tell the language from {path.suffix or 'no extension'!r} ({known}); pass --from"
    )


def translation_prompt(
    code: str, source: str, target: str, prompt: PromptConfig, backend: Backend
) -> tuple[str, tuple[str, ...]]:
    """The prompt that asks `backend`'s model to translate `code`, and the stops that end the reply."""
    kind = str(getattr(backend, "kind", "causal"))
    pair = {"source_language": source, "target_language": target, "source_code": code}
    text = build_example_prompt(
        translation_instruction(code, source, target),
        {"translation": pair},
        kind,
        prompt,
        backend.chat_prompt,
    )
    if prompt.style == "chat":
        return text + f"```{target}\n", (FENCE_STOP,)
    return text, answer_stops(prompt)


def extract_translation(reply: str, opened: bool) -> str:
    """The code in a reply: up to the closing fence when the prompt opened one, else the first fenced
    block, else the whole reply."""
    if opened:
        return cut_at_stop(reply, (FENCE_STOP,))[0].strip("\n") + "\n"
    m = _FENCE.search(reply)
    return (m.group(1) if m else reply).strip("\n") + "\n"


def translate(
    path: Path, target: str, cfg: Config, source: str | None = None, backend: Backend | None = None
) -> list[Completion]:
    """`cfg.generate.n` translations of the code in `path` into `target` with `cfg.generate.model`."""
    if target not in EXTENSIONS:
        raise CodetuneError(f"--to {target!r}: translation knows {', '.join(EXTENSIONS)}")
    if not path.is_file():
        raise CodetuneError(f"{path}: no such file to translate")
    source = source or language_of(path)
    if source not in EXTENSIONS:
        raise CodetuneError(f"--from {source!r}: translation knows {', '.join(EXTENSIONS)}")
    if source == target:
        raise CodetuneError(f"{path} is already {target}; pick another --to")
    try:
        code = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise CodetuneError(f"{path}: not valid UTF-8 (byte {e.start})") from None
    name = cfg.generate.model
    backend = backend or load_backend(cfg.generate, name)
    prompt_cfg = model_prompt_config(name, cfg.prompt) if name else cfg.prompt
    prompt, stops = translation_prompt(code, source, target, prompt_cfg, backend)
    settings = sampling_settings(cfg.generate, stops)
    opened = prompt_cfg.style == "chat"
    return [
        replace(c, text=extract_translation(c.text, opened)) for c in backend.generate([prompt], settings)[0]
    ]
