"""Live training metrics: one DVCLive logger per rung plus the same values in the rung's MLflow run, per epoch.

The training loop makes one :class:`EpochLogger` per rung and calls :meth:`EpochLogger.log_epoch` once per
epoch, then :meth:`EpochLogger.close`::

    logger = EpochLogger(rung, Path("metrics/train") / rung, mlflow_cfg=setup.mlflow_cfg,
                         params={...}, resume_epoch=start_epoch, mlflow_run_id=checkpoint_run_id)
    for epoch in range(start_epoch, epochs):
        ...
        logger.log_epoch(epoch + 1, train_loss, val_loss, val_dice, lr, overlay, seconds=seconds)
    logger.close()

What it writes (DVCLive 3.x layout, ``dir = metrics/train/<rung>``):

- ``plots/metrics/<name>.tsv``: columns ``step`` and ``<name>``, one row per epoch, step = epoch - 1
  (``train_loss``, ``val_loss``, ``val_dice``, ``lr`` and any extra series such as ``seconds``);
- ``metrics.json``: the last epoch's values and its ``step``;
- ``params.yaml``: the ``params`` given (nested as given);
- ``plots/images/val_overlay/<step>.png``: the overlay passed for each epoch (DVCLive's per-step image folder).

MLflow receives the same values under the same names at the same steps while training runs (``mlflow ui``
shows a 40-epoch GPU run live), the params (flattened), and each overlay as ``val_overlay/<step>.png``.

DVCLive never makes its own DVC experiment here (``save_dvc_exp=False``) and never writes a ``dvc.yaml``
(``dvcyaml=None``: the project's dvc.yaml declares the plots), so it behaves the same under ``dvc repro``,
``dvc exp run`` and plain Python.

Resume: pass ``resume_epoch`` = the number of epochs the checkpoint holds (and the MLflow run id it saved,
:attr:`EpochLogger.mlflow_run_id`). The DVCLive series keep their rows for steps below ``resume_epoch`` and
drop any later ones (an epoch logged after the checkpoint was written and then lost in a crash), so the
resumed run continues the same step series with no duplicate; the MLflow run is reopened, not duplicated.
``dvc repro`` deletes a stage's outputs before it runs the command, so pass the checkpoint's per-epoch rows
as ``history`` too: the series are then rewritten from them, and an MLflow run that cannot be reopened (no id) is
replaced by a new one that gets the history first. The overlays of earlier epochs are restored from
``overlay_store`` (the training passes a folder beside its checkpoint), where each is also saved when logged.
"""

from __future__ import annotations

import csv
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from promptseg.tracking import _flatten, as_mlflow_settings, connect

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

__all__ = ["EpochLogger", "OVERLAY_NAME"]

OVERLAY_NAME = "val_overlay"
SERIES = ("train_loss", "val_loss", "val_dice", "lr")


def _flat_params(params: dict) -> dict[str, str]:

    return {k: str(v)[:500] for k, v in _flatten("", params, {}).items()}


def _truncate_series(plots_dir: Path, keep_below: int) -> None:
    """Drop rows with ``step >= keep_below`` from every DVCLive metric series and image folder under ``plots_dir``."""
    for tsv in (plots_dir / "metrics").rglob("*.tsv"):
        with open(tsv, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle, delimiter="\t"))
        if not rows or "step" not in rows[0]:
            continue
        col = rows[0].index("step")
        kept = [rows[0]] + [r for r in rows[1:] if r and int(r[col]) < keep_below]
        with open(tsv, "w", newline="", encoding="utf-8") as handle:
            csv.writer(handle, delimiter="\t", lineterminator=os.linesep).writerows(kept)
    for png in (plots_dir / "images").rglob("*.png"):
        if png.stem.isdigit() and int(png.stem) >= keep_below:
            png.unlink()


