"""promptseg.machine: the facts that say which machine and which kernels made a number, all strings."""

import json

import torch

from promptseg.machine import MACHINE_KEY, cpu_flags, cpu_model, machine_facts, machine_tags, onednn_isa

AMD = "processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu sse avx avx2 avx512f avx512_bf16 avx512_vnni\n"
INTEL = "model name\t: Intel(R) Xeon(R) Processor\nflags\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
OLD = "model name\t: Intel(R) Core(TM) i7-4770\nflags\t: sse4_1 avx avx2 fma\n"


def test_cpu_flags_and_the_isa_onednn_dispatches_to():
    assert cpu_flags(AMD) == ["avx512_bf16", "avx512f", "avx2"] and onednn_isa(cpu_flags(AMD)) == "avx512_core_bf16"
    assert cpu_flags(INTEL)[0] == "amx_bf16" and onednn_isa(cpu_flags(INTEL)) == "avx512_core_amx"
    assert cpu_flags(OLD) == ["avx2"] and onednn_isa(cpu_flags(OLD)) == "avx2"
    assert cpu_flags("") == [] and onednn_isa([]) == "unknown"
    # ONEDNN_MAX_CPU_ISA caps it (oneDNN's own switch, e.g. to reproduce an AVX512-BF16 run on an AMX machine)
    assert onednn_isa(cpu_flags(INTEL), "AVX512_CORE_BF16") == "avx512_core_bf16 (capped by ONEDNN_MAX_CPU_ISA)"
    assert onednn_isa(cpu_flags(AMD), "avx512_core_amx") == "avx512_core_bf16"  # a cap above the CPU changes nothing


def test_machine_facts_are_strings_under_one_key_and_name_this_machine(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    facts = machine_facts("bf16", "cpu")
    assert set(facts) == {
        "cpu",
        "cpu_flags",
        "onednn_isa",
        "aten_cpu_capability",
        "gpu",
        "device",
        "torch",
        "onednn",
        "cuda",
        "precision",
        "threads",
    }
    assert all(isinstance(v, str) and v for v in facts.values())  # `dvc metrics diff` never diffs them as numbers
    assert facts["cpu"] == cpu_model() and facts["precision"] == "bf16" and facts["device"] == "cpu"
    assert facts["torch"] == torch.__version__ and facts["threads"] == str(torch.get_num_threads())
    assert facts["aten_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert facts["onednn"].count(".") == 2 and facts["onednn"] in torch.__config__.show()
    assert facts["cuda"] == (torch.version.cuda or "none")
    assert facts["gpu"] == (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
    with open("/proc/cpuinfo") as handle:
        assert f": {facts['cpu']}" in handle.read()
    assert json.loads(json.dumps({MACHINE_KEY: facts}))[MACHINE_KEY] == facts
    assert machine_tags({"cpu": "X", "threads": "2"}, "eval_machine") == {
        "eval_machine.cpu": "X",
        "eval_machine.threads": "2",
    }
