"""DVC stage `evaluate@<variant>`: metrics/eval/<variant>.json, the val threshold sweep CSV, per-image scores
(metrics/eval/per_image/<variant>.csv), masks, figures (first images, and the k worst per dataset)."""

import json
import sys
from pathlib import Path

from promptseg.evaluate import (
    EvalConfig,
    evaluate_variant,
    qualitative_figure,
    skipped_reason,
    worst_images_figure,
    write_per_image_csv,
    write_skipped_outputs,
    write_sweep_csv,
)
from promptseg.inference import load_trained_model
from promptseg.mlflow_model import log_pyfunc_model  # the rung as a pyfunc model, registered as promptseg-<rung>
from promptseg.params import DATASETS
from promptseg.precision import resolve_precision
from promptseg.settings import evaluate_settings, load_stage_settings
from promptseg.tracking import flatten_metrics, log_to_run, training_run_id


def main(variant: str) -> None:
    settings = load_stage_settings(f"evaluate@{variant}", evaluate_settings)
    cfg = EvalConfig.from_settings(settings.infer, settings.eval)
    prompts = {name: list(settings.prompts[name]) for name in DATASETS}
    processed, out = Path("data/processed"), Path("metrics/eval")
    skipped = skipped_reason(Path("models") / variant)
    if skipped:
        write_skipped_outputs(variant, skipped, out, Path("data/predictions") / variant, DATASETS)
        print(f"[evaluate] {variant}: skipped: {skipped}")
        return
    trained = load_trained_model(Path("models") / variant)
    trained.precision = settings.infer.precision  # infer.precision: what evaluation's forward runs in
    per_image: list[dict] = []  # one row per (dataset, split, image, prompt): what the JSON's means are made of
    try:
        results, sweeps = evaluate_variant(
            trained, processed, prompts, cfg, Path("data/predictions") / variant, per_image=per_image
        )
    except ValueError as exc:  # a split missing (eval.missing_test_split: error, or no val): one message, no traceback
        sys.exit(f"evaluate@{variant}: {exc}")
    out.mkdir(parents=True, exist_ok=True)
    results["precision"] = resolve_precision(trained.precision, trained.device)  # what the forward ran in
    (out / f"{variant}.json").write_text(json.dumps(results, indent=2) + "\n")
    write_sweep_csv(out / "sweep" / f"{variant}.csv", sweeps)
    write_per_image_csv(out / "per_image" / f"{variant}.csv", per_image)
    figures = []
    for dataset in DATASETS:
        figure = out / "figures" / f"{variant}_{dataset}.png"
        block = results[dataset]  # the figure shows the split that was scored (val where the export has no test)
        qualitative_figure(
            trained,
            processed,
            dataset,
            prompts[dataset][0],
            block["threshold"],
            cfg,
            figure,
            split=block.get("reported_split", "test"),
            note=block.get("reported_split_note"),
        )
        figures.append(figure)
        worst = out / "figures" / f"{variant}_{dataset}_worst.png"  # eval.worst_images lowest-Dice images
        split = block.get("reported_split", "test")
        worst_images_figure(
            processed,
            dataset,
            split,
            prompts[dataset][0],
            per_image,
            Path("data/predictions") / variant / dataset / split,
            cfg.worst_images,
            worst,
            note=block.get("reported_split_note"),
        )
        figures.append(worst)
    run_id = training_run_id(settings.mlflow, variant)
    log_to_run(
        settings.mlflow,
        run_id,
        flatten_metrics(results, "eval"),
        [out / f"{variant}.json", out / "sweep" / f"{variant}.csv", out / "per_image" / f"{variant}.csv", *figures],
    )
    uri = log_pyfunc_model(
        Path("models") / variant,
        settings.mlflow,
        run_id=run_id,
        variant=variant,
        recipes={d: results[d]["recipe"] for d in DATASETS if "recipe" in results.get(d, {})},
    )
    print(f"[evaluate] {variant}: registered {uri}")
    o = results["overall"]
    for dataset in DATASETS:
        if results[dataset].get("reported_split") == "val":
            print(f"[evaluate] {variant}: {dataset} scored on val: {results[dataset]['reported_split_note']}")
    print(
        f"[evaluate] {variant}: test mIoU {o.get('test_miou', float('nan')):.3f}, Dice {o.get('test_dice', float('nan')):.3f}, "
        f"cross-prompt lit {o.get('test_cross_prompt_lit', float('nan')):.3f}"
    )


if __name__ == "__main__":
    main(sys.argv[1])
