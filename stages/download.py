"""DVC stage `download@<dataset>`: land the dataset's export in data/raw/<dataset>/ (synthetic, local or roboflow)."""

import sys

from promptseg import paths
from promptseg.ingest.sources import SourceError, land_export
from promptseg.settings import download_settings, load_stage_settings


def main(dataset: str) -> None:
    settings = load_stage_settings(f"download@{dataset}", download_settings, dataset)
    out = paths.raw_dir(dataset)
    try:
        source = land_export(dataset, settings.source, settings.synthetic, out)
    except SourceError as exc:
        sys.exit(f"download@{dataset}: {exc}")
    print(f"[download] {dataset}: export from source '{source}' in {out}")


if __name__ == "__main__":
    main(sys.argv[1])
