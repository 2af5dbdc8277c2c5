"""How the synthetic default compares with real Roboflow exports: one markdown table.

    .venv/bin/python benchmarks/synthetic_vs_real.py [--real-cracks DIR] [--real-drywall DIR ...] [--params params.yaml]

The synthetic sets are generated into a temporary folder with params.yaml's ``synthetic``
section (augmentation copies off: they would count photos twice). The real exports default to
``../shared/real/`` beside the repository (cracks-3ii36-yg05p, drywall-join-detect-7nstl and
drywall-join-detect-v1). Every figure is per image, shown as ``median (p10-p90)``:

* foreground fraction of the rendered mask (promptseg.ingest.masks, the pipeline's own rendering;
  drywall real exports are boxes, the synthetic drywall export is boxes too);
* instances: annotations (COCO) or label lines (YOLO) per image;
* crack width in px, cracks only: ``2 x max`` of the Euclidean distance transform of the mask
  (the maximum lies on the skeleton) -- "widest point" -- and ``2 x median`` of the transform
  on its ridge (pixels that are a 3x3 local maximum, the medial axis) -- "typical width";
  also scaled to a 640 px image side;
* boxes: long side / image side, short side / image side, aspect (long / short);
* brightness: mean of the gray image; contrast: its standard deviation.

The last column says whether the synthetic median lies inside the real p10-p90 range of
every real export of that dataset ("yes"), or which side it falls ("LOW" / "HIGH").
Runs in about 15-25 s on 2 cores.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from promptseg.ingest.exports import read_export  # noqa: E402
from promptseg.ingest.masks import render_record_mask  # noqa: E402
from promptseg.ingest.synthetic import write_synthetic_export  # noqa: E402

REAL = REPO.parent / "shared" / "real"


def _instances_per_image(root: Path, records) -> dict[str, int]:
    """image path -> number of annotations (COCO) or label lines (YOLO)."""
    counts: dict[str, int] = collections.Counter()
    for ann_file in root.glob("*/_annotations.coco.json"):
        data = json.loads(ann_file.read_text())
        names = {im["id"]: str(ann_file.parent / im["file_name"]) for im in data["images"]}
        for a in data["annotations"]:
            counts[names.get(a["image_id"], "?")] += 1
    if not counts:
        for rec in records:
            lbl = rec.image_path.parent.parent / "labels" / (rec.image_path.stem + ".txt")
            if lbl.is_file():
                counts[str(rec.image_path)] = sum(1 for line in lbl.read_text().splitlines() if line.strip())
    return {str(r.image_path): counts.get(str(r.image_path), 0) for r in records}


def _crack_widths(mask: np.ndarray) -> tuple[float, float] | None:
    """(2 x max distance transform, 2 x median on its ridge) of a {0,255} mask; None if empty."""
    if not mask.any():
        return None
    dt = cv2.distanceTransform((mask > 0).astype(np.uint8), cv2.DIST_L2, 5)
    ridge = (dt > 0) & (dt >= cv2.dilate(dt, np.ones((3, 3), np.uint8)))
    return 2.0 * float(dt.max()), 2.0 * float(np.median(dt[ridge]))


def measure(root: Path, *, cracks: bool) -> dict[str, list[float]]:
    """Per-image figures of one export (see the module docstring)."""
    read = read_export(root)
    inst = _instances_per_image(root, read.records)
    out: dict[str, list[float]] = collections.defaultdict(list)
    for rec in read.records:
        img = cv2.imread(str(rec.image_path), cv2.IMREAD_COLOR)
        if img is None:
            continue
        h, w = img.shape[:2]
        gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float32)
        out["brightness (mean gray)"].append(float(gray.mean()))
        out["contrast (std gray)"].append(float(gray.std()))
        mask = render_record_mask(rec, h, w, collections.Counter())
        out["foreground fraction"].append(float(np.count_nonzero(mask)) / mask.size)
        out["instances per image"].append(float(inst.get(str(rec.image_path), 0)))
        for shape in rec.shapes:
            if shape.kind == "box":
                x0, y0, x1, y1 = shape.box
            elif shape.kind == "polygon":
                (x0, y0), (x1, y1) = shape.points.min(0), shape.points.max(0)
            else:
                continue
            bw, bh = max(x1 - x0, 1e-6), max(y1 - y0, 1e-6)
            side = float(max(w, h))
            out["box long side / image side"].append(max(bw, bh) / side)
            out["box short side / image side"].append(min(bw, bh) / side)
            out["box aspect (long / short)"].append(max(bw, bh) / min(bw, bh))
        if cracks:
            cw = _crack_widths(mask)
            if cw is not None:
                scale = 640.0 / max(w, h)
                out["crack width, widest (px)"].append(cw[0])
                out["crack width, typical (px)"].append(cw[1])
                out["crack width, widest (px at 640)"].append(cw[0] * scale)
                out["crack width, typical (px at 640)"].append(cw[1] * scale)
    out["images"] = [float(len(read.records))]
    return out


ROWS = (
    "images",
    "foreground fraction",
    "instances per image",
    "crack width, widest (px)",
    "crack width, typical (px)",
    "crack width, widest (px at 640)",
    "crack width, typical (px at 640)",
    "box long side / image side",
    "box short side / image side",
    "box aspect (long / short)",
    "brightness (mean gray)",
    "contrast (std gray)",
)
# Figures whose value in px depends on the image side (320 synthetic vs 640 real): not judged.
NOT_JUDGED = {"images", "crack width, widest (px)", "crack width, typical (px)"}


def _fmt(v: float) -> str:
    a = abs(v)
    return f"{v:.0f}" if a >= 100 else f"{v:.1f}" if a >= 10 else f"{v:.2f}" if a >= 0.1 else f"{v:.3f}"


def _cell(vals: list[float], key: str) -> str:
    if not vals:
        return "-"
    if key == "images":
        return str(int(vals[0]))
    p10, p50, p90 = np.percentile(vals, [10, 50, 90])
    return f"{_fmt(p50)} ({_fmt(p10)}-{_fmt(p90)})"


def _judge(syn: list[float], reals: list[list[float]], key: str) -> str:
    if key in NOT_JUDGED or not syn or not any(reals):
        return ""
    med = float(np.median(syn))
    verdicts = []
    for vals in reals:
        if not vals:
            continue
        p10, p90 = np.percentile(vals, [10, 90])
        verdicts.append("LOW" if med < p10 else "HIGH" if med > p90 else "yes")
    if all(v == "yes" for v in verdicts):
        return "yes"
    return "/".join(verdicts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--real-cracks", type=Path, default=REAL / "cracks-3ii36-yg05p")
    parser.add_argument(
        "--real-drywall",
        type=Path,
        nargs="*",
        default=[REAL / "drywall-join-detect-7nstl", REAL / "drywall-join-detect-v1"],
    )
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    args = parser.parse_args()
    syn_cfg = yaml.safe_load(args.params.read_text())["synthetic"]

    columns: list[tuple[str, str, dict]] = []  # (dataset, title, figures)
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in ("cracks", "drywall"):
            out = Path(tmp) / dataset
            write_synthetic_export(
                dataset,
                out,
                seed=int(syn_cfg["seed"]),
                image_size=int(syn_cfg["image_size"]),
                counts=dict(syn_cfg["counts"]),
                negative_share=float(syn_cfg["negative_share"]),
                augment_copies_share=0.0,
            )
            columns.append(
                (dataset, f"synthetic {dataset} ({syn_cfg['image_size']} px)", measure(out, cracks=dataset == "cracks"))
            )
            reals = [args.real_cracks] if dataset == "cracks" else list(args.real_drywall)
            for root in reals:
                if root.is_dir():
                    columns.append((dataset, f"real {root.name}", measure(root, cracks=dataset == "cracks")))
                else:
                    print(f"(skipping {root}: not found)", file=sys.stderr)

    for dataset in ("cracks", "drywall"):
        cols = [c for c in columns if c[0] == dataset]
        syn = cols[0][2]
        real_cols = cols[1:]
        header = ["figure (median (p10-p90) per image)", *(t for _, t, _ in cols), "synthetic median in real p10-p90?"]
        print(f"\n### {dataset}\n")
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for key in ROWS:
            if not any(f.get(key) for _, _, f in cols):
                continue
            cells = [_cell(f.get(key, []), key) for _, _, f in cols]
            verdict = _judge(syn.get(key, []), [f.get(key, []) for _, _, f in real_cols], key)
            print("| " + " | ".join([key, *cells, verdict]) + " |")


if __name__ == "__main__":
    main()
