"""How accurate and how fast `promptseg measure` is, against the synthetic cracks' true geometry.

    .venv/bin/python benchmarks/measure_accuracy.py [--params params.yaml] [--size 320] [--model models/unet]

1. TRUE masks: the cracks export is generated into a temporary folder with params.yaml's
   ``synthetic`` section (augmentation copies off; ``--size`` overrides the image size). Each
   crack annotation that no scene context hides is rasterised on its own (its COCO polygons,
   as promptseg.ingest.masks does) and measured (promptseg.serve.measure with params.yaml's ``measure``
   settings); its truth is the export's sidecar ``true_measures.json`` (promptseg.ingest.synthetic.
   crack_truth: the polylines and widths it was drawn with). Reported: median absolute error of
   the max and mean width (px), median absolute relative error of the length, over all splits.
2. PREDICTED masks, when ``--model`` (default models/unet) exists: the model's masks for the
   test images (threshold from metrics/eval/<rung>.json for cracks, else 0.5; infer.morphology)
   measured per image against the truth of that image (total length; max width over its cracks);
   images where the model finds nothing are counted apart.
3. Cost: median ms per 640 x 640 mask (the union of a 640 px test image's cracks), cv2 on
   ``--threads`` threads (default 2).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from promptseg.ingest.synthetic import TRUE_MEASURES_FILE, write_synthetic_export  # noqa: E402
from promptseg.serve.measure import MeasureSettings, measure_mask  # noqa: E402 (after the sys.path line)


def _rasterise(ann: dict, size: int) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    polys = [np.rint(np.asarray(p, np.float64).reshape(-1, 2)).astype(np.int32) for p in ann["segmentation"]]
    cv2.fillPoly(mask, polys, 255)
    return mask


def _combined(result: dict) -> tuple[float, float, float]:
    """(total length, max width, length-weighted mean width) over a mask's components."""
    comps = result["components"]
    length = sum(c["length_px"] for c in comps)
    mean = sum(c["mean_width_px"] * c["length_px"] for c in comps) / length if length else 0.0
    return length, max((c["max_width_px"] for c in comps), default=0.0), mean


def _export(params: dict, size: int, out: Path) -> Path:
    syn = params["synthetic"]
    write_synthetic_export(
        "cracks",
        out,
        seed=int(syn["seed"]),
        image_size=size,
        counts=syn["counts"],
        negative_share=float(syn["negative_share"]),
        augment_copies_share=0.0,
    )
    return out


def true_mask_errors(root: Path, size: int, settings: MeasureSettings) -> dict:
    truth = json.loads((root / TRUE_MEASURES_FILE).read_text())["splits"]
    max_err, mean_err, len_err, skipped = [], [], [], 0
    for split, images in truth.items():
        coco = json.loads((root / split / "_annotations.coco.json").read_text())
        anns = {a["id"]: a for a in coco["annotations"]}
        for items in images.values():
            for t in items:
                if t["occluded"]:
                    skipped += 1
                    continue
                length, wmax, wmean = _combined(
                    measure_mask(_rasterise(anns[t["annotation_id"]], size), settings=settings)
                )
                max_err.append(wmax - t["max_width_px"])
                mean_err.append(wmean - t["mean_width_px"])
                len_err.append((length - t["length_px"]) / t["length_px"])
    return {
        "cracks": len(max_err),
        "occluded_skipped": skipped,
        "median_abs_max_width_error_px": round(statistics.median(map(abs, max_err)), 2),
        "median_max_width_error_px (signed)": round(statistics.median(max_err), 2),
        "median_abs_mean_width_error_px": round(statistics.median(map(abs, mean_err)), 2),
        "median_abs_rel_length_error": round(statistics.median(map(abs, len_err)), 3),
        "median_rel_length_error (signed)": round(statistics.median(len_err), 3),
        "p90_abs_rel_length_error": round(float(np.percentile(np.abs(len_err), 90)), 3),
        "median_true_max_width_px": round(
            statistics.median(t["max_width_px"] for items in truth["test"].values() for t in items), 2
        )
        if truth.get("test")
        else None,
    }


