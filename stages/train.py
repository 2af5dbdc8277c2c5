"""DVC stage `train@<rung>`: train one rung of params.yaml's train.rungs (settings checked once, here)."""

import sys

from promptseg import paths
from promptseg.images import EmptySplitError
from promptseg.settings import load_stage_settings, train_settings
from promptseg.train.loop import TrainSetup, train_rung


def main(rung: str) -> None:
    setup = TrainSetup(
        settings=load_stage_settings(f"train@{rung}", train_settings, rung),
        processed_root=paths.DATA_PROCESSED,
        model_dir=paths.model_dir(rung),
        metrics_dir=paths.METRICS_TRAIN,
        checkpoint_dir=paths.checkpoint_dir(rung),
    )
    try:
        summary = train_rung(setup)
    except EmptySplitError as exc:  # e.g. split: as_exported on an export without a train split
        sys.exit(f"train@{rung}: {exc}")
    if "skipped" in summary:
        return
    print(
        f"[train] {rung}: trainable {summary['trainable_params']:,} of {summary['total_params']:,}; "
        f"final val Dice {summary['final_val_dice']:.3f}"
    )


if __name__ == "__main__":
    main(sys.argv[1])
