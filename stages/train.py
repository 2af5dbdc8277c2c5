"""DVC stage `train@<variant>`: train one rung of params.yaml's train.variants (settings checked once, here)."""

import sys

from promptseg import paths
from promptseg.settings import load_stage_settings, train_settings
from promptseg.train import TrainSetup, train_variant


def main(variant: str) -> None:
    setup = TrainSetup(
        settings=load_stage_settings(f"train@{variant}", train_settings, variant),
        processed_root=paths.DATA_PROCESSED,
        model_dir=paths.model_dir(variant),
        metrics_dir=paths.METRICS_TRAIN,
        checkpoint_dir=paths.checkpoint_dir(variant),
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
