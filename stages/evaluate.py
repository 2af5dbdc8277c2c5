"""DVC stage `evaluate@<variant>`: metrics/eval/<variant>.json, the val threshold sweep CSV, masks, figures."""
import json
import sys
from pathlib import Path

from promptseg.evaluate import (eval_config_from_params, evaluate_variant, qualitative_figure, skipped_reason,
                                write_skipped_outputs, write_sweep_csv)
from promptseg.inference import load_trained_model
from promptseg.params import DATASETS, load_params, section
from promptseg.tracking import flatten_metrics, log_to_run


def main(variant: str) -> None:
    params = load_params()
    try:
        cfg = eval_config_from_params(params)
    except ValueError as exc:
        sys.exit(f"evaluate@{variant}: {exc}")
    prompts = {name: section(params, f"data.{name}.prompts") for name in DATASETS}
    processed, out = Path("data/processed"), Path("metrics/eval")
    skipped = skipped_reason(Path("models") / variant)
    if skipped:
        write_skipped_outputs(variant, skipped, out, Path("data/predictions") / variant, DATASETS)
        print(f"[evaluate] {variant}: skipped: {skipped}")
        return
    trained = load_trained_model(Path("models") / variant)
    try:
        results, sweeps = evaluate_variant(trained, processed, prompts, cfg, Path("data/predictions") / variant)
    except ValueError as exc:  # a split missing (eval.missing_test_split: error, or no val): one message, no traceback
        sys.exit(f"evaluate@{variant}: {exc}")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{variant}.json").write_text(json.dumps(results, indent=2) + "\n")
    write_sweep_csv(out / "sweep" / f"{variant}.csv", sweeps)
    figures = []
    for dataset in DATASETS:
        figure = out / "figures" / f"{variant}_{dataset}.png"
        block = results[dataset]  # the figure shows the split that was scored (val where the export has no test)
        qualitative_figure(trained, processed, dataset, prompts[dataset][0], block["threshold"], cfg, figure,
                           split=block.get("reported_split", "test"), note=block.get("reported_split_note"))
        figures.append(figure)
    run_id = trained.card.get("summary", {}).get("mlflow_run_id")
    log_to_run(section(params, "mlflow"), run_id, flatten_metrics(results, "eval"),
               [out / f"{variant}.json", out / "sweep" / f"{variant}.csv", *figures])
    o = results["overall"]
    for dataset in DATASETS:
        if results[dataset].get("reported_split") == "val":
            print(f"[evaluate] {variant}: {dataset} scored on val: {results[dataset]['reported_split_note']}")
    print(f"[evaluate] {variant}: test mIoU {o.get('test_miou', float('nan')):.3f}, Dice {o.get('test_dice', float('nan')):.3f}, "
          f"cross-prompt lit {o.get('test_cross_prompt_lit', float('nan')):.3f}")


if __name__ == "__main__":
    main(sys.argv[1])