def predicted_errors(root: Path, model_dir: Path, params: dict, settings: MeasureSettings) -> dict:
    from promptseg.images import read_rgb
    from promptseg.infer.recipe import Recipe
    from promptseg.infer.torch_engine import load_trained_model

    trained = load_trained_model(model_dir)
    rung = str(trained.card.get("rung") or model_dir.name)
    eval_path = REPO / "metrics" / "eval" / f"{rung}.json"
    try:
        threshold = float(json.loads(eval_path.read_text())["cracks"]["threshold"])
    except (OSError, ValueError, KeyError, TypeError):
        threshold = 0.5
    morph = params["infer"]["morphology"]
    prompt = params["data"]["cracks"]["prompts"][0]
    truth = json.loads((root / TRUE_MEASURES_FILE).read_text())["splits"].get("test", {})
    width_err, len_err, missed = [], [], 0
    for name, items in sorted(truth.items()):
        if not items or any(t["occluded"] for t in items):
            continue
        image = read_rgb(root / "test" / name)
        recipe = Recipe(threshold=threshold, morphology=bool(morph["enabled"]), kernel=int(morph["kernel"]))
        mask = trained.masks([image], [prompt], recipe)[0]
        length, wmax, _ = _combined(measure_mask(mask, settings=settings))
        if length == 0:
            missed += 1
            continue
        true_len = sum(t["length_px"] for t in items)
        width_err.append(abs(wmax - max(t["max_width_px"] for t in items)))
        len_err.append(abs(length - true_len) / true_len)
    return {
        "model": str(model_dir),
        "threshold": threshold,
        "prompt": prompt,
        "images": len(width_err),
        "images_with_empty_prediction": missed,
        "median_abs_max_width_error_px": round(statistics.median(width_err), 2) if width_err else None,
        "median_rel_length_error": round(statistics.median(len_err), 3) if len_err else None,
    }


def timing_640(params: dict, settings: MeasureSettings, tmp: Path) -> dict:
    root = _export(
        {**params, "synthetic": {**params["synthetic"], "counts": {"train": 0, "valid": 0, "test": 12}}},
        640,
        tmp / "t640",
    )
    coco = json.loads((root / "test" / "_annotations.coco.json").read_text())
    masks = {}
    for a in coco["annotations"]:
        m = masks.setdefault(a["image_id"], np.zeros((640, 640), np.uint8))
        np.maximum(m, _rasterise(a, 640), out=m)
    times = []
    for mask in masks.values():
        measure_mask(mask, settings=settings)
        started = time.perf_counter()
        measure_mask(mask, settings=settings)
        times.append((time.perf_counter() - started) * 1000)
    return {"masks": len(times), "median_ms": round(statistics.median(times), 1), "max_ms": round(max(times), 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--size", type=int, default=None, help="image size (default: params synthetic.image_size)")
    parser.add_argument("--model", default=str(REPO / "models" / "unet"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    cv2.setNumThreads(args.threads)
    params = yaml.safe_load(Path(args.params).read_text())
    settings = MeasureSettings.from_params(params)
    size = int(args.size or params["synthetic"]["image_size"])
    report: dict = {"image_size": size}
    with tempfile.TemporaryDirectory() as tmp:
        root = _export(params, size, Path(tmp) / "cracks")
        report["true_masks"] = true_mask_errors(root, size, settings)
        if Path(args.model).is_dir():
            report["predicted_masks"] = predicted_errors(root, Path(args.model), params, settings)
        else:
            report["predicted_masks"] = f"skipped: no model folder {args.model} (train it: dvc repro train@unet)"
        report["ms_per_640_mask"] = timing_640(params, settings, Path(tmp))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
