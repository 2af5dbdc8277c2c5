"""DVC stage `evaluate@<variant>`: metrics/eval/<variant>.json, the val threshold sweep CSV, masks, figures."""
import json
import sys
from pathlib import Path

from promptseg.evaluate import (eval_config_from_params, evaluate_variant, qualitative_figure, skipped_reason,
                                write_skipped_outputs, write_sweep_csv)
from promptseg.inference import load_trained_model
from promptseg.params import DATASETS, load_params, section
from promptseg.precision import check_precision, resolve_precision
from promptseg.tracking import flatten_metrics, log_to_run


def main(variant: str) -> None:
    params = load_params()
    cfg = eval_config_from_params(params)
    prompts = {name: section(params, f"data.{name}.prompts") for name in DATASETS}
    processed, out = Path("data/processed"), Path("metrics/eval")
    skipped = skipped_reason(Path("models") / variant)
    if skipped:
        write_skipped_outputs(variant, skipped, out, Path("data/predictions") / variant, DATASETS)
        print(f"[evaluate] {variant}: skipped: {skipped}")
        return
    trained = load_trained_model(Path("models") / variant)
    trained.precision = check_precision(section(params, "infer.precision"), "params.yaml infer.precision")
    results, sweeps = evaluate_variant(trained, processed, prompts, cfg, Path("data/predictions") / variant)
    out.mkdir(parents=True, exist_ok=True)
    results["precision"] = resolve_precision(trained.precision, trained.device)  # what the forward ran in
    (out / f"{variant}.json").write_text(json.dumps(results, indent=2) + "\n")
    write_sweep_csv(out / "sweep" / f"{variant}.csv", sweeps)
    figures = []
    for dataset in DATASETS:
        figure = out / "figures" / f"{variant}_{dataset}.png"
        qualitative_figure(trained, processed, dataset, prompts[dataset][0], results[dataset]["threshold"], cfg, figure)
        figures.append(figure)
    run_id = trained.card.get("summary", {}).get("mlflow_run_id")
    log_to_run(section(params, "mlflow"), run_id, flatten_metrics(results, "eval"),
               [out / f"{variant}.json", out / "sweep" / f"{variant}.csv", *figures])
    o = results["overall"]
    print(f"[evaluate] {variant}: test mIoU {o.get('test_miou', float('nan')):.3f}, Dice {o.get('test_dice', float('nan')):.3f}, "
          f"cross-prompt lit {o.get('test_cross_prompt_lit', float('nan')):.3f}")


if __name__ == "__main__":
    main(sys.argv[1])
