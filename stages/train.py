"""DVC stage `train@<variant>`: train one variant of params.yaml's train.variants."""
import sys
from pathlib import Path

from promptseg.params import DATASETS, load_params, section
from promptseg.train import TrainSetup, train_variant


def main(variant: str) -> None:
    params = load_params()
    setup = TrainSetup(
        variant=variant,
        variant_cfg=section(params, f"train.variants.{variant}"),
        common=section(params, "train.common"),
        model_cfg=section(params, "model"),
        prompts={name: section(params, f"data.{name}.prompts") for name in DATASETS},
        processed_root=Path("data/processed"),
        model_dir=Path("models") / variant,
        metrics_dir=Path("metrics/train"),
        checkpoint_dir=Path("checkpoints") / variant,
        mlflow_cfg=section(params, "mlflow"),
    )
    summary = train_variant(setup)
    if "skipped" in summary:
        return
    print(f"[train] {variant}: trainable {summary['trainable_params']:,} of {summary['total_params']:,}; "
          f"final val Dice {summary['final_val_dice']:.3f}")


if __name__ == "__main__":
    main(sys.argv[1])
