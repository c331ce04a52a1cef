"""Experiment tracking for `train`: TensorBoard (on by default) and, when asked, Weights & Biases and MLflow
through their own libraries (`train.report_to: [wandb, mlflow]`; `pip install -e '.[tracking]'`).

metrics.jsonl stays the record of a run; the trackers get the same numbers under the same names
(`train/loss`, `train/lr`, `train/grad_norm`, `train/tokens_per_s`, `valid/loss`, `valid/pass@1`,
`valid/bleu`) at the same steps, plus the resolved config. Their own settings are theirs:

- wandb: `WANDB_MODE=offline` keeps the run in `{output_dir}/wandb` (sync it later with `wandb sync`);
  online it needs `wandb login` (or `WANDB_API_KEY`). Project: `train.tracking_project`.
- mlflow: `train.mlflow_tracking_uri`, else `MLFLOW_TRACKING_URI`, else `{output_dir}/mlruns`, a local
  file store (`mlflow ui --backend-store-uri file://...`). Experiment: `train.tracking_project`. MLflow 3
  keeps the file store in maintenance mode and refuses it unless MLFLOW_ALLOW_FILE_STORE=true, which is
  set (unless already set) for a file store URI; a server or database URI works as MLflow documents.

A resumed run continues the same wandb / MLflow run: their ids are kept in `{output_dir}/tracking.json`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console

from codetune.config import Config, config_to_dict
from codetune.errors import CodetuneError

TRACKERS = ("wandb", "mlflow")
_IDS_FILE = "tracking.json"


class Tracker(Protocol):
    """One experiment tracker: scalars by step, and close at the end."""

    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


class Trackers:
    """Every tracker a run reports to; `log` sends the same scalars to each."""

    def __init__(self, trackers: list[Tracker], names: list[str]) -> None:
        self.trackers, self.names = trackers, names

    def log(self, metrics: dict[str, float], step: int) -> None:
        clean = {k: float(v) for k, v in metrics.items() if v is not None}
        for tracker in self.trackers:
            tracker.log(clean, step)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()

    def __bool__(self) -> bool:
        return bool(self.trackers)


def open_trackers(cfg: Config, out: Path, step: int, console: Console) -> Trackers:
    """The trackers `cfg.train` asks for, started at `step` (0, or the checkpoint a resumed run left)."""
    t = cfg.train
    unknown = [name for name in t.report_to if name not in TRACKERS]
    if unknown:
        raise CodetuneError(
            f"train.report_to: unknown tracker(s) {', '.join(unknown)}; use any of {', '.join(TRACKERS)} "
            "(TensorBoard is train.tensorboard)"
        )
    trackers: list[Tracker] = []
    names: list[str] = []
    if t.tensorboard:
        board = _TensorBoard.open(out, step, console)
        if board is not None:
            trackers.append(board)
            names.append("tensorboard")
    ids = _read_ids(out) if step else {}
    for name in t.report_to:
        opener = _WandB.open if name == "wandb" else _MLflow.open
        tracker, run_id = opener(cfg, out, ids.get(name))
        trackers.append(tracker)
        names.append(name)
        ids[name] = run_id
    if t.report_to:
        (out / _IDS_FILE).write_text(json.dumps(ids, indent=2) + "\n", encoding="utf-8")
    return Trackers(trackers, names)


def _read_ids(out: Path) -> dict[str, str]:
    try:
        data = json.loads((out / _IDS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _missing(name: str, package: str) -> CodetuneError:
    return CodetuneError(
        f"train.report_to lists {name}, but the {package} package is not installed: "
        f"pip install -e '.[tracking]' (or remove {name} from train.report_to)"
    )


def flat_params(cfg: Config) -> dict[str, str]:
    """The model and train sections as `section.key: value` strings (what MLflow takes as params)."""
    raw = config_to_dict(cfg)

    def walk(prefix: str, value: Any) -> Iterator[tuple[str, str]]:
        if isinstance(value, dict):
            for k, v in value.items():
                yield from walk(f"{prefix}.{k}", v)
        else:
            yield prefix, str(value)[:500]

    return {k: v for section in ("model", "train") for k, v in walk(section, raw[section])}


class _TensorBoard:
    def __init__(self, writer: Any) -> None:
        self.writer = writer

    @classmethod
    def open(cls, out: Path, step: int, console: Console) -> _TensorBoard | None:
        """A SummaryWriter on {out}/tensorboard that drops events after `step` (a resumed run's lost tail)."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            console.print(
                "  [yellow]tensorboard is not installed: no TensorBoard events (metrics.jsonl has all)[/]"
            )
            return None
        return cls(SummaryWriter(str(out / "tensorboard"), purge_step=step + 1 if step else None))

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _WandB:
    def __init__(self, run: Any) -> None:
        self.run = run

    @classmethod
    def open(cls, cfg: Config, out: Path, run_id: str | None) -> tuple[_WandB, str]:
        try:
            import wandb
        except ImportError:
            raise _missing("wandb", "wandb") from None
        run = wandb.init(
            project=cfg.train.tracking_project,
            name=cfg.train.run_name or out.name,
            dir=str(out),
            config=config_to_dict(cfg),
            id=run_id,
            resume="allow" if run_id else None,
            reinit="create_new",
        )
        return cls(run), str(run.id)

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()


class _MLflow:
    def __init__(self, client: Any, run_id: str) -> None:
        self.client, self.run_id = client, run_id

    @classmethod
    def open(cls, cfg: Config, out: Path, run_id: str | None) -> tuple[_MLflow, str]:
        try:
            from mlflow.entities import Param
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise _missing("mlflow", "mlflow-skinny") from None
        uri = (
            cfg.train.mlflow_tracking_uri
            or os.environ.get("MLFLOW_TRACKING_URI")
            or (out / "mlruns").resolve().as_uri()
        )
        if uri.startswith("file:") or "://" not in uri:
            # MLflow 3 keeps its file store in maintenance mode and refuses it unless this is set; a
            # local file store is what a run without a server gets here (a database needs sqlalchemy).
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        # A client bound to this URI, not the process-wide mlflow.* state another library may hold.
        client = MlflowClient(tracking_uri=uri)
        if run_id is None:
            name = cfg.train.tracking_project
            experiment = client.get_experiment_by_name(name)
            experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
            run = client.create_run(experiment_id, run_name=cfg.train.run_name or out.name)
            run_id = str(run.info.run_id)
            params = [Param(k, v) for k, v in flat_params(cfg).items()]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
                client.log_batch(run_id, params=params[i : i + 100])
        else:
            client.update_run(run_id, status="RUNNING")
        return cls(client, run_id), run_id

    def log(self, metrics: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        # MLflow metric names may not hold '@': valid/pass@1 is logged as valid/pass_at_1
        rows = [Metric(k.replace("@", "_at_"), v, now, step) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=rows)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)
