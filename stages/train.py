"""DVC stage `train@<variant>`: train one rung of params.yaml's train.variants (settings checked once, here)."""

import sys
from pathlib import Path

from promptseg.settings import load_stage_settings, train_settings
from promptseg.train import TrainSetup, train_variant


def main(variant: str) -> None:
    setup = TrainSetup(
        settings=load_stage_settings(f"train@{variant}", train_settings, variant),
        processed_root=Path("data/processed"),
        model_dir=Path("models") / variant,
        metrics_dir=Path("metrics/train"),
        checkpoint_dir=Path("checkpoints") / variant,
    )
    summary = train_variant(setup)
    if "skipped" in summary:
        return
    print(
        f"[train] {variant}: trainable {summary['trainable_params']:,} of {summary['total_params']:,}; "
        f"final val Dice {summary['final_val_dice']:.3f}"
    )


if __name__ == "__main__":
    main(sys.argv[1])
