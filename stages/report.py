"""DVC stage `report`: metrics/report.md and the headline metrics/summary.json from the metrics files alone
(data, train, eval and the no-learning baselines of metrics/eval/baselines.json; no model, no images), and the
source-photo groups of data/processed/<dataset>/index.csv for the mIoU intervals.

Params read (each declared by the `report` stage in dvc.yaml; promptseg.settings.report_settings):
model.source, train.rungs, eval.boundary_tolerance_px, infer.hflip_tta, infer.prompt_ensemble, report.bootstrap.
"""

from promptseg import paths
from promptseg.params import DATASETS
from promptseg.score.intervals import read_groups
from promptseg.score.report import write_report
from promptseg.settings import load_stage_settings, report_settings


def main() -> None:
    s = load_stage_settings("report", report_settings)
    out, summary = paths.REPORT_MD, paths.SUMMARY_JSON
    write_report(
        paths.METRICS,
        out,
        rungs=list(s.rungs),
        model_source=s.model_source,
        clipseg_in_ladder=bool(s.clipseg_rungs),
        datasets=DATASETS,
        boundary_tolerance_px=s.boundary_tolerance_px,
        infer_defaults={"hflip_tta": s.hflip_tta, "prompt_ensemble": s.prompt_ensemble},
        summary_path=summary,
        groups={d: read_groups(paths.processed_index(d)) for d in DATASETS},
        bootstrap=s.bootstrap,
    )
    print(f"[report] wrote {out} and {summary}")


if __name__ == "__main__":
    main()
