"""Fill-in-the-middle token conventions of the common code models, detected from a vocabulary."""

from __future__ import annotations

from collections.abc import Container

from codetune.models.backends.base import FimTokens

# Order matters only for models that carry several conventions (none known).
FIM_CONVENTIONS: dict[str, FimTokens] = {
    "qwen2.5-coder": FimTokens(
        "<|fim_prefix|>",
        "<|fim_suffix|>",
        "<|fim_middle|>",
        "<|endoftext|>",
        ("<|fim_pad|>", "<|file_sep|>", "<|repo_name|>"),
    ),
    "starcoder": FimTokens("<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<|endoftext|>", ("<file_sep>",)),
    "deepseek-coder": FimTokens("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>", "<|EOT|>"),
    "codellama": FimTokens("▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>"),
}


def detect_fim_tokens(vocab: Container[str]) -> FimTokens | None:
    """The FIM convention whose prefix/suffix/middle tokens are all in `vocab`, else None."""
    for tokens in FIM_CONVENTIONS.values():
        if tokens.prefix in vocab and tokens.suffix in vocab and tokens.middle in vocab:
            return tokens
    return None


def fim_prompt(prefix: str, suffix: str, tokens: FimTokens, mode: str = "psm") -> str:
    """The model's own infilling prompt: PSM = prefix, suffix, then middle; SPM puts the suffix first."""
    if mode == "spm":
        return f"{tokens.prefix}{tokens.suffix}{suffix}{tokens.middle}{prefix}"
    return f"{tokens.prefix}{prefix}{tokens.suffix}{suffix}{tokens.middle}"
