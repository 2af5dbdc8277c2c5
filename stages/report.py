"""DVC stage `report`: metrics/report.md from the data, train and eval metrics (no model is loaded).

Params read (each must be declared by the `report` stage in dvc.yaml): model.source, train.variants,
eval.empty_score, eval.boundary_tolerance_px, report.darkest_share, infer.morphology, infer.hflip_tta,
infer.prompt_ensemble (promptseg.settings.report_settings).
"""
from pathlib import Path

from promptseg.params import DATASETS
from promptseg.report import write_report
from promptseg.settings import load_stage_settings, report_settings


def main() -> None:
    s = load_stage_settings("report", report_settings)
    out = Path("metrics/report.md")
    write_report(Path("metrics"), Path("data/processed"), out, variants=list(s.rungs), model_source=s.model_source,
                 datasets=DATASETS, empty_score=s.empty_score, boundary_tolerance_px=s.boundary_tolerance_px,
                 darkest_share=s.darkest_share, morphology=s.morphology.enabled, kernel_size=s.morphology.kernel,
                 infer_defaults={"hflip_tta": s.hflip_tta, "prompt_ensemble": s.prompt_ensemble})
    print(f"[report] wrote {out}")


if __name__ == "__main__":
    main()
