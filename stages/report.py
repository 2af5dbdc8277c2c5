"""DVC stage `report`: metrics/report.md from the data, train and eval metrics (no model is loaded).

Params read (each must be declared by the `report` stage in dvc.yaml): model.source, train.variants,
eval.empty_score, eval.boundary_tolerance_px, eval.missing_test_split, report.darkest_share, infer.morphology, infer.hflip_tta,
infer.prompt_ensemble.
"""
from pathlib import Path

from promptseg.params import DATASETS, load_params, section
from promptseg.report import write_report


def main() -> None:
    params = load_params()
    ev, infer = section(params, "eval"), section(params, "infer")
    morphology = section(params, "infer.morphology")
    variants = list(section(params, "train.variants"))  # the ladder, in params order
    out = Path("metrics/report.md")
    write_report(Path("metrics"), Path("data/processed"), out, variants=variants,
                 model_source=str(section(params, "model.source")), datasets=DATASETS,
                 empty_score=float(ev["empty_score"]), boundary_tolerance_px=int(ev["boundary_tolerance_px"]),
                 darkest_share=float(section(params, "report.darkest_share")),
                 morphology=bool(morphology["enabled"]), kernel_size=int(morphology["kernel"]),
                 infer_defaults={"hflip_tta": bool(infer["hflip_tta"]), "prompt_ensemble": bool(infer["prompt_ensemble"])},
                 missing_test_split=str(ev.get("missing_test_split", "report_val")))
    print(f"[report] wrote {out}")


if __name__ == "__main__":
    main()
