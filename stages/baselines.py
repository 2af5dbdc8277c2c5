"""DVC stage `baselines`: metrics/eval/baselines.json, the no-learning masks scored on every dataset's test split,
and metrics/eval/ceilings.json, what the crack labels allow (their own centerline drawn at one width).

Params read (declared by the `baselines` stage in dvc.yaml; promptseg.settings.baselines_settings):
eval.empty_score, eval.boundary_tolerance_px, eval.missing_test_split, report.darkest_share, report.ceiling_radii,
infer.morphology.
"""

from promptseg import paths
from promptseg.params import DATASETS
from promptseg.score.baselines import write_baselines
from promptseg.score.ceilings import write_ceilings
from promptseg.settings import baselines_settings, load_stage_settings


def main() -> None:
    s = load_stage_settings("baselines", baselines_settings)
    out = paths.BASELINES_JSON
    scores = write_baselines(
        paths.DATA_PROCESSED,
        out,
        datasets=DATASETS,
        empty_score=s.empty_score,
        missing_test_split=s.missing_test_split,
        boundary_tolerance_px=s.boundary_tolerance_px,
        darkest_share=s.darkest_share,
        morphology=s.morphology.enabled,
        kernel_size=s.morphology.kernel,
    )
    for dataset in DATASETS:
        named = scores.get(dataset, {})
        print(
            f"[baselines] {dataset} ({scores['scored_splits'][dataset]}): "
            + ", ".join(f"{name} Dice {s['dice']:.3f}" for name, s in named.items())
        )
    print(f"[baselines] wrote {out}")
    ceilings = write_ceilings(
        paths.DATA_PROCESSED,
        paths.CEILINGS_JSON,
        datasets=DATASETS,
        radii=s.ceiling_radii,
        missing_test_split=s.missing_test_split,
        empty_score=s.empty_score,
    )
    for dataset, split in ceilings["scored_splits"].items():
        if dataset in ceilings:
            one, each = ceilings[dataset]["one width"], ceilings[dataset]["each image's width"]
            print(
                f"[baselines] {dataset} ({split}) labels' own centerline: one width (r {one['radius_px']} px) "
                f"mIoU {one['miou']:.3f}, each image's width mIoU {each['miou']:.3f}"
            )
    print(f"[baselines] wrote {paths.CEILINGS_JSON}")


if __name__ == "__main__":
    main()
