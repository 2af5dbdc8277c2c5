"""Run by tests/test_distributed.py under `accelerate launch --cpu --num_processes 2`: one tiny training run.

Usage: distributed_training.py <processed_root> <out_root> <variant> [<variant> ...]   (full, lora, unet)
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from conftest import PROMPTS, TINY_MODEL  # noqa: E402
from promptseg.train import TrainSetup, train_variant  # noqa: E402

COMMON = {"seed": 42, "image_size": 64, "epochs": 2, "batch_size": 2, "lr": 3e-3, "weight_decay": 0.01,
          "warmup_steps": 0, "hflip_prob": 0.5, "negative_prompt_prob": 0.25, "num_workers": 0}
VARIANTS = {"full": {"method": "full", "datasets": ["cracks", "drywall"]},
            "lora": {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0, "targets": ["q_proj", "v_proj"],
                     "train_decoder": True, "datasets": ["cracks", "drywall"]},
            "unet": {"method": "full", "architecture": "unet", "datasets": ["cracks", "drywall"]}}
MODEL = {**TINY_MODEL, "unet": {"widths": [8, 16, 32, 64], "freeze_text": False, "presence_gate": True,
                                "text": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                                         "intermediate_size": 64}}}

if __name__ == "__main__":
    processed_root, out = Path(sys.argv[1]), Path(sys.argv[2])
    for variant in sys.argv[3:]:
        train_variant(TrainSetup(variant=variant, variant_cfg=VARIANTS[variant], common=COMMON, model_cfg=MODEL,
                                 prompts=PROMPTS, processed_root=processed_root, model_dir=out / "models" / variant,
                                 metrics_dir=out / "metrics", checkpoint_dir=out / "checkpoints" / variant))