class EpochLogger:
    """One rung's per-epoch log: a ``dvclive.Live`` in ``live_dir`` and (with ``mlflow_cfg``) an MLflow run.

    Args:
        rung: the rung's name (MLflow run name and ``rung`` tag).
        live_dir: DVCLive's folder, ``metrics/train/<rung>``.
        mlflow_cfg: params.yaml ``mlflow`` (``tracking_uri``, ``experiment``); None logs to DVCLive only.
        params: the rung's settings, logged once to DVCLive's ``params.yaml`` and the MLflow run.
        resume_epoch: epochs already done (0: a fresh run, which clears ``live_dir``'s previous series).
        mlflow_run_id: the run to continue on resume (:attr:`mlflow_run_id` of the interrupted logger).
        history: on resume, the checkpoint's rows (``{"epoch": e, "train_loss": ..., ...}``, e <= resume_epoch):
            the DVCLive series are rebuilt from them rather than read back from ``live_dir``.
    """

    def __init__(
        self,
        rung: str,
        live_dir: str | Path,
        *,
        mlflow_cfg: dict | None = None,
        params: dict | None = None,
        resume_epoch: int = 0,
        mlflow_run_id: str | None = None,
        history: list[dict] | None = None,
        overlay_store: str | Path | None = None,
    ):
        from dvclive import Live  # noqa: PLC0415 (heavy, optional: dvclive)

        self.rung, self.live_dir = rung, Path(live_dir)
        self.resume_epoch = int(resume_epoch)
        if self.resume_epoch < 0:
            raise ValueError(f"resume_epoch must be >= 0, got {resume_epoch}")
        resume = self.resume_epoch > 0
        self.live = Live(dir=str(self.live_dir), resume=resume, save_dvc_exp=False, dvcyaml=None, report=None)
        history = [r for r in (history or []) if 0 < int(r["epoch"]) <= self.resume_epoch] if resume else []
        if resume and history:
            shutil.rmtree(Path(self.live.plots_dir) / "metrics", ignore_errors=True)
            for row in history:  # the same rows, the same steps, as the interrupted run wrote
                self.live.step = int(row["epoch"]) - 1
                for name, value in self._values(row).items():
                    self.live.log_metric(name, value)
        self.overlay_store = Path(overlay_store) if overlay_store is not None else None
        if resume:
            self._restore_overlays()
            _truncate_series(Path(self.live.plots_dir), self.resume_epoch)
        if resume:  # the next epoch's step (epoch e is step e - 1); a fresh run's first log_metric starts at 0
            self.live.step = self.resume_epoch
        if params and (not resume or not Path(self.live.params_file).exists()):
            self.live.log_params(params)
        self._client, self.mlflow_run_id = None, None
        if mlflow_cfg:
            reopen = mlflow_run_id if resume else None
            self._open_mlflow(mlflow_cfg, params, reopen)
            if reopen is None and history:
                self._log_mlflow_metrics(history)
        self._closed = False

    def _restore_overlays(self) -> None:
        """On resume, the overlays of the epochs the checkpoint holds, copied back from ``overlay_store`` where
        ``dvc repro`` deleted them with the stage's outputs."""
        if self.overlay_store is None or not self.overlay_store.is_dir():
            return
        folder = Path(self.live.plots_dir) / "images" / OVERLAY_NAME
        for png in self.overlay_store.glob("*.png"):
            if png.stem.isdigit() and int(png.stem) < self.resume_epoch and not (folder / png.name).exists():
                folder.mkdir(parents=True, exist_ok=True)
                shutil.copy2(png, folder / png.name)

    @staticmethod
    def _values(row: dict) -> dict[str, float]:
        """The numeric per-epoch values of a row (everything but ``epoch``), as floats."""
        return {
            k: float(v)
            for k, v in row.items()
            if k != "epoch" and isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)
        }

    def _log_mlflow_metrics(self, rows: list[dict]) -> None:
        from mlflow.entities import Metric  # noqa: PLC0415 (heavy, optional: mlflow)

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, int(row["epoch"]) - 1) for row in rows for k, v in self._values(row).items()]
        self._client.log_batch(self.mlflow_run_id, metrics=metrics)

    # ------------------------------------------------------------------ MLflow
    def _open_mlflow(self, mlflow_cfg: dict, params: dict | None, run_id: str | None) -> None:
        from mlflow.tracking import MlflowClient  # noqa: PLC0415 (heavy, optional: mlflow)

        mlflow_cfg = as_mlflow_settings(mlflow_cfg)
        mlflow = connect(mlflow_cfg)
        client = MlflowClient(tracking_uri=mlflow.get_tracking_uri())
        if run_id is not None:
            client.update_run(run_id, status="RUNNING")
        else:
            experiment = mlflow.get_experiment_by_name(mlflow_cfg.experiment)
            run = client.create_run(experiment.experiment_id, run_name=self.rung, tags={"rung": self.rung})
            run_id = run.info.run_id
            if params:
                from mlflow.entities import Param  # noqa: PLC0415 (heavy, optional: mlflow)

                client.log_batch(run_id, params=[Param(k, v) for k, v in _flat_params(params).items()])
        self._client, self.mlflow_run_id = client, run_id

    # ------------------------------------------------------------------ per epoch
    @property
    def step(self) -> int:
        """The step the next :meth:`log_epoch` writes (= epochs logged so far)."""
        return int(self.live.step)

    def log_epoch(
        self,
        epoch: int,
        train_loss: float,
        val_loss: float,
        val_dice: float,
        lr: float,
        overlay_image: np.ndarray | None = None,
        **extra: float,
    ) -> dict[str, float]:
        """Log epoch ``epoch`` (1-based; must be the next one) at step ``epoch - 1`` to DVCLive and MLflow.

        ``extra``: more per-epoch numbers (e.g. ``seconds``), logged the same way. A value of None is not
        logged (a zero-shot rung has no train loss). ``overlay_image``: an (H, W, 3) uint8 RGB image saved as
        ``val_overlay/<step>.png``. Returns the values logged.
        """
        if self._closed:
            raise RuntimeError(f"the {self.rung} logger is closed: make a new EpochLogger to log more epochs")
        step = int(epoch) - 1
        if step != self.step:
            raise ValueError(
                f"epoch {epoch} logged out of order: the {self.rung} series in {self.live_dir} "
                f"expects epoch {self.step + 1} next (pass resume_epoch={step} to continue from a "
                "checkpoint)"
            )
        values = {"train_loss": train_loss, "val_loss": val_loss, "val_dice": val_dice, "lr": lr, **extra}
        values = {k: float(v) for k, v in values.items() if v is not None}
        for name, value in values.items():
            self.live.log_metric(name, value)
        if overlay_image is not None:
            self.live.log_image(f"{OVERLAY_NAME}/{step}.png", np.ascontiguousarray(overlay_image))
            if self.overlay_store is not None:  # beside the checkpoint, which `dvc repro` does not delete
                self.overlay_store.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.ascontiguousarray(overlay_image)).save(self.overlay_store / f"{step}.png")
        if self._client is not None:
            self._log_mlflow_metrics([{"epoch": epoch, **values}])
            if overlay_image is not None:
                self._client.log_image(
                    self.mlflow_run_id,
                    np.ascontiguousarray(overlay_image),
                    artifact_file=f"{OVERLAY_NAME}/{step:04d}.png",
                )
        self.live.next_step()
        return values

    def close(self, status: str = "FINISHED") -> None:
        """Write DVCLive's summary and end the MLflow run (``status``: FINISHED, FAILED or KILLED).

        Every series of :data:`SERIES` that was never logged (a skipped rung, a zero-shot rung's train loss)
        gets a header-only ``<name>.tsv``, so the files a pipeline declares and plots always exist."""
        if self._closed:
            return
        self._closed = True
        metrics_dir = Path(self.live.plots_dir) / "metrics"
        metrics_dir.mkdir(parents=True, exist_ok=True)
        for name in SERIES:
            if not (metrics_dir / f"{name}.tsv").exists():
                (metrics_dir / f"{name}.tsv").write_text(f"step\t{name}{os.linesep}", encoding="utf-8")
        self.live.end()
        if self._client is not None:
            self._client.set_terminated(self.mlflow_run_id, status=status)

    def __enter__(self) -> EpochLogger:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close("FINISHED" if exc_type is None else ("KILLED" if exc_type is KeyboardInterrupt else "FAILED"))

    def metric_series(self, name: str) -> list[tuple[int, Any]]:
        """``[(step, value), ...]`` of one DVCLive series as written (for tests and reports)."""
        path = Path(self.live.plots_dir) / "metrics" / f"{name}.tsv"
        if not path.exists():
            return []
        with open(path, newline="", encoding="utf-8") as handle:
            return [(int(r["step"]), float(r[name])) for r in csv.DictReader(handle, delimiter="\t")]
