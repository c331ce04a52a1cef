"""Merge a tuned model folder (LoRA adapter, checkpoint or full model) into one plain transformers folder.

The result loads with `AutoModelForCausalLM.from_pretrained(folder)` and `AutoTokenizer.from_pretrained`
alone: LoRA is folded into the base weights by PEFT's `merge_and_unload`, the tokenizer is saved beside
them, and the prompt the model was trained with travels with it three ways: `codetune.json` (codetune
reads it), the tokenizer's chat template (a plain-style prompt becomes one when the tokenizer has none),
and README.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from codetune import progress
from codetune.config import PromptConfig
from codetune.errors import CodetuneError
from codetune.manifest import atomic_folder
from codetune.models.loading import load_for_inference, prompt_config_of, write_meta

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def merge_model(folder: Path, out: Path, dtype: str = "float32") -> Path:
    """Write `out`: `folder`'s model with any LoRA merged in, saved in `dtype`, with its tokenizer,
    prompt and a model card. Merging is done in fp32 whatever `dtype` is. Returns `out`."""
    if dtype not in DTYPES:
        raise CodetuneError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    if not folder.is_dir():
        raise CodetuneError(
            f"{folder}: no such model folder (a train run's final/ or best/, or a checkpoint)"
        )
    if out.resolve() == folder.resolve():
        raise CodetuneError(f"{out}: the merged model must go to a new folder, not over {folder}")
    with progress.task(f"export: merge {folder} -> {out}", total=2, unit="steps") as bar:
        model, tok, kind, meta = load_for_inference(str(folder))
        bar.advance(step="loaded, LoRA merged")
        # a model codetune didn't train (no codetune.json) is prompted through its own chat template if any
        fallback = (
            PromptConfig(style="chat", template="{nl}")
            if getattr(tok, "chat_template", None)
            else PromptConfig()
        )
        prompt = prompt_config_of(meta, fallback)
        if kind == "causal" and not getattr(tok, "chat_template", None) and prompt.style == "plain":
            tok.chat_template = plain_chat_template(prompt)
        with atomic_folder(out) as tmp:
            model.to(DTYPES[dtype]).save_pretrained(str(tmp))
            tok.save_pretrained(str(tmp))
            write_meta(
                tmp,
                format="full",
                kind=kind,
                base_model="",
                prompt=_prompt_dict(prompt),
                lora=None,
                merged_from={
                    "folder": str(folder),
                    "format": meta.get("format", "full"),
                    "base": meta.get("base_model"),
                },
            )
            (tmp / "README.md").write_text(model_card(out.name, kind, prompt, meta), encoding="utf-8")
        bar.advance(step="saved")
    return out


def plain_chat_template(prompt: PromptConfig) -> str:
    """A chat template that renders the last user message into the plain prompt template, so that
    `tokenizer.apply_chat_template(..., add_generation_prompt=True)` gives what training saw."""
    before, sep, after = prompt.template.partition("{nl}")
    if not sep:
        raise CodetuneError(f"prompt.template {prompt.template!r} has no {{nl}} placeholder")
    # str.format semantics: {{ and }} are literal braces; no other placeholder is allowed
    before, after = before.replace("{{", "{").replace("}}", "}"), after.replace("{{", "{").replace("}}", "}")
    return (
        "{%- for message in messages if message['role'] == 'user' %}{%- if loop.last %}"
        f"{{{{ {_jinja_str(before)} + message['content'] + {_jinja_str(after)} }}}}"
        "{%- endif %}{%- endfor %}"
    )


def _jinja_str(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def _prompt_dict(prompt: PromptConfig) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(prompt)


def model_card(name: str, kind: str, prompt: PromptConfig, meta: dict[str, Any]) -> str:
    """A short README.md: what the model is and how to prompt it (the hub shows this page)."""
    base = meta.get("base_model") or "(full fine-tune)"
    how = (
        "the tokenizer's chat template, with the user message"
        if prompt.style == "chat"
        else "this text (also the tokenizer's chat template when the base had none)"
    )
    system = f"\nSystem message: `{prompt.system}`\n" if prompt.system else ""
    return (
        f"---\nlibrary_name: transformers\ntags: [codetune, code]\n---\n\n# {name}\n\n"
        f"A {kind} model fine-tuned with codetune (trained as `{meta.get('format', 'full')}` on "
        f"`{base}`), merged into plain weights.\n\n## Prompt\n\nPrompted with {how}; `{{nl}}` is the "
        f"description of the code wanted:\n\n```\n{prompt.template}\n```\n{system}\n"
        "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        f'tok = AutoTokenizer.from_pretrained("{name}")\nmodel = AutoModelForCausalLM.from_pretrained("{name}")\n```\n'
    )
