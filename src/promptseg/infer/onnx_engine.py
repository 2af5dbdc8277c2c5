"""The ONNX engine: export a trained model to ONNX and run it with onnxruntime on the CPU.

``promptseg export --model models/<rung>`` writes ``models/<rung>/onnx/`` (see ``export_model_dir``):

- ``model.onnx``: the graph ``(pixel_values (B,3,S,S) float32, input_ids (B,T) int64,
  attention_mask (B,T) int64) -> logits (B,S,S) float32`` with dynamic ``B`` and ``T`` (opset 17,
  the legacy TorchScript exporter);
- ``promptseg_onnx.json``: what inference needs besides the graph: image size, mean/std, the
  per-image standardisation flag, the model card (``promptseg.json``: rung, training prompts), the
  sha256 of the weights it was exported from;
- the tokenizer files (``tokenizer.save_pretrained``), so the folder runs on its own.

``models/<rung>`` is a DVC output: unless ``.dvcignore`` lists ``models/*/onnx/``, DVC sees the export
as a modification of that output and ``dvc repro`` re-runs the training stage (which deletes the export).

``OnnxSegmenter(export_dir)`` is a ``promptseg.infer.segmenter.Segmenter``: its plain path mirrors the torch
engine's (the same preprocessing as ``promptseg.modeling.preprocessing.preprocess_image``, bilinear upsampling
of the logits to each image's own size and sigmoid, written in NumPy and tested equal to the torch functions);
its tiles run in the session; masks go through the same ``promptseg.metrics.postprocess_probabilities``.

The export takes any ``nn.Module`` whose forward is ``(pixel_values, input_ids, attention_mask) -> logits
(B, H, W)`` (``export_onnx``). A model folder of any registered architecture (promptseg.modeling.registry)
loads through ``promptseg.infer.torch_engine.load_trained_model``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer

from promptseg.infer.logits import average_prompts_and_flips, prompt_sets
from promptseg.infer.recipe import FALLBACK_THRESHOLD
from promptseg.infer.segmenter import Segmenter
from promptseg.infer.torch_engine import load_trained_model
from promptseg.modeling.preprocessing import resize_rgb
from promptseg.modeling.registry import ARCHITECTURES, folder_architecture, segmentation_logits

__all__ = [
    "ONNX_FILENAME",
    "META_FILENAME",
    "EXPORT_SUBDIR",
    "DEFAULT_OPSET",
    "OnnxEngineError",
    "MissingExportError",
    "ExportMismatchError",
    "ExportCheck",
    "PROBABILITY_TOLERANCE",
    "compare_outputs",
    "ExportSource",
    "logits_module",
    "load_trained_source",
    "load_export_source",
    "export_onnx",
    "export_model_dir",
    "find_export_dir",
    "stale_export_reason",
    "default_threads",
    "OnnxSegmenter",
    "quantize_int8",
    "preprocess",
    "upsample_bilinear",
    "sigmoid",
]

ONNX_FILENAME = "model.onnx"
META_FILENAME = "promptseg_onnx.json"
EXPORT_SUBDIR = "onnx"
DEFAULT_OPSET = 17
INPUT_NAMES = ("pixel_values", "input_ids", "attention_mask")
OUTPUT_NAME = "logits"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_EXAMPLE_PROMPTS = ("segment crack", "segment drywall seam")  # two lengths: padding is part of the traced graph


class OnnxEngineError(RuntimeError):
    """Export or ONNX inference cannot proceed; the message names the folder and the fix."""


class MissingExportError(OnnxEngineError, FileNotFoundError):
    """A model folder has no ONNX export; the message names the ``promptseg export`` command."""


class ExportMismatchError(OnnxEngineError):
    """The exported graph's probabilities differ from the PyTorch forward's by more than the tolerance."""


# ----------------------------------------------------------------------------------------- the export check
# What users get is a probability map and a mask at the recipe's threshold, not a logit: the check compares
# those. fp32 kernels differ between CPU families (AMD AVX512-BF16 vs Intel AMX, oneDNN vs onnxruntime's
# MLAS): a logit may move by ~1e-3 while no probability moves by more than a quarter of that (sigmoid's
# slope is at most 1/4). A probability off by more than PROBABILITY_TOLERANCE is a wrong graph, not rounding.
PROBABILITY_TOLERANCE = 1e-3


@dataclass(frozen=True)
class ExportCheck:
    """How far the export's outputs are from the PyTorch forward's, on the check's inputs.

    ``max_probability_difference`` decides (``passed``: at most ``tolerance``); ``mask_difference_share``
    (threshold label -> share of pixels whose mask differs at that threshold) and ``max_logit_difference``
    are reported. A mask pixel can flip only where the probability is within the difference of the
    threshold, so a flip under the tolerance marks a pixel the model did not decide either way.
    """

    max_logit_difference: float
    max_probability_difference: float
    mask_difference_share: dict[str, float]
    thresholds: dict[str, float]
    pixels: int
    tolerance: float = PROBABILITY_TOLERANCE

    @property
    def passed(self) -> bool:
        return self.max_probability_difference <= self.tolerance

    def as_dict(self) -> dict:
        return {
            "passed": self.passed,
            "probability_tolerance": self.tolerance,
            "max_probability_difference": self.max_probability_difference,
            "max_logit_difference": self.max_logit_difference,
            "thresholds": dict(self.thresholds),
            "mask_difference_share": dict(self.mask_difference_share),
            "pixels": self.pixels,
        }

    @classmethod
    def from_dict(cls, data: dict) -> ExportCheck:
        """The check as :meth:`as_dict` wrote it (the export metadata's ``check``)."""
        names = ("max_logit_difference", "max_probability_difference", "mask_difference_share", "thresholds", "pixels")
        return cls(**{k: data[k] for k in names}, tolerance=data["probability_tolerance"])

    def summary(self) -> str:
        masks = ", ".join(
            f"{self.mask_difference_share[k]:.4%} at the {k} threshold {self.thresholds[k]:g}" for k in self.thresholds
        )
        return (
            f"max probability difference {self.max_probability_difference:.2e} (tolerance {self.tolerance:g}), "
            f"max logit difference {self.max_logit_difference:.2e}; mask pixels that differ: {masks} "
            f"(of {self.pixels:,} pixels)"
        )


def compare_outputs(onnx_logits, torch_logits, thresholds: dict[str, float] | None = None, *, tolerance=None):
    """:class:`ExportCheck` of two logit arrays of one shape: sigmoid probabilities and masks at each of
    ``thresholds`` (label -> threshold; default ``{"default": 0.5}``, the recipe's fallback)."""
    onnx_logits, torch_logits = np.asarray(onnx_logits, np.float64), np.asarray(torch_logits, np.float64)
    if onnx_logits.shape != torch_logits.shape:
        raise ValueError(f"shapes differ: {onnx_logits.shape} vs {torch_logits.shape}")
    thresholds = dict(thresholds or {"default": FALLBACK_THRESHOLD})
    p_onnx, p_torch = 0.5 * (np.tanh(0.5 * onnx_logits) + 1.0), 0.5 * (np.tanh(0.5 * torch_logits) + 1.0)
    return ExportCheck(
        max_logit_difference=float(np.abs(onnx_logits - torch_logits).max()),
        max_probability_difference=float(np.abs(p_onnx - p_torch).max()),
        mask_difference_share={k: float(((p_onnx > t) != (p_torch > t)).mean()) for k, t in thresholds.items()},
        thresholds={k: float(t) for k, t in thresholds.items()},
        pixels=int(p_torch.size),
        tolerance=PROBABILITY_TOLERANCE if tolerance is None else float(tolerance),
    )


# ----------------------------------------------------------------------------------------- sources
@dataclass
class ExportSource:
    """A loaded model ready for export: the forward, its tokenizer and its preprocessing.

    ``module``: an ``nn.Module`` whose forward is ``(pixel_values, input_ids, attention_mask) -> logits
    (B, H, W)``. ``tokenizer``: a Hugging Face tokenizer (saved beside the graph). ``image_size``, ``mean``,
    ``std``, ``per_image``: the arguments of ``promptseg.modeling.preprocessing.preprocess_image``. ``card``: the model
    folder's ``promptseg.json`` (rung, training prompts), copied into the export's metadata.
    ``weights``: the weight file the module came from (its sha256 is recorded to spot stale exports).
    """

    module: object
    tokenizer: object
    image_size: int
    mean: list[float]
    std: list[float]
    per_image: bool = False
    card: dict = field(default_factory=dict)
    model_type: str = "clipseg"
    weights: Path | None = None


def logits_module(model):
    """An ``nn.Module`` whose forward is ``(pixel_values, input_ids, attention_mask) -> logits (B, H, W)``:
    ``promptseg.modeling.registry.segmentation_logits`` on ``model``."""

    class SegmentationLogits(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.model = inner

        def forward(self, pixel_values, input_ids, attention_mask):
            return segmentation_logits(self.model, pixel_values, input_ids, attention_mask)

    return SegmentationLogits(model).eval()


def load_trained_source(model_dir: str | Path) -> ExportSource:
    """The model-type-specific part: ``models/<rung>`` (weights + processor + promptseg.json) -> ExportSource.

    Loads through ``promptseg.infer.torch_engine.load_trained_model`` (a CLIPSeg ``save_pretrained`` folder, or any
    other folder type it learns to load), so preprocessing is read exactly as the PyTorch engine reads it:
    image size and mean/std from the saved processor, ``per_image_standardization`` from the card.
    """
    model_dir = Path(model_dir)
    trained = load_trained_model(model_dir)
    weights = next((model_dir / name for name in WEIGHT_FILES if (model_dir / name).is_file()), None)
    model_type = trained.architecture
    return ExportSource(
        module=logits_module(trained.model),
        tokenizer=trained.processor.tokenizer,
        image_size=trained.image_size,
        mean=list(trained.mean),
        std=list(trained.std),
        per_image=trained.per_image,
        card=dict(trained.card),
        model_type=model_type,
        weights=weights,
    )


def load_export_source(model_dir: str | Path) -> ExportSource:
    """The loaded model of a trained folder (its architecture known by its config file: promptseg.modeling.registry).

    Every architecture of ``promptseg.modeling.registry`` loads through ``load_trained_model``.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise OnnxEngineError(
            f"model folder {model_dir} not found: train it first (`dvc repro train`) or pass "
            "--model with a folder written by save_pretrained (e.g. models/lora)"
        )
    if folder_architecture(model_dir) is not None:
        return load_trained_source(model_dir)
    names = " or ".join(row.config_file for row in ARCHITECTURES.values())
    raise OnnxEngineError(
        f"{model_dir} is not a trained model folder: it has no {names} "
        "(expected weights + processor files + promptseg.json, as `dvc repro train` writes)"
    )


# ----------------------------------------------------------------------------------------- export
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_onnx(
    module, path: str | Path, *, image_size: int, tokenizer=None, example_batch: int = 2, opset: int = DEFAULT_OPSET
) -> Path:
    """Write ``module`` as ONNX to ``path``: inputs ``pixel_values``, ``input_ids``, ``attention_mask``, output ``logits``.

    Any ``nn.Module`` whose forward is ``(pixel_values (B,3,S,S), input_ids (B,T) int64, attention_mask
    (B,T) int64) -> logits (B,H,W)`` works. Batch ``B`` and token length ``T`` are dynamic; the image side
    ``S`` is the one traced (``image_size``). The example tokens come from ``tokenizer`` (two prompts of
    different lengths, padded) or, without one, are ones. Uses the legacy TorchScript exporter
    (``dynamo=False``): it handles CLIPSeg's data-dependent pooling and position-embedding interpolation.
    """

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = max(2, int(example_batch))
    pixel_values = torch.randn(batch, 3, int(image_size), int(image_size), generator=torch.Generator().manual_seed(0))
    if tokenizer is not None:
        prompts = [_EXAMPLE_PROMPTS[i % len(_EXAMPLE_PROMPTS)] for i in range(batch)]
        tokens = tokenizer(prompts, padding=True, return_tensors="pt")
        input_ids, attention_mask = tokens["input_ids"].long(), tokens["attention_mask"].long()
    else:
        input_ids = torch.ones(batch, 5, dtype=torch.long)
        attention_mask = torch.ones(batch, 5, dtype=torch.long)
    was_training = getattr(module, "training", False)
    module.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings(), _position_embeddings_as_constants(module, int(image_size)):
            # The tracer notes Python values it freezes (the image side, the padding checks): intended, since
            # the image side is fixed and the token length stays dynamic (checked by _check_export).
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=".*aten::index.*", category=UserWarning)
            torch.onnx.export(
                module,
                (pixel_values, input_ids, attention_mask),
                str(path),
                dynamo=False,
                opset_version=int(opset),
                input_names=list(INPUT_NAMES),
                output_names=[OUTPUT_NAME],
                dynamic_axes={
                    "pixel_values": {0: "batch"},
                    "input_ids": {0: "batch", 1: "tokens"},
                    "attention_mask": {0: "batch", 1: "tokens"},
                    OUTPUT_NAME: {0: "batch"},
                },
                do_constant_folding=True,
            )
    finally:
        module.train(was_training)
    return path


@contextlib.contextmanager
def _position_embeddings_as_constants(module, image_size: int):
    """While exporting: every vision embedding of ``module`` that interpolates its position embeddings
    (CLIPSeg's ``interpolate_pos_encoding``) returns, instead, the table eager PyTorch computes for the
    export's image side, computed once here.

    Under tracing, transformers always interpolates ("to ensure the exported model works for dynamic input
    shapes"), so the graph ran a bicubic Resize of the position grid on every call: 32% of the small
    model's batch-1 time in onnxruntime. The export's image side is fixed (``OnnxSegmenter`` resizes every
    photo to it), so the table is a constant: the same values eager PyTorch adds (the stored table itself
    where the side is the config's; its torch bicubic interpolation otherwise).
    """

    patched = []
    for embeddings in module.modules():
        if not (hasattr(embeddings, "interpolate_pos_encoding") and hasattr(embeddings, "position_embedding")):
            continue
        patches = (image_size // embeddings.patch_size) ** 2
        probe = torch.zeros(1, patches + 1, embeddings.embed_dim)
        with torch.no_grad():
            table = embeddings.interpolate_pos_encoding(probe, image_size, image_size).detach().clone()
        embeddings.interpolate_pos_encoding = lambda _embeddings, _height, _width, table=table: table
        patched.append(embeddings)
    try:
        yield
    finally:
        for embeddings in patched:
            del embeddings.interpolate_pos_encoding  # the class's method again


def export_model_dir(
    model_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    opset: int = DEFAULT_OPSET,
    check: bool = True,
    thresholds: dict[str, float] | None = None,
) -> Path:
    """Export ``models/<rung>`` to ``out_dir`` (default ``<model_dir>/onnx``); returns ``out_dir``.

    Writes ``model.onnx``, ``promptseg_onnx.json`` and the tokenizer files. With ``check``, runs the
    graph once in onnxruntime on the check's inputs and compares what users get (:func:`compare_outputs`):
    raises :class:`ExportMismatchError` if a probability differs from the PyTorch forward's by more than
    :data:`PROBABILITY_TOLERANCE`, and records the comparison (with the share of mask pixels that differ at
    each of ``thresholds``: dataset -> the recipe's threshold, default 0.5) as the metadata's ``check``.
    """

    model_dir = Path(model_dir)
    out_dir = Path(out_dir) if out_dir is not None else model_dir / EXPORT_SUBDIR
    source = load_export_source(model_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = export_onnx(
        source.module, out_dir / ONNX_FILENAME, image_size=source.image_size, tokenizer=source.tokenizer, opset=opset
    )
    source.tokenizer.save_pretrained(str(out_dir))
    meta = {
        "format": "promptseg-onnx/1",
        "model_type": source.model_type,
        "onnx": ONNX_FILENAME,
        "inputs": list(INPUT_NAMES),
        "output": OUTPUT_NAME,
        "opset": int(opset),
        "image_size": int(source.image_size),
        "image_mean": [float(v) for v in source.mean],
        "image_std": [float(v) for v in source.std],
        "per_image_standardization": bool(source.per_image),
        "card": source.card,
        "source_dir": str(model_dir),
        "source_weights": source.weights.name if source.weights else None,
        "source_weights_sha256": _sha256(source.weights) if source.weights else None,
        "torch_version": torch.__version__,
    }
    if check:
        result = _check_export(source, onnx_path, thresholds)
        meta["check"] = result.as_dict()
    (out_dir / META_FILENAME).write_text(json.dumps(meta, indent=2) + "\n")
    if check and not result.passed:
        raise ExportMismatchError(
            f"the ONNX export in {out_dir} does not reproduce the PyTorch probabilities: {result.summary()}"
        )
    return out_dir


def _check_export(source: ExportSource, onnx_path: Path, thresholds: dict[str, float] | None = None) -> ExportCheck:
    session = _make_session(onnx_path, threads=default_threads(), optimization="all")
    rng = np.random.default_rng(0)
    pixel_values = rng.standard_normal((3, 3, source.image_size, source.image_size)).astype(np.float32)
    tokens = source.tokenizer(
        ["segment wall crack", "x", "segment the joint tape on the wall"], padding=True, return_tensors="np"
    )
    feeds = {
        "pixel_values": pixel_values,
        "input_ids": tokens["input_ids"].astype(np.int64),
        "attention_mask": tokens["attention_mask"].astype(np.int64),
    }
    onnx_logits = session.run([OUTPUT_NAME], feeds)[0]
    with torch.no_grad():
        torch_logits = source.module(*(torch.from_numpy(feeds[name]) for name in INPUT_NAMES)).float().numpy()
    if onnx_logits.shape != torch_logits.shape:
        raise ExportMismatchError(
            f"the ONNX export in {onnx_path.parent} gives logits of shape {onnx_logits.shape}, the PyTorch "
            f"forward {torch_logits.shape}"
        )
    return compare_outputs(onnx_logits, torch_logits, thresholds)


# ----------------------------------------------------------------------------------------- finding an export
def find_export_dir(model_dir: str | Path) -> Path:
    """The export folder for ``--model``: the folder itself if it holds ``model.onnx``, else ``<model_dir>/onnx``.

    Raises ``MissingExportError`` naming the ``promptseg export`` command when neither has one.
    """
    model_dir = Path(model_dir)
    for candidate in (model_dir, model_dir / EXPORT_SUBDIR):
        if (candidate / ONNX_FILENAME).is_file() and (candidate / META_FILENAME).is_file():
            return candidate
    raise MissingExportError(
        f"no ONNX export in {model_dir} (looked for {model_dir / EXPORT_SUBDIR / ONNX_FILENAME}): run "
        f"`promptseg export --model {model_dir}` first, or use the default engine (--engine torch)"
    )


def stale_export_reason(export_dir: str | Path, model_dir: str | Path | None = None) -> str | None:
    """Why the export may not match the weights beside it, or None.

    Compares the sha256 recorded at export time with the weight file now in ``model_dir`` (default: the
    folder the export sits in, when that is ``<model_dir>/onnx``). None when there is nothing to compare.
    """
    export_dir = Path(export_dir)
    meta = json.loads((export_dir / META_FILENAME).read_text())
    recorded, name = meta.get("source_weights_sha256"), meta.get("source_weights")
    if not recorded or not name:
        return None
    model_dir = Path(model_dir) if model_dir is not None else export_dir.parent
    weights = model_dir / name
    if not weights.is_file():
        return None
    if _sha256(weights) != recorded:
        return (
            f"{weights} has changed since the ONNX export in {export_dir} was made: "
            f"run `promptseg export --model {model_dir}` again"
        )
    return None


# ----------------------------------------------------------------------------------------- inference
def default_threads() -> int:
    """The CPU cores this process may use (``sched_getaffinity``), else ``os.cpu_count()``."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


_OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")


def _make_session(onnx_path: Path, *, threads: int, optimization: str):
    import onnxruntime as ort  # noqa: PLC0415 (heavy, optional: onnxruntime)

    if optimization not in _OPTIMIZATION_LEVELS:
        raise ValueError(f"optimization must be one of {_OPTIMIZATION_LEVELS}, got {optimization!r}")
    level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = level
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"])


def preprocess(rgb: np.ndarray, size: int, mean, std, per_image: bool = False) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (3, S, S) float32: ``promptseg.modeling.preprocessing.preprocess_image`` in NumPy.

    PIL bilinear resize (``resize_rgb``), /255, (x - mean) / std, then with ``per_image`` the whole array
    standardised to zero mean and unit (unbiased, as torch's) std plus 1e-6.
    """
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    scale, offset = (1.0 / (255.0 * std)).astype(np.float32), (-mean / std).astype(np.float32)
    x = np.asarray(resize_rgb(rgb, size), dtype=np.float32) * scale + offset  # (S, S, 3): one fused pass
    if per_image:
        mu, sd = x.mean(dtype=np.float64), x.std(ddof=1, dtype=np.float64)
        x = (x - np.float32(mu)) * np.float32(1.0 / (sd + 1e-6))
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def _source_index(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear taps of ``align_corners=False``: src = (dst + 0.5) * in / out - 0.5, clamped at 0, in float32
    as torch's CPU kernel computes them."""
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.maximum(scale * (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5), np.float32(0))
    lo = np.minimum(src.astype(np.int64), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    return lo, hi, (src - lo.astype(np.float32)).astype(np.float32)


def upsample_bilinear(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) float32 -> (H, W) float32: ``promptseg.infer.logits.upsample_logits`` (torch bilinear,
    ``align_corners=False``, no antialiasing) in NumPy.

    Infinite logits are taken as the largest finite float32 of their sign. The exported graph can hold them where the
    torch model does not: the ONNX exporter writes ``logsigmoid`` (the presence gate's) as ``Log(Sigmoid(x))``, which
    is -inf below x ~ -104. Interpolated as they are, a tap of weight 0 next to one of them gives inf x 0 = NaN, and
    a NaN probability is never above a threshold, whatever the other tap says."""
    y0, y1, wy = _source_index(int(size[0]), logits.shape[0])
    x0, x1, wx = _source_index(int(size[1]), logits.shape[1])
    largest = float(np.finfo(np.float32).max)
    a = np.clip(
        np.asarray(logits, dtype=np.float64), -largest, largest
    )  # float64 sums: within float32 rounding of torch's
    wy, wx = wy.astype(np.float64)[:, None], wx.astype(np.float64)[None, :]
    rows = a[y0] * (1 - wy) + a[y1] * wy
    return (rows[:, x0] * (1 - wx) + rows[:, x1] * wx).astype(np.float32)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """float32 logistic function, without overflow warnings for large negative logits."""
    return (0.5 * (np.tanh(0.5 * x.astype(np.float32)) + 1.0)).astype(np.float32)


class OnnxSegmenter(Segmenter):
    """An exported model in an onnxruntime CPU session, with the same pre- and post-processing as the torch path.

    ``export_dir``: a folder written by ``export_model_dir`` (or a model folder holding ``onnx/``).
    ``threads``: onnxruntime intra-op threads (default: this process's CPU cores). ``optimization``:
    graph optimisation level, ``"all"`` (default), ``"extended"``, ``"basic"`` or ``"disable"``.
    ``onnx_file``: another graph in the folder with the same inputs (e.g. a quantised copy).
    """

    def __init__(
        self,
        export_dir: str | Path,
        *,
        threads: int | None = None,
        optimization: str = "all",
        onnx_file: str = ONNX_FILENAME,
    ):
        self.export_dir = find_export_dir(export_dir)
        meta_path = self.export_dir / META_FILENAME
        try:
            self.meta = json.loads(meta_path.read_text())
            self.image_size = int(self.meta["image_size"])
            self.mean = [float(v) for v in self.meta["image_mean"]]
            self.std = [float(v) for v in self.meta["image_std"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise OnnxEngineError(
                f"{meta_path} is unreadable or incomplete ({type(exc).__name__}: {exc}): "
                "export the model again with `promptseg export`"
            ) from None
        self.per_image = bool(self.meta.get("per_image_standardization", False))
        self.card = dict(self.meta.get("card") or {})
        self.architecture = str(self.meta.get("model_type", "unknown"))  # a row of promptseg.modeling.registry
        self.threads = int(threads) if threads else default_threads()
        self.tokenizer = self._load_tokenizer()
        self.session = _make_session(self.export_dir / onnx_file, threads=self.threads, optimization=optimization)

    def _load_tokenizer(self):

        try:
            return AutoTokenizer.from_pretrained(str(self.export_dir), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise OnnxEngineError(
                f"cannot load the tokenizer saved in {self.export_dir} ({exc}): "
                "export the model again with `promptseg export`"
            ) from None

    def logits(self, pixel_values: np.ndarray, prompts: list[str]) -> np.ndarray:
        """Logits (B, S, S) float32 for preprocessed ``pixel_values`` (B, 3, S, S) and one prompt per row."""
        tokens = self.tokenizer(list(prompts), padding=True, return_tensors="np")
        feeds = {
            "pixel_values": np.ascontiguousarray(pixel_values, dtype=np.float32),
            "input_ids": tokens["input_ids"].astype(np.int64),
            "attention_mask": tokens["attention_mask"].astype(np.int64),
        }
        return self.session.run([OUTPUT_NAME], feeds)[0]

    engine = "onnx"

    def window_logits(self, pixel_values: torch.Tensor, prompts: list[str], precision: str) -> torch.Tensor:
        """Logits (N, t, t) of a batch of tiles of the export's size (``precision``: the graph's own, fp32)."""
        return torch.from_numpy(self.logits(pixel_values.numpy(), prompts))

    def whole_image_probabilities(self, images, prompts, *, batch_size=16, hflip_tta=False, precision="fp32"):
        """Probability maps at each image's OWN size, one per (image, prompt) pair (float32 (H, W) in [0, 1]).

        The plain path of ``promptseg.infer.torch_engine.TorchSegmenter`` in NumPy (same contract: ``prompts[i]`` may be
        a list, a prompt ensemble; ``hflip_tta`` averages with the mirrored image's logits flipped back, in
        the same order): resize + normalise (``preprocess``, = ``promptseg.modeling.preprocessing.preprocess_image``) ->
        logits at the model's input size, averaged -> bilinear upsample of the logits to (H, W)
        (``upsample_bilinear``, = ``promptseg.infer.logits.upsample_logits``) -> sigmoid.
        Pre- and post-processing run in NumPy: no torch thread pool (on a busy machine its small ops
        cost ~100 ms per image at 2 threads, measured).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        sets = prompt_sets(images, prompts)
        out: list[np.ndarray] = []
        for start in range(0, len(images), batch_size):
            chunk, chunk_sets = images[start : start + batch_size], sets[start : start + batch_size]
            pixel_values = np.stack(
                [preprocess(im, self.image_size, self.mean, self.std, self.per_image) for im in chunk]
            )
            averaged = average_prompts_and_flips(
                lambda view, rows, ps, flipped: self.logits(view[rows], ps),
                pixel_values,
                chunk_sets,
                hflip_tta,
                lambda x: np.ascontiguousarray(x[..., ::-1]),
                lambda shape: np.zeros(shape, np.float32),
            )
            for image, logit in zip(chunk, averaged):
                out.append(sigmoid(upsample_bilinear(logit, image.shape[:2])))
        return out


def quantize_int8(export_dir: str | Path, out_file: str = "model.int8.onnx") -> Path:
    """Dynamic int8 quantisation of ``model.onnx`` (weights int8, activations quantised at run time).

    Writes ``out_file`` beside it; load it with ``OnnxSegmenter(export_dir, onnx_file=out_file)``. Check the
    masks against the fp32 graph before using it: with small or random models the error can be large.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic  # noqa: PLC0415 (heavy, optional: onnxruntime)

    export_dir = find_export_dir(export_dir)
    target = export_dir / out_file
    quantize_dynamic(str(export_dir / ONNX_FILENAME), str(target), weight_type=QuantType.QInt8)
    return target
