"""Multi-process training through `accelerate launch` (DDP), run here with 2 CPU processes (gloo)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from promptseg.train.loop import check_replicas_agree

DRIVER = Path(__file__).parent / "distributed_training.py"


def test_two_processes_shard_the_batches_and_end_with_the_same_weights(tmp_path, processed_root):
    """2 processes x batch 2 over 16 training images: 4 steps per process per epoch (8 batches in one
    process). The loop itself compares the replicas' weights at the end and exits non-zero if they differ,
    which is what happens when the forward does not go through the DDP wrapper (gradients not all-reduced)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "0",
    ]
    result = subprocess.run(
        launch + [str(DRIVER), str(processed_root), str(tmp_path), "full", "lora", "unet"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for rung in ("full", "lora", "unet"):
        summary = json.loads((tmp_path / "metrics" / f"{rung}.json").read_text())
        assert summary["processes"] == 2 and summary["steps_per_epoch_per_process"] == 4, summary
        rows = (tmp_path / "metrics" / rung / "plots" / "metrics" / "val_dice.tsv").read_text().splitlines()
        assert [r.split("\t")[0] for r in rows] == ["step", "0", "1"], rows  # 2 epochs, logged once (main process)
        assert (tmp_path / "models" / rung / "model.safetensors").exists()
        assert not (tmp_path / "checkpoints" / rung).exists()
    assert result.stdout.count("[train] lora epoch 2/2") == 1  # only the main process reports


class _FakeAccelerator:
    device = torch.device("cpu")

    def __init__(self, other_checksum_offset):
        self.offset = other_checksum_offset

    def gather(self, tensor):
        return torch.cat([tensor, tensor + self.offset])


def test_replica_check_raises_when_weights_differ():
    module = torch.nn.Linear(3, 2)
    check_replicas_agree(_FakeAccelerator(0.0), module)
    with pytest.raises(RuntimeError, match="not all-reduced"):
        check_replicas_agree(_FakeAccelerator(0.5), module)
