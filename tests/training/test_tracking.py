"""train.report_to: Weights & Biases (offline mode) and MLflow (a local file store), through their own
libraries, receive the same numbers as metrics.jsonl at the same steps; a resumed run continues the run."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from codetune.data.prepare import prepare
from codetune.manifest import read_jsonl
from codetune.training.loop import train
from tests.conftest import tiny_config


def _metrics(out: Path) -> tuple[dict[int, float], dict[int, float]]:
    rows = read_jsonl(out / "metrics.jsonl")
    train_loss = {r["step"]: r["loss"] for r in rows if "loss" in r}
    valid_loss = {r["step"]: r["valid_loss"] for r in rows if "valid_loss" in r}
    return train_loss, valid_loss


def test_mlflow_file_store_gets_the_metrics_and_params_and_a_resume_continues_the_run(
    tmp_path: Path, pairs_file: Path
) -> None:
    pytest.importorskip("mlflow", reason="MLflow tracking needs mlflow-skinny: pip install -e '.[tracking]'")
    from mlflow.tracking import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    train_opts = {"max_steps": 4, "eval_every": 2, "save_every": 2, "report_to": ["mlflow"]}
    cfg = tiny_config(
        tmp_path, pairs_file, train={**train_opts, "mlflow_tracking_uri": uri, "run_name": "r1"}
    )
    prepare(cfg)
    out = train(cfg)
    train_loss, valid_loss = _metrics(out)
    run_id = json.loads((out / "tracking.json").read_text())["mlflow"]
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "r1"
    assert client.get_experiment(run.info.experiment_id).name == "codetune"
    assert run.data.params["train.lr"] == "0.003" and run.data.params["model.name"] == "tiny"
    logged = {m.step: m.value for m in client.get_metric_history(run_id, "train/loss")}
    assert len(logged) == 4 and logged == pytest.approx(train_loss)
    assert {m.step: m.value for m in client.get_metric_history(run_id, "valid/loss")} == pytest.approx(
        valid_loss
    )
    assert [m.step for m in client.get_metric_history(run_id, "train/tokens_per_s")] == [1, 2, 3, 4]

    # resume from the step-2 checkpoint to 6 steps: the same MLflow run continues
    cfg.train.max_steps, cfg.train.resume = 6, True
    train(cfg)
    assert json.loads((out / "tracking.json").read_text())["mlflow"] == run_id
    steps = sorted({m.step for m in client.get_metric_history(run_id, "train/loss")})
    assert steps == [1, 2, 3, 4, 5, 6]
    assert len(client.search_runs([run.info.experiment_id])) == 1


def _wandb_records(path: Path) -> list[bytes]:
    """The records of a .wandb transaction log: a 7-byte header (":W&B", magic, version), then the LevelDB
    log format: 32 KiB blocks of records, each a 7-byte header (crc32c, length, type) and its data, a
    record split over blocks as FIRST/MIDDLE/LAST pieces (wandb's own reader left the Python package)."""
    raw = path.read_bytes()
    assert raw[:4] == b":W&B"
    block, records, pending, pos = 32768, [], b"", 7
    while pos + 7 <= len(raw):
        room = block - pos % block
        if room < 7:  # the tail of a block too short for a header is padding
            pos += room
            continue
        length, kind = struct.unpack("<HB", raw[pos + 4 : pos + 7])
        data = raw[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            break
        if kind == 1:  # FULL
            records.append(data)
        elif kind == 2:  # FIRST
            pending = data
        elif kind == 3:  # MIDDLE
            pending += data
        elif kind == 4:  # LAST
            records.append(pending + data)
    return records


def test_wandb_offline_run_gets_the_metrics(
    tmp_path: Path, pairs_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("wandb", reason="Weights & Biases tracking needs wandb: pip install -e '.[tracking]'")
    from wandb.proto import wandb_internal_pb2

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    cfg = tiny_config(
        tmp_path,
        pairs_file,
        train={
            "max_steps": 4,
            "eval_every": 2,
            "save_every": 0,
            "report_to": ["wandb"],
            "tensorboard": False,
        },
    )
    prepare(cfg)
    out = train(cfg)
    train_loss, valid_loss = _metrics(out)
    run_id = json.loads((out / "tracking.json").read_text())["wandb"]
    (run_file,) = (out / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
    history: dict[int, dict[str, float]] = {}
    config_seen = False
    for data in _wandb_records(run_file):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            history.setdefault(int(items["_step"]), {}).update(items)
        elif record.WhichOneof("record_type") == "run":  # the run record carries the config
            config_seen = config_seen or any(u.key == "train" for u in record.run.config.update)
    assert config_seen
    logged = {step: row["train/loss"] for step, row in history.items() if "train/loss" in row}
    assert len(logged) == 4 and logged == pytest.approx(train_loss)
    assert {s: r["valid/loss"] for s, r in history.items() if "valid/loss" in r} == pytest.approx(valid_loss)


def test_report_to_is_off_by_default_and_checked(tmp_path: Path, pairs_file: Path) -> None:
    from codetune.config import load_config
    from codetune.errors import CodetuneError

    cfg = tiny_config(tmp_path, pairs_file)
    assert cfg.train.report_to == []
    with pytest.raises(
        CodetuneError, match=r"train.report_to\[0\]: 'neptune' is not one of 'wandb', 'mlflow'"
    ):
        load_config(None, ["--train.report_to=[neptune]"])
