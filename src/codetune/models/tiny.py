"""Random-init `tiny` (Llama-style) and `tiny-t5` presets with a BPE tokenizer trained on the spot.

They exist so that every stage runs offline in seconds (tests, smoke runs); they are not useful models.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from codetune.config import TinyModelConfig

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]
TINY_PRESETS = {"tiny": "causal", "tiny-t5": "seq2seq"}


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Any:
    """Train a byte-level BPE tokenizer (lossless round trip of any text) on `texts`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def build_tiny_model(preset: str, tokenizer: Any, tiny: TinyModelConfig, dropout: float | None) -> Any:
    """A random-init model for `preset` ("tiny" or "tiny-t5") sized by `tiny`, seeded by tiny.seed."""
    from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

    p = dropout or 0.0
    config: Any
    with torch.random.fork_rng():
        torch.manual_seed(tiny.seed)
        if preset == "tiny":
            config = LlamaConfig(
                vocab_size=len(tokenizer),
                hidden_size=tiny.hidden_size,
                intermediate_size=tiny.intermediate_size,
                num_hidden_layers=tiny.num_layers,
                num_attention_heads=tiny.num_heads,
                num_key_value_heads=tiny.num_heads,
                max_position_embeddings=tiny.max_position_embeddings,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                tie_word_embeddings=False,
                attention_dropout=p,
            )
            return LlamaForCausalLM(config)
        config = T5Config(  # type: ignore[call-arg]
            vocab_size=len(tokenizer),
            d_model=tiny.hidden_size,
            d_kv=tiny.hidden_size // tiny.num_heads,
            d_ff=tiny.intermediate_size,
            num_layers=tiny.num_layers,
            num_decoder_layers=tiny.num_layers,
            num_heads=tiny.num_heads,
            dropout_rate=p,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=False,
        )
        return T5ForConditionalGeneration(config)
