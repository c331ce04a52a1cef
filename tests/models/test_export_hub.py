"""`codetune export --push-to-hub`: through huggingface_hub's client, against stand-ins (no network):
its HfApi methods recorded, and a hub address where nothing listens."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from codetune.config import Config
from codetune.errors import CodetuneError
from codetune.models.export import export


@pytest.fixture
def hub_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    """HfApi's create_repo/upload_folder/upload_file replaced by recorders (what was uploaded, where)."""
    from huggingface_hub import HfApi

    calls: list[tuple[str, dict[str, Any]]] = []

    def create_repo(self: Any, repo_id: str, **kw: Any) -> str:
        calls.append(("create_repo", {"repo_id": repo_id, **kw}))
        return f"https://hub.example/{repo_id}"

    def upload_folder(self: Any, **kw: Any) -> None:
        files = sorted(p.name for p in Path(kw["folder_path"]).iterdir())
        calls.append(("upload_folder", {**kw, "files": files}))

    def upload_file(self: Any, **kw: Any) -> None:
        calls.append(("upload_file", kw))

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(HfApi, "upload_file", upload_file)
    return calls


def test_push_uploads_the_merged_model(
    trained_run: Config, tmp_path: Path, hub_calls: list[tuple[str, dict[str, Any]]]
) -> None:
    final = Path(trained_run.train.output_dir) / "final"
    written = export(final, merged=tmp_path / "merged", push_to_hub="me/tiny-coder", private=True)
    assert written == [tmp_path / "merged"]
    assert [name for name, _ in hub_calls] == ["create_repo", "upload_folder"]
    create, upload = hub_calls[0][1], hub_calls[1][1]
    assert create == {"repo_id": "me/tiny-coder", "repo_type": "model", "private": True, "exist_ok": True}
    assert upload["repo_id"] == "me/tiny-coder" and Path(upload["folder_path"]) == tmp_path / "merged"
    assert {"config.json", "model.safetensors", "codetune.json", "README.md", "tokenizer.json"} <= set(
        upload["files"]
    )


def test_push_alone_uploads_the_folder_as_it_is(
    tmp_path: Path, hub_calls: list[tuple[str, dict[str, Any]]]
) -> None:
    (tmp_path / "adapter_config.json").write_text("{}")
    assert export(tmp_path, push_to_hub="me/adapter") == []
    assert hub_calls[1][0] == "upload_folder" and hub_calls[1][1]["files"] == ["adapter_config.json"]


def test_push_without_a_reachable_hub_is_one_clear_error(tmp_path: Path) -> None:
    """The real client, pointed at a local port where nothing listens (a hub without access)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    (tmp_path / "config.json").write_text("{}")
    env = {"HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_TOKEN": "hf_test", "HF_HUB_DISABLE_TELEMETRY": "1"}
    code = (
        "import sys; from pathlib import Path; from codetune.models.export import export; "
        f"export(Path({str(tmp_path)!r}), push_to_hub='me/x')"
    )
    import os

    done = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    assert "CodetuneError: --push-to-hub me/x: cannot reach the hub" in done.stderr


def test_push_without_a_token_says_how_to_log_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import LocalTokenNotFoundError

    def create_repo(self: Any, repo_id: str, **kw: Any) -> None:
        raise LocalTokenNotFoundError("Token is required")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    with pytest.raises(CodetuneError, match="hf auth login"):
        export(tmp_path, push_to_hub="me/x")


def test_export_cli_needs_something_to_do(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from codetune.cli import app

    result = CliRunner().invoke(app, ["export", str(tmp_path)])
    assert isinstance(result.exception, CodetuneError) and "nothing to do" in str(result.exception)
    result = CliRunner().invoke(app, ["export", str(tmp_path / "missing"), "--merged", str(tmp_path / "m")])
    assert isinstance(result.exception, CodetuneError) and "no such model folder" in str(result.exception)
    with pytest.raises(CodetuneError, match="ending in .gguf"):
        export(tmp_path, gguf_out=tmp_path / "model")
