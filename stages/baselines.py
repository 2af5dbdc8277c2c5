"""DVC stage `baselines`: metrics/eval/baselines.json, the no-learning masks scored on every dataset's test split.

Params read (declared by the `baselines` stage in dvc.yaml): eval.empty_score, eval.boundary_tolerance_px,
report.darkest_share, infer.morphology.
"""
from pathlib import Path

from promptseg.baselines import write_baselines
from promptseg.params import DATASETS, load_params, section


def main() -> None:
    params = load_params()
    ev, morphology = section(params, "eval"), section(params, "infer.morphology")
    out = Path("metrics/eval/baselines.json")
    scores = write_baselines(Path("data/processed"), out, datasets=DATASETS, empty_score=float(ev["empty_score"]),
                             boundary_tolerance_px=int(ev["boundary_tolerance_px"]),
                             darkest_share=float(section(params, "report.darkest_share")),
                             morphology=bool(morphology["enabled"]), kernel_size=int(morphology["kernel"]))
    for dataset, named in scores.items():
        print(f"[baselines] {dataset}: " + ", ".join(f"{name} Dice {s['dice']:.3f}" for name, s in named.items()))
    print(f"[baselines] wrote {out}")


if __name__ == "__main__":
    main()
