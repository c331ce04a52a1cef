"""`kind: hf` sources: NL/code pairs from a Hugging Face dataset, through the `datasets` library.

`path` is one of:

- a folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk` (read with `load_from_disk`);
- any other local folder of data files, or a hub dataset name such as `openai/openai_humaneval`
  (read with `load_dataset(path, hf_subset, split=hf_split, revision=hf_revision)`; the hub needs network
  access and, for gated datasets, a token from `hf auth login`).

Rows then go through the same field mapping, checks and counting as file sources (sources.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from codetune.config import SourceConfig
from codetune.errors import CodetuneError


@dataclass
class HfSource:
    """An opened dataset split: its rows, their number, a label for messages and its manifest entry."""

    dataset: Any  # datasets.Dataset
    label: str  # e.g. "hf:data/mbpp[train]", for messages and Example.source
    stem: str  # prefix of ids made from the row index when there is no id_field
    info: dict[str, Any]

    @property
    def total(self) -> int:
        return len(self.dataset)

    def rows(self) -> Iterator[tuple[int, dict[str, Any] | str]]:
        """(0-based index, row): the index is the one `dataset[i]` takes."""
        for i, row in enumerate(self.dataset):
            yield i, dict(row)


def _datasets() -> Any:
    try:
        import datasets
    except ImportError as e:
        raise CodetuneError(
            "data.sources[].kind: hf needs the `datasets` package: pip install -e '.[hf]' (make install does)"
        ) from e
    datasets.disable_progress_bars()  # codetune's own progress reports the read
    return datasets


def _is_saved_to_disk(folder: Path) -> bool:
    return (folder / "dataset_dict.json").is_file() or (
        (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file()
    )


def open_hf_source(src: SourceConfig) -> HfSource:
    """Load the split `src.hf_split` of the dataset at `src.path` (see the module docstring)."""
    datasets = _datasets()
    folder = Path(src.path).expanduser()
    split = src.hf_split
    try:
        if folder.is_dir() and _is_saved_to_disk(folder):
            loaded = datasets.load_from_disk(str(folder))
            how = "load_from_disk"
        else:
            loaded = datasets.load_dataset(
                str(folder) if folder.is_dir() else src.path,
                src.hf_subset,
                split=split,
                revision=src.hf_revision,
            )
            how = "load_dataset"
    except CodetuneError:
        raise
    except Exception as e:  # the library raises many types: not found, no network, gated, bad files
        where = "local folder" if folder.is_dir() else "hub dataset (needs network access)"
        raise CodetuneError(
            f"data.sources[].path {src.path!r} ({where}): cannot load it with datasets: "
            f"{type(e).__name__}: {e}. Check the name, data.sources[].hf_subset / hf_split, or use a folder "
            "written by save_to_disk"
        ) from e
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise CodetuneError(
                f"{src.path}: no split {split!r} (data.sources[].hf_split); it has: {', '.join(loaded)}"
            )
        loaded = loaded[split]
    elif (
        how == "load_from_disk"
        and split != "train"
        and loaded.split is not None
        and str(loaded.split) != split
    ):
        raise CodetuneError(
            f"{src.path}: a single saved split ({loaded.split}), not {split!r} (data.sources[].hf_split)"
        )
    missing = [
        f"{role} {name!r}"
        for role, name in (("nl_field", src.nl_field), ("code_field", src.code_field))
        if name not in loaded.column_names
    ]
    if missing:  # a column missing from the schema is missing from every row: say it once
        raise CodetuneError(
            f"{src.path}: no column {', '.join(missing)} (data.sources[]); columns: "
            f"{', '.join(loaded.column_names)}"
        )
    info = {
        "path": src.path,
        "kind": "hf",
        "loader": how,
        "split": split,
        "subset": src.hf_subset,
        "revision": src.hf_revision,
        "fingerprint": getattr(loaded, "_fingerprint", None),
        "datasets_version": datasets.__version__,
    }
    stem = folder.name if folder.is_dir() else src.path.rstrip("/").split("/")[-1]
    return HfSource(loaded, f"hf:{src.path}[{split}]", stem, info)
