"""DVC stage `report`: metrics/report.md and the headline metrics/summary.json from the metrics files alone
(data, train, eval and the no-learning baselines of metrics/eval/baselines.json; no model, no images).

Params read (each must be declared by the `report` stage in dvc.yaml): model.source, train.variants,
eval.boundary_tolerance_px, infer.hflip_tta, infer.prompt_ensemble.
"""
from pathlib import Path

from promptseg.params import DATASETS, load_params, section
from promptseg.report import write_report


def main() -> None:
    params = load_params()
    infer = section(params, "infer")
    variants = list(section(params, "train.variants"))  # the ladder, in params order
    out, summary = Path("metrics/report.md"), Path("metrics/summary.json")
    write_report(Path("metrics"), out, variants=variants, model_source=str(section(params, "model.source")),
                 datasets=DATASETS, boundary_tolerance_px=int(section(params, "eval.boundary_tolerance_px")),
                 infer_defaults={"hflip_tta": bool(infer["hflip_tta"]), "prompt_ensemble": bool(infer["prompt_ensemble"])},
                 summary_path=summary)
    print(f"[report] wrote {out} and {summary}")


if __name__ == "__main__":
    main()
