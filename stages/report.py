"""DVC stage `report`: metrics/report.md from the data, train and eval metrics (no model is loaded)."""
from pathlib import Path

from promptseg.params import DATASETS, load_params, section
from promptseg.report import write_report


def main() -> None:
    params = load_params()
    ev = section(params, "eval")
    variants = list(section(params, "train.variants"))
    out = Path("metrics/report.md")
    write_report(Path("metrics"), Path("data/processed"), out, variants=variants,
                 model_source=str(section(params, "model.source")), datasets=DATASETS,
                 empty_score=float(ev["empty_score"]), boundary_tolerance_px=int(ev["boundary_tolerance_px"]))
    print(f"[report] wrote {out}")


if __name__ == "__main__":
    main()
