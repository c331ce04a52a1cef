import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from codetune.config import (
    FIELD_HELP,
    Config,
    ServeConfig,
    config_keys,
    describe_sections,
    load_config,
    parse_overrides,
    save_config,
)
from codetune.errors import CodetuneError
from codetune.models.pack import PACKS


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


ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "configs").glob("*.yaml"))


def _assert_holds(raw: Any, loaded: Any, where: str) -> None:
    """Every value the YAML sets is the value the loaded config holds."""
    if isinstance(raw, dict):
        for key, value in raw.items():
            _assert_holds(
                value,
                getattr(loaded, key) if dataclasses.is_dataclass(loaded) else loaded[key],
                f"{where}.{key}",
            )
    elif isinstance(raw, list) and raw and isinstance(raw[0], dict):
        assert len(raw) == len(loaded), where
        for i, (r, item) in enumerate(zip(raw, loaded, strict=True)):
            _assert_holds(r, item, f"{where}[{i}]")
    else:
        assert loaded == raw, f"{where}: the file says {raw!r}, the loaded config holds {loaded!r}"


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_configs_load(path: Path, tmp_path: Path) -> None:
    """Each recipe in configs/ loads as written, survives a save and reload, and names inputs that exist:
    its file sources are in the repository or written by a recipe, its model is a preset or a model pack."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    cfg = load_config(path)
    _assert_holds(raw, cfg, path.name)
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == cfg
    recipes = "\n".join(
        p.read_text(encoding="utf-8") for p in [ROOT / "Makefile", *(ROOT / "recipes").glob("*.py")]
    )
    for src in cfg.data.sources:  # shipped, or written by a recipe (make dataframebench: recipes/*.py)
        if src.kind == "file":
            assert (ROOT / src.path).is_file() or src.path in recipes, (
                f"{path.name}: nothing makes {src.path}"
            )
    assert cfg.model.name in ("tiny", "tiny-t5") or cfg.model.name in PACKS, cfg.model.name


def test_the_shipped_configs_are_found() -> None:
    assert {p.name for p in SHIPPED} >= {
        "quickstart.yaml",
        "smoke-tiny.yaml",
        "dataframebench-qwen0.5b-lora.yaml",
    }


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


@pytest.mark.parametrize(
    ("overrides", "keys"),
    [
        (["--train.select_by=pass@1"], ["train.select_by=pass@1", "train.eval_benchmark"]),
        (["--train.eval_tasks=5"], ["train.eval_tasks", "train.eval_benchmark"]),
        (["--train.lora.quantize=4bit"], ["train.lora.quantize=4bit", "train.lora.enabled=true"]),
        (["--train.eval_backend=llamacpp"], ["train.eval_backend=llamacpp", "train.lora.enabled"]),
        (["--data.split_by=date"], ["data.split_by=date", "data.split_date"]),
        (["--data.split_date=last spring"], ["data.split_date 'last spring' is not an ISO date"]),
        (["--prompt.template=Write {task}"], ["prompt.template", "{nl}", "has task"]),
        (["--generate.n=4"], ["generate.n=4", "generate.temperature"]),
        (["--generate.n=0"], ["generate.n=0"]),
        (["--selftrain.temperature=0"], ["selftrain.n=8", "selftrain.temperature"]),
        (["--selftrain.rounds=0", "--selftrain.max_tasks=0"], ["selftrain.rounds", "selftrain.max_tasks"]),
        (["--eval.workers=0"], ["eval.workers=0"]),
        (["--generate.max_batch=0"], ["generate.max_batch=0"]),
        (["--serve.max_queue=-1"], ["serve.max_queue"]),
    ],
)
def test_rules_across_fields_fail_when_the_config_loads(overrides: list[str], keys: list[str]) -> None:
    with pytest.raises(CodetuneError) as e:
        load_config(None, overrides)
    assert str(e.value).startswith("config + overrides: ")
    assert all(key in str(e.value) for key in keys), str(e.value)


def test_every_broken_rule_is_named_at_once() -> None:
    with pytest.raises(CodetuneError) as e:
        load_config(None, ["--train.select_by=pass@1", "--generate.n=2"])
    assert "train.select_by=pass@1" in str(e.value) and "generate.n=2" in str(e.value)
    ok = load_config(None, ["--train.select_by=pass@1", "--train.eval_benchmark=dataframebench/val"])
    assert ok.train.select_by == "pass@1"


def test_pass_at_1_without_a_benchmark_stops_before_any_model_loads(tmp_path: Path) -> None:
    """`codetune train` with pass@1 selection and no benchmark: the config error, not the missing model
    or data that the stage would have met first."""
    config = tmp_path / "c.yaml"
    config.write_text(
        f"model:\n  name: {tmp_path / 'no-model'}\ntrain:\n  data_dir: {tmp_path / 'no-data'}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "codetune.cli", "train", str(config), "--train.select_by=pass@1",
         f"--train.output_dir={tmp_path / 'out'}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    output = result.stderr
    assert "train.select_by=pass@1 needs train.eval_benchmark" in output
    assert "no-model" not in output and "no-data" not in output and "Traceback" not in output
    assert not (tmp_path / "out").exists()
