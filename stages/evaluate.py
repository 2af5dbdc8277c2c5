"""DVC stage `evaluate@<variant>`: metrics/eval/<variant>.json, the val threshold sweep CSV, per-image scores
(metrics/eval/per_image/<variant>.csv), masks, figures (first images, and the k worst per dataset)."""

import json
import sys

from promptseg import paths
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
    processed, out = paths.DATA_PROCESSED, paths.METRICS_EVAL
    model_dir, predictions = paths.model_dir(variant), paths.predictions_dir(variant)
    skipped = skipped_reason(model_dir)
    if skipped:
        write_skipped_outputs(variant, skipped, out, predictions, DATASETS)
        print(f"[evaluate] {variant}: skipped: {skipped}")
        return
    trained = load_trained_model(model_dir)
    trained.precision = settings.infer.precision  # infer.precision: what evaluation's forward runs in
    per_image: list[dict] = []  # one row per (dataset, split, image, prompt): what the JSON's means are made of
    try:
        results, sweeps = evaluate_variant(trained, processed, prompts, cfg, predictions, per_image=per_image)
    except ValueError as exc:  # a split missing (eval.missing_test_split: error, or no val): one message, no traceback
        sys.exit(f"evaluate@{variant}: {exc}")
    out.mkdir(parents=True, exist_ok=True)
    results["precision"] = resolve_precision(trained.precision, trained.device)  # what the forward ran in
    paths.eval_json(variant).write_text(json.dumps(results, indent=2) + "\n")
    write_sweep_csv(paths.sweep_csv(variant), sweeps)
    write_per_image_csv(paths.per_image_csv(variant), per_image)
    figures = []
    for dataset in DATASETS:
        figure = paths.figure_png(variant, dataset)
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
        worst = paths.worst_png(variant, dataset)  # eval.worst_images lowest-Dice images
        split = block.get("reported_split", "test")
        worst_images_figure(
            processed,
            dataset,
            split,
            prompts[dataset][0],
            per_image,
            predictions / dataset / split,
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
        [paths.eval_json(variant), paths.sweep_csv(variant), paths.per_image_csv(variant), *figures],
    )
    uri = log_pyfunc_model(
        model_dir,
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
