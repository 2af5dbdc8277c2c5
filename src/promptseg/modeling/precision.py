"""Numeric precision of training and inference: ``auto | fp32 | bf16``.

``train.common.precision`` (training) and ``infer.precision`` (evaluation, ``promptseg predict --precision``):

- ``bf16``: the forward runs under ``torch.autocast(<device>, dtype=torch.bfloat16)``: matmuls and
  convolutions in bfloat16, everything autocast keeps in fp32 (reductions, softmax, norms' statistics)
  in fp32. The weights, the BatchNorm running statistics, the loss (logits are cast to float first) and
  the optimiser state stay fp32: only activations are bf16.
- ``fp32``: no autocast.
- ``auto``: bf16 on CUDA, and on a CPU whose oneDNN has native bf16 kernels
  (``torch.ops.mkldnn._is_mkldnn_bf16_supported()``: AVX512-BF16 or AMX, e.g. this project's AMD EPYC);
  fp32 elsewhere, where bf16 on the CPU is emulated and slower than fp32.

Measured on the 2-core EPYC (benchmarks/README.md): the U-Net's training step at batch 8, 224 px is
about 1.5x faster in bf16; masks in bf16 agree with fp32 (tests/test_precision.py).
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("auto", "fp32", "bf16")


def cpu_supports_bf16() -> bool:
    """Whether this CPU runs bf16 matmuls and convolutions natively (oneDNN's own check)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def check_precision(precision: str, where: str = "precision") -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else a ValueError naming the setting and the choices."""
    if precision not in PRECISIONS:
        raise ValueError(f"{where}: {precision!r} is not a precision; use one of {', '.join(PRECISIONS)}.")
    return precision


def resolve_precision(precision: str, device: torch.device | str, where: str = "precision") -> str:
    """``fp32`` or ``bf16``: what ``precision`` (``auto | fp32 | bf16``) means on ``device``; ``where`` names
    the setting in the error for any other value."""
    check_precision(precision, where)
    if precision != "auto":
        return precision
    device_type = torch.device(device).type
    if device_type == "cuda" or (device_type == "cpu" and cpu_supports_bf16()):
        return "bf16"
    return "fp32"


def autocast(resolved: str, device: torch.device | str):
    """The context a forward runs in for a RESOLVED precision (``fp32`` or ``bf16``) on ``device``."""
    device_type = torch.device(device).type
    if resolved == "bf16":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    if resolved == "fp32":
        return (
            torch.autocast(device_type, enabled=False) if device_type in ("cpu", "cuda") else contextlib.nullcontext()
        )
    raise ValueError(
        f"autocast takes a resolved precision (fp32 or bf16), got {resolved!r}; call resolve_precision first."
    )


def device_and_autocast(
    precision: str = "auto", device: torch.device | None = None, where: str = "params.yaml train.common.precision"
):
    """(device, autocast context, resolved precision): CUDA when present, else the CPU; the context runs
    the forward in ``precision`` resolved for that device (:func:`resolve_precision`)."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = resolve_precision(precision, device, where)
    return device, autocast(resolved, device), resolved
