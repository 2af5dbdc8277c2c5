"""DVC stage `baselines`: metrics/eval/baselines.json, the no-learning masks scored on every dataset's test split.

Params read (declared by the `baselines` stage in dvc.yaml; promptseg.settings.baselines_settings):
eval.empty_score, eval.boundary_tolerance_px, report.darkest_share, infer.morphology.
"""

from promptseg import paths
from promptseg.params import DATASETS
from promptseg.score.baselines import write_baselines
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


if __name__ == "__main__":
    main()
