"""Run by tests/test_distributed.py under `accelerate launch --cpu --num_processes 2`: one tiny training run.

Usage: distributed_training.py <processed_root> <out_root> <rung> [<rung> ...]   (full, lora, unet)
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from promptseg.train.loop import TrainSetup, train_rung  # noqa: E402

from conftest import TINY_MODEL, TINY_RUNGS, TINY_UNET, tiny_train_settings  # noqa: E402

COMMON = {"epochs": 2, "batch_size": 2, "negative_prompt_prob": 0.25}  # over conftest.TINY_COMMON
RUNGS = {**TINY_RUNGS, "lora": {**TINY_RUNGS["lora"], "dropout": 0.0}}
MODEL = {**TINY_MODEL, "unet": TINY_UNET}

if __name__ == "__main__":
    processed_root, out = Path(sys.argv[1]), Path(sys.argv[2])
    for rung in sys.argv[3:]:
        train_rung(
            TrainSetup(
                settings=tiny_train_settings(rung, RUNGS[rung], COMMON, model=MODEL),
                processed_root=processed_root,
                model_dir=out / "models" / rung,
                metrics_dir=out / "metrics",
                checkpoint_dir=out / "checkpoints" / rung,
            )
        )
