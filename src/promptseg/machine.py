"""The machine that made a number: CPU, the instruction set its kernels used, GPU, library versions, precision.

Floating-point results depend on the kernels that computed them: the same seed and data train a different
U-Net on an Intel Xeon with AMX than on an AMD EPYC with AVX512-BF16 (docs/reproducibility.md). Every
training and evaluation metrics file, the model card and the MLflow run therefore carry
``"machine": machine_facts(...)``, one flat dict of STRINGS under one key, so ``dvc metrics diff`` shows the
numbers that changed and never diffs a version or a thread count as if it were a metric.

Fields: ``cpu`` (model name from /proc/cpuinfo, else ``platform.processor()``), ``cpu_flags`` (the flags
that select oneDNN's kernels: AMX, AVX512-BF16, AVX512F, AVX2, in that order, space-separated),
``onednn_isa`` (the best of those oneDNN dispatches to, honouring ``ONEDNN_MAX_CPU_ISA``),
``aten_cpu_capability`` (``torch.backends.cpu.get_cpu_capability()``: ATen's own vector kernels), ``gpu``
(CUDA device name or ``none``), ``torch``, ``onednn``, ``cuda`` (``none`` without CUDA), ``precision``
(the resolved precision, ``fp32`` or ``bf16``), ``threads`` (``torch.get_num_threads()``), ``device``.
"""

from __future__ import annotations

import os
import platform
import re
from functools import cache
from pathlib import Path

import torch

__all__ = ["MACHINE_KEY", "machine_facts", "machine_tags", "cpu_model", "cpu_flags", "onednn_isa", "onednn_version"]

MACHINE_KEY = "machine"
# /proc/cpuinfo flags that pick oneDNN's kernels, best first: (flag, the oneDNN ISA it enables)
_ISA_FLAGS = (
    ("amx_bf16", "avx512_core_amx"),
    ("avx512_bf16", "avx512_core_bf16"),
    ("avx512f", "avx512_core"),
    ("avx2", "avx2"),
)
_ISA_ORDER = ("sse41", "avx", "avx2", "avx512_core", "avx512_core_vnni", "avx512_core_bf16", "avx512_core_amx")


def _cpuinfo(path: Path = Path("/proc/cpuinfo")) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


@cache
def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo's first ``model name``), else ``platform.processor()`` or ``unknown``."""
    match = re.search(r"^model name\s*:\s*(.+)$", _cpuinfo(), re.MULTILINE)
    return (match.group(1).strip() if match else platform.processor()) or "unknown"


def cpu_flags(cpuinfo: str | None = None) -> list[str]:
    """Which of AMX-BF16, AVX512-BF16, AVX512F, AVX2 this CPU has (the first ``flags`` line), best first."""
    text = _cpuinfo() if cpuinfo is None else cpuinfo
    match = re.search(r"^flags\s*:\s*(.+)$", text, re.MULTILINE)
    present = set(match.group(1).split()) if match else set()
    return [flag for flag, _ in _ISA_FLAGS if flag in present]


def onednn_isa(flags: list[str], max_isa: str | None = None) -> str:
    """The best ISA oneDNN dispatches to given ``flags`` (:func:`cpu_flags`), capped by ``max_isa``
    (the ``ONEDNN_MAX_CPU_ISA`` / ``DNNL_MAX_CPU_ISA`` variable, as oneDNN reads it); ``unknown`` if none."""
    best = next((isa for flag, isa in _ISA_FLAGS if flag in flags), "unknown")
    cap = (max_isa or "").strip().lower()
    if cap in _ISA_ORDER and best in _ISA_ORDER and _ISA_ORDER.index(cap) < _ISA_ORDER.index(best):
        return f"{cap} (capped by ONEDNN_MAX_CPU_ISA)"
    return best


@cache
def onednn_version() -> str:
    """oneDNN's version as torch was built with it (``torch.__config__.show()``), or ``none``."""
    match = re.search(r"(?:MKL-DNN|oneDNN) v([0-9.]+)", torch.__config__.show())
    return match.group(1) if match else "none"


def machine_facts(precision: str | None = None, device: str | None = None) -> dict[str, str]:
    """The machine facts that change numbers, all strings (module docstring). ``precision``: the resolved
    precision the numbers were computed in; ``device``: ``cpu`` or ``cuda[:n]`` (default: cuda if available)."""
    flags = cpu_flags()
    has_cuda = torch.cuda.is_available()
    device = str(device) if device is not None else ("cuda" if has_cuda else "cpu")
    gpu = torch.cuda.get_device_name(torch.device(device) if device.startswith("cuda") else 0) if has_cuda else "none"
    return {
        "cpu": cpu_model(),
        "cpu_flags": " ".join(flags) or "none",
        "onednn_isa": onednn_isa(flags, os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")),
        "aten_cpu_capability": str(torch.backends.cpu.get_cpu_capability()),
        "gpu": gpu,
        "device": device,
        "torch": torch.__version__,
        "onednn": onednn_version(),
        "cuda": torch.version.cuda or "none",
        "precision": str(precision) if precision is not None else "unknown",
        "threads": str(torch.get_num_threads()),
    }


def machine_tags(facts: dict[str, str], prefix: str = MACHINE_KEY) -> dict[str, str]:
    """``facts`` as MLflow run tags: ``<prefix>.<field>`` -> value (tags, not params: they are not settings)."""
    return {f"{prefix}.{key}": str(value) for key, value in facts.items()}
