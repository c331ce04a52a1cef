import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from codetune.data.prepare import prepare
from codetune.errors import CodetuneError
from codetune.manifest import read_jsonl
from codetune.models.loading import load_for_inference, read_meta
from codetune.training.checkpoint import list_checkpoints
from codetune.training.loop import train
from tests.conftest import tiny_config


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    model, _, _, _ = load_for_inference(str(folder))
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def test_training_lowers_loss_and_changes_every_parameter(tmp_path: Path, pairs_file: Path) -> None:
    cfg = tiny_config(tmp_path, pairs_file, train={"max_steps": 12, "lr": 1e-2})
    prepare(cfg)
    out = train(cfg)
    losses = [r["loss"] for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3
    before, after = _weights(out / "base"), _weights(out / "final")
    assert before.keys() == after.keys()
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert unchanged == []
    valid = [r["valid_loss"] for r in read_jsonl(out / "metrics.jsonl") if "valid_loss" in r]
    assert len(valid) == 4  # steps 3, 6, 9, 12
    assert (out / "best" / "codetune.json").is_file()
    assert json.loads((out / "manifest.json").read_text())["summary"]["steps"] == 12
    assert read_meta(out / "final")["prompt"]["template"] == cfg.prompt.template


class _Interrupt(Exception):
    pass


def _interrupt_at(step_to_stop: int):
    def on_step(step: int, loss: float) -> None:
        if step == step_to_stop:
            raise _Interrupt

    return on_step


@pytest.mark.parametrize("lora", [False, True])
def test_resume_matches_an_uninterrupted_run(tmp_path: Path, pairs_file: Path, lora: bool) -> None:
    common = {
        "max_steps": 6,
        "save_every": 3,
        "grad_accum": 2,
        "lr": 5e-3,
        "warmup_ratio": 0.2,
        "lora": {"enabled": lora, "r": 4, "alpha": 8, "dropout": 0.1},
    }
    model = {"dropout": 0.1}  # dropout makes the RNG state matter
    full = tiny_config(
        tmp_path / "a", pairs_file, train={**common, "output_dir": str(tmp_path / "a" / "train")}, model=model
    )
    full.model.tiny.vocab_size = 300
    prepare(full)
    train(full)

    cut = tiny_config(
        tmp_path / "b", pairs_file, train={**common, "output_dir": str(tmp_path / "b" / "train")}, model=model
    )
    cut.data.output_dir = full.data.output_dir
    with pytest.raises(_Interrupt):
        train(cut, on_step=_interrupt_at(4))  # dies after step 4; the last checkpoint is step 3
    assert [p.name for p in list_checkpoints(Path(cut.train.output_dir))] == ["step-000003"]
    with pytest.raises(CodetuneError, match="resume"):
        train(cut)  # refusing to overwrite is the default
    cut.train.resume = True
    train(cut)

    def final_loss(cfg) -> float:
        return [r["loss"] for r in read_jsonl(Path(cfg.train.output_dir) / "metrics.jsonl") if "loss" in r][
            -1
        ]

    assert abs(final_loss(full) - final_loss(cut)) < 1e-6
    steps = [r["step"] for r in read_jsonl(Path(cut.train.output_dir) / "metrics.jsonl") if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]
    a = load_file(str(Path(full.train.output_dir) / "checkpoints" / "step-000006" / "trainable.safetensors"))
    b = load_file(str(Path(cut.train.output_dir) / "checkpoints" / "step-000006" / "trainable.safetensors"))
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6


def test_lora_trains_only_adapters_and_exports_an_adapter(tmp_path: Path, pairs_file: Path) -> None:
    cfg = tiny_config(tmp_path, pairs_file, train={"lora": {"enabled": True, "r": 4, "alpha": 8}, "lr": 1e-2})
    prepare(cfg)
    out = train(cfg)
    trainable = load_file(str(list_checkpoints(out)[-1] / "trainable.safetensors"))
    assert trainable and all("lora_" in k for k in trainable)
    assert (out / "final" / "adapter_config.json").is_file()
    assert read_meta(out / "final")["format"] == "lora"
    before, after = _weights(out / "base"), _weights(out / "final")  # final loads merged
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all(("proj" in k) for k in changed)


def test_seq2seq_tiny_t5_trains(tmp_path: Path, pairs_file: Path) -> None:
    cfg = tiny_config(tmp_path, pairs_file, model={"name": "tiny-t5"}, train={"max_steps": 8, "lr": 1e-2})
    cfg.model.tiny.vocab_size = 300
    prepare(cfg)
    out = train(cfg)
    losses = [r["loss"] for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]
    assert losses[-1] < losses[0]
    assert read_meta(out / "final")["kind"] == "seq2seq"


def test_length_audit_is_reported_before_training(tmp_path: Path, pairs_file: Path) -> None:
    cfg = tiny_config(tmp_path, pairs_file, train={"max_length": 72, "max_steps": 1})
    prepare(cfg)
    out = train(cfg)
    audit = json.loads((out / "length_audit.json").read_text())["train"]
    assert audit["over_limit"] > 0 and audit["dropped"] == audit["over_limit"] and audit["policy"] == "drop"
    with pytest.raises(CodetuneError, match="max_length"):
        cfg2 = tiny_config(tmp_path / "x", pairs_file, train={"max_length": 3, "max_steps": 1})
        cfg2.data.output_dir = cfg.data.output_dir
        train(cfg2)


def test_loss_on_label_positions_only_equals_the_full_computation(trained_run) -> None:
    from codetune.training.loop import collate, encode_examples, read_split, token_loss_sum

    model, tok, kind, _ = load_for_inference(str(Path(trained_run.train.output_dir) / "final"))
    items = encode_examples(
        read_split(Path(trained_run.data.output_dir), "train")[:5], trained_run, tok, kind
    )
    batch = collate(items, tok.pad_token_id, kind)
    loss, n = token_loss_sum(model, batch, kind)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    target = batch["labels"][:, 1:]
    full = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=-100, reduction="sum"
    )
    assert n == int((target != -100).sum()) and n > 0
    assert loss.item() == pytest.approx(full.item(), rel=1e-5)
