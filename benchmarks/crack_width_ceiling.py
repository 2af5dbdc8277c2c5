"""Where a crack model loses IoU: finding the crack, or guessing the width the annotator drew it at.

    .venv/bin/python benchmarks/crack_width_ceiling.py models/hed_full metrics/eval/hed_full.json [--precision bf16]

For the rung's val and test crack photos (``data/processed`` of the workspace), with the recipe its evaluation
scored (``<dataset>.recipe`` of the eval JSON: threshold chosen on val, morphology, ...; ``--precision`` may
override the precision for speed), prints per split:
- the model's masks, scored as evaluation scores them (mIoU over images, the first prompt);
- the model's own centerline (the skeleton of its mask) drawn at one width, the best over ``--radii``, and at
  each image's best width (``promptseg.score.ceilings.centerline_width_scores``): what its localisation is worth
  if the width were guessed as well as a constant, or perfectly;
- the labels' own centerline, the same way (``label_ceilings``): what the labels allow a model that finds every
  crack exactly.
Writes nothing. Time alone: two torch jobs on 2 cores thrash.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("eval_json", help="the rung's metrics/eval/<rung>.json (its cracks recipe is used)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default=None)
    parser.add_argument("--radii", default="1,2,3,4,6,8,12,16,24,32")
    parser.add_argument("--processed", default="data/processed")
    args = parser.parse_args()

    from promptseg.images import load_split
    from promptseg.infer.engines import load_segmenter
    from promptseg.infer.recipe import Recipe
    from promptseg.metrics import image_scores
    from promptseg.params import load_params
    from promptseg.score.ceilings import centerline_width_scores, label_ceilings
    from promptseg.settings import evaluate_settings

    radii = [int(r) for r in args.radii.split(",")]
    recipe = Recipe.from_dict(json.loads(Path(args.eval_json).read_text())["cracks"]["recipe"], args.eval_json)
    if args.precision:
        recipe = replace(recipe, precision=args.precision)
    params = load_params()
    prompt = params["data"]["cracks"]["prompts"][0]
    empty_score = evaluate_settings(params).eval.empty_score  # the rule evaluation scored with
    segmenter = load_segmenter(args.model_dir, "torch")
    print(f"{args.model_dir}, prompt {prompt!r}: {recipe.describe()}")
    for split in ("val", "test"):
        data = load_split(Path(args.processed), "cracks", split)
        if not data.images:
            continue
        start = time.perf_counter()
        masks = [m > 0 for m in segmenter.masks(data.images, prompt, recipe)]
        segmenter.forget_encodings()
        seconds = time.perf_counter() - start
        model = image_scores(masks, data.truths, empty_score=empty_score, tolerance_px=0, thin=False)["iou"].mean()
        drawn = centerline_width_scores(masks, data.truths, radii, empty_score=empty_score)
        labels = label_ceilings(data.truths, radii, empty_score=empty_score)
        print(f"{split} ({len(data.images)} photos, predicted in {seconds:.0f} s)")
        print(f"  model masks                      mIoU {model:.3f}")
        for name, scores in (("model's centerline", drawn), ("labels' own centerline", labels)):
            one, each = scores["one width"], scores["each image's width"]
            print(
                f"  {name:<24} one width (r {one['radius_px']:>2} px) mIoU {one['miou']:.3f}; "
                f"each image's best width {each['miou']:.3f}"
            )
        widths = labels["label_width_px"] or {}
        print("  label width px (area / skeleton): " + ", ".join(f"{k} {v:.1f}" for k, v in widths.items()))


if __name__ == "__main__":
    main()
