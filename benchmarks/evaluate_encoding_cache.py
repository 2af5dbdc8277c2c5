"""Seconds of one rung's evaluation (``promptseg.score.evaluate.evaluate_rung``) with and without the
encoding cache, and whether the scores are identical.

    python benchmarks/evaluate_encoding_cache.py full [unet ...]

Reads ``params.yaml``, ``models/<rung>`` and ``data/processed`` of the current workspace (``dvc repro``
first); writes nothing. Each rung is evaluated twice in one process, cache off then on; the model is
loaded once, so the figures are evaluation only (no imports, no model loading, no figures or MLflow).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from promptseg.infer.torch_engine import load_trained_model  # noqa: E402
from promptseg.params import DATASETS, load_params  # noqa: E402
from promptseg.score import evaluate as evaluation  # noqa: E402


def main(rungs: list[str]) -> None:
    params = load_params()
    cfg = evaluation.EvalConfig.from_params(params)
    prompts = {name: params["data"][name]["prompts"] for name in DATASETS}
    for rung in rungs:
        timings, scores = {}, {}
        for label, cache_bytes in (("cache off", 0), ("cache on", 512 * 2**20)):
            trained = load_trained_model(Path("models") / rung, cache_bytes=cache_bytes)
            started = time.perf_counter()
            scores[label], _ = evaluation.evaluate_rung(trained, Path("data/processed"), prompts, cfg)
            timings[label] = time.perf_counter() - started
        same = json.dumps(scores["cache off"], sort_keys=True) == json.dumps(scores["cache on"], sort_keys=True)
        print(
            f"{rung}: evaluate_rung {timings['cache off']:.1f} s without the cache, "
            f"{timings['cache on']:.1f} s with it; scores identical: {same}"
        )


if __name__ == "__main__":
    main(sys.argv[1:] or ["unet"])
