"""promptseg.train.live: per-epoch DVCLive series and the same values in MLflow, fresh and resumed."""

import json

import numpy as np
import pytest
import yaml

from promptseg.train.live import EpochLogger

# (train_loss, val_loss, val_dice, lr, seconds) of a fake 3-epoch run
EPOCHS = [(0.9, 0.8, 0.25, 3e-4, 1.5), (0.7, 0.6, 0.5, 2e-4, 1.25), (0.5, 0.45, 0.75, 1e-4, 1.0)]
NAMES = ("train_loss", "val_loss", "val_dice", "lr", "seconds")


def overlay(epoch):
    img = np.zeros((6, 8, 3), np.uint8)
    img[:, :epoch] = (255, 0, 0)
    return img


def log(logger, epoch):
    train_loss, val_loss, val_dice, lr, seconds = EPOCHS[epoch - 1]
    logger.log_epoch(epoch, train_loss, val_loss, val_dice, lr, overlay(epoch), seconds=seconds)


def tsv(path):
    lines = path.read_text().splitlines()
    return lines[0].split("\t"), [line.split("\t") for line in lines[1:]]


@pytest.fixture
def mlflow_cfg(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # promptseg.tracking.connect: the variable wins (mlflow sets it)
    return {"tracking_uri": uri, "experiment": "live-test", "artifact_root": str(tmp_path / "mlartifacts")}


def mlflow_history(cfg, run_id, name):
    from mlflow.tracking import MlflowClient

    return [
        (m.step, m.value)
        for m in sorted(MlflowClient(cfg["tracking_uri"]).get_metric_history(run_id, name), key=lambda m: m.step)
    ]


def test_three_epochs_write_the_series_summary_params_images_and_mlflow(tmp_path, mlflow_cfg, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not a git/DVC repo: DVCLive must still log, and make no experiment
    live_dir = tmp_path / "metrics" / "train" / "unet"
    with EpochLogger("unet", live_dir, mlflow_cfg=mlflow_cfg, params={"epochs": 3, "lr": {"base": 3e-4}}) as logger:
        for epoch in (1, 2, 3):
            log(logger, epoch)
        run_id = logger.mlflow_run_id
    for i, name in enumerate(NAMES):
        header, rows = tsv(live_dir / "plots" / "metrics" / f"{name}.tsv")
        assert header == ["step", name]
        assert [(int(s), float(v)) for s, v in rows] == [(e, EPOCHS[e][i]) for e in range(3)]
        assert mlflow_history(mlflow_cfg, run_id, name) == [(e, EPOCHS[e][i]) for e in range(3)]
    summary = json.loads((live_dir / "metrics.json").read_text())
    assert summary == {"train_loss": 0.5, "val_loss": 0.45, "val_dice": 0.75, "lr": 1e-4, "seconds": 1.0, "step": 2}
    assert yaml.safe_load((live_dir / "params.yaml").read_text()) == {"epochs": 3, "lr": {"base": 3e-4}}
    images = sorted(p.name for p in (live_dir / "plots" / "images" / "val_overlay").iterdir())
    assert images == ["0.png", "1.png", "2.png"]
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(live_dir / "plots" / "images" / "val_overlay" / "1.png")), overlay(2))
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_cfg["tracking_uri"])
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "unet" and run.data.tags["rung"] == "unet"
    assert run.data.params == {"epochs": "3", "lr.base": "0.0003"}
    assert sorted(a.path for a in client.list_artifacts(run_id, "val_overlay")) == [
        "val_overlay/0000.png",
        "val_overlay/0001.png",
        "val_overlay/0002.png",
    ]
    assert not (tmp_path / "dvc.yaml").exists() and not (live_dir / "dvc.yaml").exists()


def test_resume_after_epoch_two_continues_at_step_two_without_duplicates(tmp_path, mlflow_cfg, monkeypatch):
    monkeypatch.chdir(tmp_path)
    live_dir = tmp_path / "live"
    first = EpochLogger("unet", live_dir, mlflow_cfg=mlflow_cfg, params={"epochs": 3})
    for epoch in (1, 2, 3):  # epoch 3 logged, then the process dies before its checkpoint is written
        log(first, epoch)
    run_id = first.mlflow_run_id
    first.close("KILLED")
    (live_dir / "plots" / "metrics" / "val_dice.tsv").write_text(  # make the lost epoch's row recognisable
        (live_dir / "plots" / "metrics" / "val_dice.tsv").read_text().replace("0.75", "0.123")
    )

    resumed = EpochLogger(
        "unet", live_dir, mlflow_cfg=mlflow_cfg, params={"epochs": 3}, resume_epoch=2, mlflow_run_id=run_id
    )
    assert resumed.step == 2 and resumed.mlflow_run_id == run_id
    with pytest.raises(ValueError, match="expects epoch 3 next"):
        resumed.log_epoch(2, 0.1, 0.1, 0.1, 0.1)
    log(resumed, 3)
    resumed.close()
    assert resumed.metric_series("val_dice") == [(0, 0.25), (1, 0.5), (2, 0.75)]
    _, rows = tsv(live_dir / "plots" / "metrics" / "train_loss.tsv")
    assert [int(s) for s, _ in rows] == [0, 1, 2]
    assert json.loads((live_dir / "metrics.json").read_text())["step"] == 2
    assert yaml.safe_load((live_dir / "params.yaml").read_text()) == {"epochs": 3}
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_cfg["tracking_uri"])
    runs = client.search_runs([client.get_experiment_by_name("live-test").experiment_id])
    assert [r.info.run_id for r in runs] == [run_id] and runs[0].info.status == "FINISHED"


def test_a_fresh_run_clears_the_previous_series(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with EpochLogger("lora", tmp_path / "live") as logger:
        log(logger, 1)
        log(logger, 2)
    with EpochLogger("lora", tmp_path / "live") as logger:
        log(logger, 1)
        assert logger.mlflow_run_id is None
    assert logger.metric_series("val_dice") == [(0, 0.25)]
    assert sorted(p.name for p in (tmp_path / "live" / "plots" / "images" / "val_overlay").iterdir()) == ["0.png"]


def test_resume_after_dvc_deleted_the_outputs_rebuilds_the_series_from_the_checkpoint_rows(
    tmp_path, mlflow_cfg, monkeypatch
):
    import shutil

    monkeypatch.chdir(tmp_path)
    live_dir = tmp_path / "metrics" / "train" / "unet"
    first = EpochLogger("unet", live_dir, mlflow_cfg=mlflow_cfg, params={"epochs": 3})
    rows = []
    for epoch in (1, 2):
        rows.append({"epoch": epoch, **dict(zip(NAMES, EPOCHS[epoch - 1]))})
        log(first, epoch)
    first.close("KILLED")
    shutil.rmtree(live_dir)  # `dvc repro` removes a stage's outputs before running it
    resumed = EpochLogger(
        "unet", live_dir, mlflow_cfg=mlflow_cfg, params={"epochs": 3}, resume_epoch=2, history=rows
    )  # no run id saved: a new MLflow run gets the history first
    log(resumed, 3)
    resumed.close()
    for i, name in enumerate(NAMES):
        assert resumed.metric_series(name) == [(e, EPOCHS[e][i]) for e in range(3)]
        assert mlflow_history(mlflow_cfg, resumed.mlflow_run_id, name) == [(e, EPOCHS[e][i]) for e in range(3)]
    assert resumed.mlflow_run_id != first.mlflow_run_id
    assert json.loads((live_dir / "metrics.json").read_text())["step"] == 2
    assert yaml.safe_load((live_dir / "params.yaml").read_text()) == {"epochs": 3}
