"""DVC stage `evaluate@<rung>`: metrics/eval/<rung>.json, the val threshold sweep CSV, per-image scores
(metrics/eval/per_image/<rung>.csv), masks, figures (first images, and the k worst per dataset)."""

import sys

from promptseg import paths
from promptseg.infer.engines import load_segmenter
from promptseg.infer.recipe import SCORED_MODEL_KEY, Recipe, scored_model
from promptseg.machine import MACHINE_KEY, machine_facts, machine_tags
from promptseg.modeling.precision import resolve_precision
from promptseg.params import DATASETS
from promptseg.score.evaluate import (
    EvalConfig,
    evaluate_rung,
    skipped_reason,
    write_per_image_csv,
    write_skipped_outputs,
    write_sweep_csv,
)
from promptseg.score.figures import qualitative_figure, worst_images_figure
from promptseg.serve.pyfunc import log_pyfunc_model  # the rung as a pyfunc model, registered as promptseg-<rung>
from promptseg.settings import evaluate_settings, load_stage_settings
from promptseg.tracking import flatten_metrics, log_to_run, training_run_id

# The images' encodings, reused across ten or so prompts per split (one split at a time: the cache is emptied at
# each new split). HED-VGG16 at 320 px keeps ~50 MB per image in fp32 (the real sample's 122 crack val photos:
# ~6 GB; flip TTA doubles it; bf16 halves it). A split larger than this keeps what fits (promptseg.cache policy
# "keep"); under least-recently-used, 512 MB made HED's evaluation encode every image once per prompt (~1 h).
ENCODING_CACHE_BYTES = 7 * 2**30


def main(rung: str) -> None:
    settings = load_stage_settings(f"evaluate@{rung}", evaluate_settings)
    cfg = EvalConfig(settings.infer, settings.eval)
    prompts = {name: list(settings.prompts[name]) for name in DATASETS}
    processed, out = paths.DATA_PROCESSED, paths.METRICS_EVAL
    model_dir, predictions = paths.model_dir(rung), paths.predictions_dir(rung)
    skipped = skipped_reason(model_dir)
    if skipped:
        write_skipped_outputs(rung, skipped, out, predictions, DATASETS)
        print(f"[evaluate] {rung}: skipped: {skipped}")
        return
    segmenter = load_segmenter(model_dir, "torch", cache_bytes=ENCODING_CACHE_BYTES)
    per_image: list[dict] = []  # one row per (dataset, split, image, prompt): what the JSON's means are made of
    try:
        results, sweeps = evaluate_rung(segmenter, processed, prompts, cfg, predictions, per_image=per_image)
    except ValueError as exc:  # a split missing (eval.missing_test_split: error, or no val): one message, no traceback
        sys.exit(f"evaluate@{rung}: {exc}")
    out.mkdir(parents=True, exist_ok=True)
    # what the forward ran in (infer.precision resolved on this machine)
    results["precision"] = resolve_precision(settings.infer.precision, segmenter.device)
    results[SCORED_MODEL_KEY] = scored_model(model_dir, rung)  # predict, the app, pyfunc check the weights match
    results[MACHINE_KEY] = machine_facts(
        results["precision"], str(segmenter.device)
    )  # strings: metrics diff skips them
    paths.write_json(paths.eval_json(rung), results)
    write_sweep_csv(paths.sweep_csv(rung), sweeps)
    write_per_image_csv(paths.per_image_csv(rung), per_image)
    figures = []
    for dataset in DATASETS:
        figure = paths.figure_png(rung, dataset)
        block = results[dataset]  # the figure shows the split that was scored (val where the export has no test)
        qualitative_figure(  # the first images, predicted with the recipe the dataset was scored with
            segmenter,
            processed,
            dataset,
            prompts[dataset][0],
            Recipe.from_dict(block["recipe"]),
            cfg.eval.figure_images,
            figure,
            split=block.get("reported_split", "test"),
            note=block.get("reported_split_note"),
        )
        figures.append(figure)
        worst = paths.worst_png(rung, dataset)  # eval.worst_images lowest-Dice images
        split = block.get("reported_split", "test")
        worst_images_figure(
            processed,
            dataset,
            split,
            prompts[dataset][0],
            per_image,
            predictions / dataset / split,
            cfg.eval.worst_images,
            worst,
            note=block.get("reported_split_note"),
        )
        figures.append(worst)
    run_id = training_run_id(settings.mlflow, rung)
    log_to_run(
        settings.mlflow,
        run_id,
        flatten_metrics(results, "eval"),
        [paths.eval_json(rung), paths.sweep_csv(rung), paths.per_image_csv(rung), *figures],
        tags=machine_tags(results[MACHINE_KEY], "eval_machine"),
    )
    uri = log_pyfunc_model(
        model_dir,
        settings.mlflow,
        run_id=run_id,
        rung=rung,
        recipes={d: results[d]["recipe"] for d in DATASETS if "recipe" in results.get(d, {})},
    )
    print(f"[evaluate] {rung}: registered {uri}")
    o = results["overall"]
    for dataset in DATASETS:
        if results[dataset].get("reported_split") == "val":
            print(f"[evaluate] {rung}: {dataset} scored on val: {results[dataset]['reported_split_note']}")
    print(
        f"[evaluate] {rung}: test mIoU {o.get('test_miou', float('nan')):.3f}, Dice {o.get('test_dice', float('nan')):.3f}, "
        f"cross-prompt lit {o.get('test_cross_prompt_lit', float('nan')):.3f}"
    )


if __name__ == "__main__":
    main(sys.argv[1])
