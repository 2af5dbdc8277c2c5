"""``load_segmenter(model_dir, engine)``: a trained model folder as a Segmenter on the torch or the ONNX engine.

``torch``: ``promptseg.infer.torch_engine.load_trained_model``. ``onnx``: the folder's ONNX export
(``promptseg export`` writes it to ``<model>/onnx``) in onnxruntime. ``auto``: the export where one exists,
else torch. Every failure is one :class:`EngineLoadError` whose message names the folder and the fix.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError

from promptseg.infer.onnx_engine import OnnxEngineError, OnnxSegmenter, find_export_dir, stale_export_reason
from promptseg.infer.segmenter import Segmenter
from promptseg.infer.torch_engine import load_trained_model
from promptseg.modeling.clipseg import ModelSourceError

__all__ = ["ENGINES", "EngineLoadError", "load_segmenter"]

ENGINES = ("torch", "onnx")


class EngineLoadError(Exception):
    """The model cannot be loaded for the chosen engine; the message says why and what to do."""


def load_segmenter(
    model_dir: str | Path, engine: str = "torch", *, threads: int | None = None, cache_bytes: int = 0
) -> Segmenter:
    """The model in ``model_dir`` on ``engine`` (torch | onnx | auto). ``threads``: onnxruntime's intra-op
    threads, or ``torch.set_num_threads`` (None: leave as is). ``cache_bytes``: the torch engine's encoding
    cache (many prompts over the same images: evaluation). An ONNX export older than the weights beside it
    loads, with ``stale`` saying so."""
    model_dir = Path(model_dir)
    if engine not in (*ENGINES, "auto"):
        raise ValueError(f"unknown engine {engine!r}: use {', '.join(ENGINES)} or auto")
    if engine in ("onnx", "auto"):
        try:
            return _load_onnx(model_dir, threads)
        except EngineLoadError:
            if engine == "onnx":
                raise
    if threads:
        torch.set_num_threads(int(threads))
    try:
        return load_trained_model(model_dir, cache_bytes=cache_bytes)
    except (ModelSourceError, OSError, ValueError) as exc:
        raise EngineLoadError(f"cannot load the model from {model_dir}: {exc}") from None
    except (SafetensorError, RuntimeError) as exc:  # a truncated or corrupt weights file
        weights = ", ".join(str(p) for p in sorted(model_dir.glob("*.safetensors"))) or f"the weights in {model_dir}"
        raise EngineLoadError(
            f"cannot load the model from {model_dir}: {weights} is corrupt or truncated "
            f"({type(exc).__name__}: {exc}). Copy the model folder again, or retrain it "
            "(`dvc repro train`)"
        ) from None


def _load_onnx(model_dir: Path, threads: int | None) -> OnnxSegmenter:
    export_dir = None
    try:
        export_dir = find_export_dir(model_dir)
        segmenter = OnnxSegmenter(export_dir, threads=threads)
    except OnnxEngineError as exc:  # MissingExportError included: it names `promptseg export`
        raise EngineLoadError(str(exc)) from None
    except Exception as exc:  # onnxruntime raises its own classes for a corrupt graph
        raise EngineLoadError(
            f"cannot load the ONNX export in {export_dir}: {type(exc).__name__}: {exc}. "
            f"Export it again: `promptseg export --model {model_dir}`"
        ) from None
    segmenter.stale = stale_export_reason(export_dir, model_dir if export_dir != model_dir else None)
    return segmenter
