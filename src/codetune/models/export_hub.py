"""Upload exported models to a Hugging Face hub repository through `huggingface_hub`.

The token is huggingface_hub's own (`hf auth login`, or HF_TOKEN); HF_ENDPOINT points it at another hub.
"""

from __future__ import annotations

from pathlib import Path

from codetune import progress
from codetune.errors import CodetuneError


def push(repo: str, folders: list[Path], files: list[Path], private: bool = False) -> str:
    """Create `repo` (a model repository; kept if it exists) and upload each folder's contents and each
    file to its root, one commit each. Returns the repository's URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalTokenNotFoundError

    api = HfApi()
    unreachable: tuple[type[BaseException], ...] = (*_transport_errors(), OSError)
    try:
        with progress.task(
            f"export: upload to {repo}", total=len(folders) + len(files), unit="uploads"
        ) as bar:
            url = api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
            for folder in folders:
                api.upload_folder(
                    repo_id=repo,
                    folder_path=folder,
                    repo_type="model",
                    commit_message=f"codetune export: {folder.name}",
                )
                bar.advance()
            for file in files:
                api.upload_file(
                    path_or_fileobj=file, path_in_repo=file.name, repo_id=repo, repo_type="model",
                    commit_message=f"codetune export: {file.name}",
                )  # fmt: skip
                bar.advance()
    except LocalTokenNotFoundError as e:
        raise CodetuneError(f"--push-to-hub {repo}: no hub token; run `hf auth login` or set HF_TOKEN") from e
    except HFValidationError as e:
        raise CodetuneError(f"--push-to-hub {repo}: not a repository name (owner/name): {e}") from e
    except HfHubHTTPError as e:
        raise CodetuneError(f"--push-to-hub {repo}: the hub refused: {str(e).splitlines()[0]}") from e
    except unreachable as e:
        raise CodetuneError(
            f"--push-to-hub {repo}: cannot reach the hub ({e}); no hub access from here?"
        ) from e
    return str(url)


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The HTTP client's connection errors: huggingface_hub 2.x uses httpx2, 1.x httpx."""
    import importlib

    errors: list[type[BaseException]] = []
    for name in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(name).TransportError)
        except ImportError:
            continue
    return tuple(errors)
