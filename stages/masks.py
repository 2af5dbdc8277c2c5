"""DVC stage `masks@<dataset>`: parse the raw export, render {0,255} masks, write metrics/data/<dataset>.json."""
import json
import sys
from pathlib import Path

from promptseg.exports import read_export
from promptseg.masks import build_processed_dataset
from promptseg.params import check_dataset, load_params, section


def main(dataset: str) -> None:
    params = load_params()
    check_dataset(dataset)
    raw, out = Path("data/raw") / dataset, Path("data/processed") / dataset
    read = read_export(raw, empty_segmentation=section(params, f"data.{dataset}.empty_polygon"))
    for problem in read.problems[:20]:
        print(f"[masks] {dataset}: {problem}")
    if len(read.problems) > 20:
        print(f"[masks] {dataset}: ... and {len(read.problems) - 20} more problems (counted in metrics/data/{dataset}.json)")
    try:
        summary = build_processed_dataset(read, out, min_box_side_px=float(section(params, "masks.min_box_side_px")))
    except ValueError as exc:
        sys.exit(f"masks@{dataset}: {exc}")
    metrics = Path("metrics/data") / f"{dataset}.json"
    metrics.parent.mkdir(parents=True, exist_ok=True)
    metrics.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    print(f"[masks] {dataset}: wrote {out} and {metrics}")


if __name__ == "__main__":
    main(sys.argv[1])
