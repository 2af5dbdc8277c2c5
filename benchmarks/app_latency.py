"""How long the app takes to answer one 640 x 640 photo (prediction + measurement + files), on 2 threads.

    .venv/bin/python benchmarks/app_latency.py [--model models/unet] [--threads 2] [--repeats 7]

Times ``promptseg.serve.app.segment`` (what the Segment button runs, without the browser round trip) on a
synthetic 640 x 640 crack photo, median of ``--repeats`` after one warm-up, with the PyTorch engine and,
where the model has an ONNX export, the ONNX engine; at threshold 0.5 and at the threshold that lights 3% of
the photo (a real crack mask's share: an untrained model lights almost everything at 0.5, and measuring a
near-full mask costs far more than a crack). Without ``--model`` (or when models/unet does not
exist) it builds an UNTRAINED U-Net sized by params.yaml's ``model.unet`` and ``train.rungs.unet.image_size``
(the same layers, so the same cost as a trained one) and exports it to ONNX in a temporary folder.
Target: under 0.5 s.
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
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def untrained_unet(params: dict, out: Path) -> Path:
    from promptseg.infer.onnx_engine import export_model_dir
    from promptseg.modeling.unet import build_unet_model

    size = int(params["train"]["rungs"]["unet"].get("image_size", params["train"]["common"]["image_size"]))
    model, processor = build_unet_model(params["model"], size, 0)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    prompts = {d: params["data"][d]["prompts"] for d in ("cracks", "drywall")}
    (out / "promptseg.json").write_text(json.dumps({"rung": "unet", "prompts": prompts}))
    export_model_dir(out)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    import numpy as np

    from promptseg.ingest.synthetic import render_wall_sample
    from promptseg.serve.app import load_app_model, segment

    params = yaml.safe_load(Path(args.params).read_text())
    tmp = Path(tempfile.mkdtemp(prefix="app-latency-"))
    model = Path(args.model) if args.model else REPO / "models" / "unet"
    trained = model.is_dir()
    if not trained:
        model = untrained_unet(params, tmp / "unet")
    photo = tmp / "wall.jpg"
    rgb = cv2.cvtColor(render_wall_sample("cracks", np.random.default_rng(0), 640).image, cv2.COLOR_BGR2RGB)
    cv2.imwrite(str(photo), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    report = {
        "model": str(model) if trained else "untrained U-Net (params.yaml model.unet), same cost as a trained one",
        "photo": "640x640",
        "threads": args.threads,
    }
    from promptseg.infer.recipe import Recipe

    for engine, lit in [(e, s) for e in ("torch", "onnx") for s in ("recipe", "3%")]:
        try:
            app = load_app_model(model, engine=engine, eval_path=tmp / "none.json", threads=args.threads)
        except Exception as exc:  # noqa: BLE001 -- no export for onnx, or it cannot load
            report[engine] = f"skipped: {exc}"
            continue
        threshold = 0.5  # no recipe file here: the fallback
        if lit == "3%":  # the threshold that lights 3% of the photo, as a real crack mask does (median 2.9%)
            probs = app.engine.probabilities([rgb], "segment crack", Recipe())[0]
            threshold = float(np.quantile(probs, 0.97))
        times, parts = [], []
        for i in range(args.repeats + 1):
            started = time.perf_counter()
            result = segment(app, str(photo), "segment crack", threshold, 0.5, 0.2, tmp / "out")
            if i:
                times.append(time.perf_counter() - started)
                parts.append((result["seconds_predict"], result["seconds_measure"]))
            assert "error" not in result, result
        report[f"{engine}, threshold {'0.5' if lit == 'recipe' else 'lighting 3%'}"] = {
            "median_s": round(statistics.median(times), 3),
            "max_s": round(max(times), 3),
            "median_predict_s": round(statistics.median(p for p, _ in parts), 3),
            "median_measure_s": round(statistics.median(m for _, m in parts), 3),
            "mask_lit_share": round(result["lit_share"], 3),
        }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
