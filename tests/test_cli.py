import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from codetune.cli import app
from tests.conftest import make_pairs, write_jsonl

runner = CliRunner()


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ([], ["prepare", "train", "evaluate", "report", "generate", "models"]),
        (["prepare"], ["--skip-bad", "--data.output_dir", "--data.split_by", "--data.skip_bad"]),
        (
            ["train"],
            [
                "--resume",
                "--train.lr",
                "--train.length_policy",
                "--train.lora",
                "--train.eval_benchmark",
                "--train.select_by",
                "--model.name",
                "--prompt.template",
            ],
        ),
        (
            ["evaluate"],
            ["--model", "--benchmark", "--eval.models", "--eval.select_from", "--generate.temperature"],
        ),
        (["report"], ["--eval.output_dir", "--eval.baseline"]),
        (
            ["generate"],
            ["--model", "--n", "--temperature", "--max-new-tokens", "--backend", "--generate.stop"],
        ),
        (["models"], ["fetch", "list"]),
    ],
)
def test_help_describes_every_option(command: list[str], expected: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for word in expected:
        assert word in result.output, word


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "codetune.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_user_error_is_one_line_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(make_pairs()[0]) + "\nnot json\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"data:\n  sources:\n    - path: {bad}\n      nl_field: docstring\n      code_field: code\n"
        f"  output_dir: {tmp_path / 'out'}\n"
    )
    result = _cli("prepare", str(cfg), cwd=tmp_path)
    assert result.returncode == 2
    assert "bad.jsonl:2: bad JSON" in result.stderr
    assert "Traceback" not in result.stderr
    ok = _cli(
        "prepare", str(cfg), "--skip-bad", "--data.splits={train: 0.5, valid: 0.0, test: 0.5}", cwd=tmp_path
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["counts"]["bad_records"] == 1


def test_cli_runs_the_stages(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "p.jsonl", make_pairs())
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"data:\n  sources:\n    - {{path: {src}, nl_field: docstring, code_field: code, id_field: uid}}\n"
        f"  output_dir: {tmp_path / 'data'}\n"
        "model:\n  tiny: {vocab_size: 300, hidden_size: 32, num_layers: 1, num_heads: 2, intermediate_size: 64}\n"
        f"train: {{output_dir: {tmp_path / 'train'}, max_steps: 3, batch_size: 4}}\n"
        f"eval: {{output_dir: {tmp_path / 'eval'}, max_examples: 3}}\n"
        "generate: {max_new_tokens: 8}\n"
    )
    for stage in ("prepare", "train", "evaluate"):
        r = _cli(stage, str(cfg), cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    assert (tmp_path / "eval" / "final" / "metrics.json").is_file()
    report = tmp_path / "eval" / "report.html"
    report.unlink()  # evaluate wrote it; `report` writes it again from the folders alone
    r = _cli("report", str(cfg), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(report) and "Largest drops: final vs base" in report.read_text()
    r = _cli(
        "generate",
        "Return the sum of a and b.",
        "--model",
        str(tmp_path / "train" / "final"),
        "--max-new-tokens",
        "8",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("# Return the sum of a and b.\n")


def test_import_api() -> None:
    import codetune
    from codetune import evaluate, generate, prepare, train

    assert all(callable(f) for f in (prepare, train, evaluate, generate))
    assert codetune.generate is generate
