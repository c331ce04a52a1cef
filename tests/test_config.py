import dataclasses
from pathlib import Path

import pytest

from codetune.config import (
    FIELD_HELP,
    Config,
    ServeConfig,
    config_keys,
    describe_sections,
    load_config,
    parse_overrides,
)
from codetune.errors import CodetuneError


def test_overrides_are_nested_and_typed() -> None:
    assert parse_overrides(["--train.lr=1e-4", "--train.lora.r", "16", "--data.skip_bad=true"]) == {
        "train": {"lr": 1e-4, "lora": {"r": 16}},
        "data": {"skip_bad": True},
    }


def test_yaml_then_overrides_precedence(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 0.1\n  batch_size: 3\nmodel:\n  name: tiny-t5\n")
    cfg = load_config(path, ["--train.lr=0.5"])
    assert cfg.train.lr == 0.5 and cfg.train.batch_size == 3 and cfg.model.name == "tiny-t5"
    assert cfg.train.grad_accum == Config().train.grad_accum  # default kept


def test_unknown_key_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lrr: 0.1\n")
    with pytest.raises(CodetuneError, match=r"c.yaml.*train.*lrr"):
        load_config(path)


def test_wrong_type_and_literal_are_rejected() -> None:
    with pytest.raises(CodetuneError, match="train.batch_size: expected int"):
        load_config(None, ["--train.batch_size=big"])
    with pytest.raises(CodetuneError, match="length_policy"):
        load_config(None, ["--train.length_policy=chop"])


def test_override_without_section_is_an_error() -> None:
    with pytest.raises(CodetuneError, match="section"):
        parse_overrides(["--lr=1"])


def test_shipped_configs_load() -> None:
    for path in Path("configs").glob("*.yaml"):
        load_config(path)


def test_every_key_of_every_section_has_help() -> None:
    """Walks every dataclass field of every section, nested ones included (data.near_dup.ngram,
    data.sources.path): each carries its help, which `--help` shows."""
    keys = dict(config_keys())
    sections = {f.name for f in dataclasses.fields(Config)}
    assert {key.split(".")[0] for key in keys} == sections
    missing = [key for key, f in keys.items() if len(str(f.metadata.get("help", "")).strip()) < 8]
    assert missing == []
    assert len(keys) >= 157  # grows as keys are added; a key without help fails above
    assert {key: f.metadata["help"] for key, f in keys.items()} == FIELD_HELP
    serve_help = describe_sections("serve")
    assert all(f"--serve.{f.name}=" in serve_help for f in dataclasses.fields(ServeConfig))
    assert "refused with 413" in serve_help  # the help text itself, read from the field
