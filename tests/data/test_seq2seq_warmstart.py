"""Seq2seq from an encoder-only model (CodeBERT-style RoBERTa) via EncoderDecoderModel, and T5."""

import math
from pathlib import Path

import pytest
import torch

from codetune.data.prepare import prepare
from codetune.errors import CodetuneError
from codetune.manifest import read_jsonl
from codetune.models.loading import load_for_inference, load_pretrained, read_meta
from codetune.models.tiny import train_tokenizer
from codetune.training.loop import train
from tests.conftest import make_pairs, tiny_config


def save_tiny_roberta(folder: Path) -> None:
    """A random RobertaModel (encoder only, no LM head) with a byte-level BPE tokenizer whose special
    tokens follow RoBERTa's (<s> = cls/bos, </s> = sep/eos, <pad>, <unk>, <mask>)."""
    from transformers import PreTrainedTokenizerFast, RobertaConfig, RobertaModel

    texts = [r["docstring"] for r in make_pairs()] + [r["code"] for r in make_pairs()]
    base = train_tokenizer(texts, 300)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=base.backend_tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        cls_token="<s>",
        sep_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    tok.add_special_tokens({"mask_token": "<mask>"})
    config = RobertaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    RobertaModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)


@pytest.mark.filterwarnings("ignore:Version v4.12.0:FutureWarning")
def test_encoder_decoder_warm_started_from_roberta_trains_a_step(tmp_path: Path, pairs_file: Path) -> None:
    encoder = tmp_path / "tiny-roberta"
    save_tiny_roberta(encoder)
    cfg = tiny_config(
        tmp_path,
        pairs_file,
        model={"name": f"encoder-decoder:{encoder}"},
        train={"max_steps": 1, "lr": 1e-2, "eval_every": 0, "save_every": 0},
    )
    prepare(cfg)
    out = train(cfg)
    (row,) = [r for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]
    assert math.isfinite(row["loss"]) and row["loss"] > 0
    assert read_meta(out / "final")["kind"] == "seq2seq"
    base = load_pretrained(str(out / "base"), "seq2seq")
    final = load_pretrained(str(out / "final"), "seq2seq")
    assert type(final).__name__ == "EncoderDecoderModel"
    assert final.config.decoder.is_decoder and final.config.decoder.add_cross_attention
    before, after = dict(base.named_parameters()), dict(final.named_parameters())
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any(k.startswith("encoder.") for k in changed)
    assert any("crossattention" in k for k in changed)
    model, tok, kind, _ = load_for_inference(str(out / "final"))
    ids = tok(["Return the sum of a and b."], return_tensors="pt")
    generated = model.generate(**ids, max_new_tokens=4)
    assert kind == "seq2seq" and generated.shape[0] == 1 and generated[0, 0] == tok.cls_token_id


def test_warm_start_errors_name_the_model(tmp_path: Path, pairs_file: Path) -> None:
    cfg = tiny_config(
        tmp_path, pairs_file, model={"name": "encoder-decoder:/nonexistent/encoder", "kind": "causal"}
    )
    prepare(cfg)
    with pytest.raises(CodetuneError, match="kind 'causal' does not fit"):
        train(cfg)
