"""Pure formatting: prompt templates, label masking and the length audit.

Training and generation both build prompts here, so a model is always prompted the way it was trained.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from codetune.config import PromptConfig
from codetune.errors import CodetuneError

IGNORE_INDEX = -100
ChatRenderer = Callable[[list[dict[str, str]]], str]


def chat_renderer(tokenizer: Any) -> ChatRenderer | None:
    """The tokenizer's chat template as a renderer for `build_prompt`, or None when it has none."""
    if not getattr(tokenizer, "chat_template", None):
        return None

    def render(messages: list[dict[str, str]]) -> str:
        return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))

    return render


def build_prompt(nl: str, prompt: PromptConfig, render_chat: ChatRenderer | None = None) -> str:
    """The text the model sees before its answer."""
    if prompt.style == "chat":
        if render_chat is None:
            raise CodetuneError("prompt.style is 'chat' but the model's tokenizer has no chat template")
        messages = []
        if prompt.system:
            messages.append({"role": "system", "content": prompt.system})
        messages.append({"role": "user", "content": prompt.template.format(nl=nl)})
        return render_chat(messages)
    try:
        return prompt.template.format(nl=nl)
    except (KeyError, IndexError) as e:
        raise CodetuneError(f"prompt.template: unknown placeholder {e}; use {{nl}}") from e


# Translation, (source language, code) -> target language: causal models get an instruction that the
# prompt template (or chat template) wraps like any description; seq2seq models get a T5-style task prefix.
LANGUAGE_NAMES = {"python": "Python", "javascript": "JavaScript", "typescript": "TypeScript", "java": "Java"}
TRANSLATION_TEMPLATES = {
    "causal": "Translate this {source} code to {target}, keeping the function names.\n```{source_tag}\n{code}\n```",
    "seq2seq": "translate {source} to {target}: {code}",
}


def translation_instruction(code: str, source: str, target: str, kind: str = "causal") -> str:
    """The description of a translation: `code` in language `source` to rewrite in `target`."""
    if kind not in TRANSLATION_TEMPLATES:
        raise CodetuneError(f"model.kind {kind!r}: translation prompts exist for causal and seq2seq")
    names = {lang: LANGUAGE_NAMES.get(lang, lang) for lang in (source, target)}
    return TRANSLATION_TEMPLATES[kind].format(
        source=names[source], target=names[target], source_tag=source, code=code.strip("\n")
    )


def build_example_prompt(
    nl: str, meta: dict[str, Any], kind: str, prompt: PromptConfig, render_chat: ChatRenderer | None = None
) -> str:
    """The prompt of a prepared example: a translation pair (`meta.translation`) prompts a seq2seq model
    with the task prefix and the source code alone; everything else is `build_prompt(nl)`."""
    pair = meta.get("translation")
    if pair is not None and kind == "seq2seq":
        return translation_instruction(
            pair["source_code"], pair["source_language"], pair["target_language"], "seq2seq"
        )
    return build_prompt(nl, prompt, render_chat)


def build_answer(code: str, prompt: PromptConfig) -> str:
    """The text the model is trained to produce (end-of-sequence is added at tokenisation)."""
    return prompt.answer_template.format(code=code)


def encode_prompt(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a prompt, with the model's usual special tokens but never a doubled BOS
    (a chat template that already starts with BOS, plus add_special_tokens, would give two)."""
    ids: list[int] = tokenizer(text, add_special_tokens=True)["input_ids"]
    bos = tokenizer.bos_token_id
    if bos is not None and len(ids) >= 2 and ids[0] == bos and ids[1] == bos:
        ids = ids[1:]
    return ids


@dataclass
class Encoded:
    """One tokenised training example. Causal: `input_ids` = prompt + answer and `labels` mask the
    prompt with IGNORE_INDEX. Seq2seq: `input_ids` = source, `labels` = target."""

    id: str
    input_ids: list[int]
    labels: list[int]


def encode_causal(ex_id: str, prompt: str, answer: str, tokenizer: Any) -> Encoded:
    p = encode_prompt(tokenizer, prompt)
    a = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return Encoded(ex_id, p + a, [IGNORE_INDEX] * len(p) + a)


def encode_seq2seq(ex_id: str, prompt: str, answer: str, tokenizer: Any) -> Encoded:
    src = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    tgt = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return Encoded(ex_id, src, tgt)


@dataclass
class LengthAudit:
    """What the length limit does to a dataset: nothing is cut or dropped without being counted here."""

    max_length: int
    max_target_length: int | None
    policy: str
    total: int = 0
    over_limit: int = 0
    tokens_over: int = 0  # tokens beyond the limit, summed over the over-long examples
    dropped: int = 0
    truncated: int = 0
    longest: int = 0
    over_ids: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = dict(vars(self))
        d["over_ids"] = self.over_ids[:100]
        return d


def audit_lengths(
    items: Sequence[Encoded], kind: str, max_length: int, max_target_length: int, policy: str
) -> tuple[list[Encoded], LengthAudit]:
    """Apply the length limit with an explicit policy ("drop" or "truncate") and count what it costs.

    Causal: prompt + answer must fit in max_length; truncation cuts the answer's tail and keeps the
    prompt (an example whose prompt alone is too long is dropped even under "truncate").
    Seq2seq: source ≤ max_length and target ≤ max_target_length.
    """
    if policy not in ("drop", "truncate"):
        raise CodetuneError(f"train.length_policy must be 'drop' or 'truncate', got {policy!r}")
    audit = LengthAudit(max_length, max_target_length if kind == "seq2seq" else None, policy)
    kept: list[Encoded] = []
    for e in items:
        audit.total += 1
        if kind == "seq2seq":
            over = max(0, len(e.input_ids) - max_length) + max(0, len(e.labels) - max_target_length)
            audit.longest = max(audit.longest, len(e.input_ids), len(e.labels))
        else:
            over = max(0, len(e.input_ids) - max_length)
            audit.longest = max(audit.longest, len(e.input_ids))
        if over == 0:
            kept.append(e)
            continue
        audit.over_limit += 1
        audit.tokens_over += over
        audit.over_ids.append(e.id)
        if policy == "truncate":
            cut = _truncate(e, kind, max_length, max_target_length)
            if cut is not None:
                audit.truncated += 1
                kept.append(cut)
                continue
        audit.dropped += 1
    return kept, audit


def _truncate(e: Encoded, kind: str, max_length: int, max_target_length: int) -> Encoded | None:
    if kind == "seq2seq":
        return Encoded(e.id, e.input_ids[:max_length], e.labels[:max_target_length])
    n_prompt = sum(1 for label in e.labels if label == IGNORE_INDEX)
    if n_prompt >= max_length:
        return None
    return Encoded(e.id, e.input_ids[:max_length], e.labels[:max_length])
