"""`prepare` with an output folder it cannot create or write: one line naming the key and the path."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from codetune.data.prepare import prepare
from codetune.errors import CodetuneError
from tests.conftest import make_pairs, tiny_config, write_jsonl


def _unwritable(tmp_path: Path) -> Path:
    """A folder nobody may create: under sysfs for root (which file modes don't stop), else under a
    read-only folder."""
    if os.geteuid() == 0:
        if not Path("/sys/kernel").is_dir():
            pytest.skip("running as root without sysfs: no folder here refuses root")
        return Path("/sys/codetune-test-output")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    return locked / "out"


@pytest.mark.parametrize("where", ["under_a_file", "unwritable"])
def test_prepare_into_an_impossible_output_dir_is_one_clear_error(tmp_path: Path, where: str) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    out = blocker / "data" if where == "under_a_file" else _unwritable(tmp_path)
    cfg = tiny_config(
        tmp_path, write_jsonl(tmp_path / "pairs.jsonl", make_pairs()), data={"output_dir": str(out)}
    )
    with pytest.raises(CodetuneError) as e:
        prepare(cfg)
    message = str(e.value)
    assert message.startswith("data.output_dir: cannot create or write the folder") and str(out) in message
    assert "\n" not in message


def test_the_cli_says_it_in_one_line(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "pairs.jsonl", make_pairs())
    config = tmp_path / "c.yaml"
    config.write_text(
        f"data:\n  sources:\n    - path: {source}\n      nl_field: docstring\n  output_dir: {tmp_path / 'a-file' / 'out'}\n"
    )
    (tmp_path / "a-file").write_text("")
    result = subprocess.run(
        [sys.executable, "-m", "codetune.cli", "prepare", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "data.output_dir" in lines[0] and str(tmp_path / "a-file" / "out") in lines[0]


@pytest.mark.parametrize(
    ("section", "stage"),
    [("train", "codetune.training.loop:train"), ("eval", "codetune.eval.evaluate:evaluate")],
)
def test_train_and_evaluate_say_the_same_before_they_read_anything(
    tmp_path: Path, section: str, stage: str
) -> None:
    import importlib

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out = blocker / section
    cfg = tiny_config(
        tmp_path, write_jsonl(tmp_path / "pairs.jsonl", make_pairs()), **{section: {"output_dir": str(out)}}
    )
    module, _, name = stage.partition(":")
    with pytest.raises(
        CodetuneError,
        match=rf"^{section}\.output_dir: cannot create or write the folder {re.escape(str(out))} ",
    ):
        getattr(importlib.import_module(module), name)(cfg)  # no prepared data exists: that would fail later
