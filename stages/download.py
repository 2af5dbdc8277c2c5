"""DVC stage `download@<dataset>`: land the dataset's export in data/raw/<dataset>/ (synthetic, local or roboflow)."""
import sys
from pathlib import Path

from promptseg.params import check_dataset, load_params, section
from promptseg.sources import SourceError, land_export


def main(dataset: str) -> None:
    params = load_params()
    check_dataset(dataset)
    out = Path("data/raw") / dataset
    try:
        source = land_export(dataset, section(params, f"data.{dataset}"), section(params, "synthetic"), out)
    except SourceError as exc:
        sys.exit(f"download@{dataset}: {exc}")
    print(f"[download] {dataset}: export from source '{source}' in {out}")


if __name__ == "__main__":
    main(sys.argv[1])
