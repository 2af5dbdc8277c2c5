"""Train one rung with param overrides and print its val scores next to trivial masks (an experiment, not a stage).

    python benchmarks/rung_on_val.py full -S model.clipseg.vision.patch_size=8 -S train.common.image_size=160

Reads ``params.yaml`` (with the CLIPSeg rungs of ``profiles/clipseg-small.yaml``) and the processed data of the current workspace (``dvc repro masks@cracks
masks@drywall`` first), applies each ``-S key=value`` (the value parsed as YAML), trains the rung with
``promptseg.train.loop.train_rung`` into a temporary folder (no MLflow run, nothing in the workspace
changes) and prints one ``RESULT`` JSON line. Per dataset, on the val split, at the threshold (0.1 ...
0.9) that maximises the mean per-image Dice of the dataset's first prompt:

- ``dice``, ``thr``; ``zeros`` / ``ones``: what an all-zeros / all-ones mask scores on the same images;
- ``lit``: mean share of pixels lit by the first prompt; ``cross_lit``: by the other dataset's first
  prompt; ``unrel_lit``: by ``eval.unrelated_prompts`` (prompts the model was never trained on).

No morphology here: this compares training settings; the pipeline's evaluate stage gives the reported figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from promptseg.images import list_split, read_rgb
from promptseg.infer.torch_engine import load_trained_model  # noqa: E402
from promptseg.metrics import iou_dice, lit_fraction  # noqa: E402
from promptseg.profiles import params_with_profiles  # noqa: E402
from promptseg.settings import train_settings  # noqa: E402
from promptseg.train.loop import TrainSetup, train_rung  # noqa: E402


def set_key(params: dict, dotted: str, value) -> None:
    *path, last = dotted.split(".")
    for key in path:
        params = params[key]
    if last not in params:
        raise KeyError(f"{dotted} is not in params.yaml")
    params[last] = value


def image_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    return iou_dice(pred, truth, empty_score=1.0)[1]


def val_scores(trained, processed: Path, dataset: str, prompts: dict, unrelated: list[str]) -> dict:
    pairs = list_split(processed, dataset, "val")
    images = [read_rgb(image) for image, _ in pairs]
    truths = [cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE) > 127 for _, mask in pairs]
    own = trained.whole_image_probabilities(images, [prompts[dataset][0]] * len(images))
    other = next(ps[0] for d, ps in prompts.items() if d != dataset)
    cross = trained.whole_image_probabilities(images, [other] * len(images))
    unrel = [p for prompt in unrelated for p in trained.whole_image_probabilities(images, [prompt] * len(images))]
    dice, threshold = max(
        (float(np.mean([image_dice(p > t, g) for p, g in zip(own, truths)])), round(float(t), 2))
        for t in np.arange(0.1, 0.95, 0.1)
    )

    def lit(probs):
        return round(float(np.mean([lit_fraction(p > threshold) for p in probs])), 3)

    return {
        "dice": round(dice, 3),
        "thr": threshold,
        "zeros": round(float(np.mean([image_dice(np.zeros_like(g), g) for g in truths])), 3),
        "ones": round(float(np.mean([image_dice(np.ones_like(g), g) for g in truths])), 3),
        "lit": lit(own),
        "cross_lit": lit(cross),
        "unrel_lit": lit(unrel) if unrel else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rung", help="a key of train.rungs")
    parser.add_argument("-S", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--processed", type=Path, default=Path("data/processed"))
    args = parser.parse_args()
    params = params_with_profiles("clipseg-small")  # the default ladder + the CLIPSeg rungs it leaves out
    for item in args.overrides:
        key, value = item.split("=", 1)
        set_key(params, key, yaml.safe_load(value))
    prompts = {d: params["data"][d]["prompts"] for d in ("cracks", "drywall")}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        setup = TrainSetup(
            settings=train_settings(params, args.rung),
            processed_root=args.processed,
            model_dir=root / "model",
            metrics_dir=root / "metrics",
            checkpoint_dir=root / "checkpoints",
        )
        start = time.perf_counter()
        train_rung(setup)
        result = {"rung": args.rung, "overrides": args.overrides, "train_s": round(time.perf_counter() - start)}
        trained = load_trained_model(setup.model_dir)
        for dataset in prompts:
            result[dataset] = val_scores(trained, args.processed, dataset, prompts, params["eval"]["unrelated_prompts"])
        print("RESULT", json.dumps(result))
        print((root / "metrics" / args.rung / "plots" / "metrics" / "val_dice.tsv").read_text())


if __name__ == "__main__":
    main()
