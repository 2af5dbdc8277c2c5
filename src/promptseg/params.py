"""Load ``params.yaml`` and hand each stage the section it reads, with one clear error per bad key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

DATASETS = ("cracks", "drywall")
SPLITS = ("train", "val", "test")  # our split names (Roboflow calls val "valid": promptseg.ingest.exports)
MISSING_TEST_POLICIES = ("report_val", "error")  # params.yaml eval.missing_test_split
NO_TEST_SPLIT_NOTE = "no test split: threshold chosen on the same images, optimistic"
THIN_STRUCTURE_DATASETS = ("cracks",)  # get boundary F1 and clDice (evaluation, baselines, report)


class ParamsError(ValueError):
    """params.yaml is missing a key or holds a value we cannot use."""


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path} not found: run the stage from the repository root.")
    try:
        with path.open() as handle:
            params = yaml.safe_load(handle)
    except yaml.YAMLError as exc:  # one message naming the place, not the parser's traceback
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ParamsError(f"{path} is not valid YAML{where}: {problem}; fix the file there.") from None
    if not isinstance(params, dict):
        raise ParamsError(f"{path} must be a mapping of sections (data, model, train, ...); it holds {params!r}.")
    return params
