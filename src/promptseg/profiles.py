"""Named profiles: small YAML files of OVERRIDES to ``params.yaml``, which stays the single source of truth.

``profiles/paper.yaml`` holds the student report's configuration. ``python -m promptseg.profiles paper``
prints one ``-S key=value`` per overridden leaf, so that::

    dvc exp run -n paper $(python -m promptseg.profiles paper)

runs the pipeline with exactly those keys changed (``make repro-paper``), and ``dvc exp diff paper``
shows exactly those keys. A profile key that ``params.yaml`` does not have is an error (a typo would
otherwise be added silently).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml

from promptseg.params import ParamsError, load_params
from promptseg.settings import validate_params

PROFILES_DIR = Path("profiles")


def load_profile(name: str, profiles_dir: Path = PROFILES_DIR) -> dict[str, Any]:
    """The nested overrides of ``profiles/<name>.yaml``; a clear error naming the known profiles otherwise."""
    path = Path(profiles_dir) / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in Path(profiles_dir).glob("*.yaml"))
        raise ParamsError(f"unknown profile {name!r} ({path} not found); known profiles: {', '.join(known) or 'none'}.")
    overrides = yaml.safe_load(path.read_text()) or {}
    if not isinstance(overrides, dict):
        raise ParamsError(f"{path} must be a mapping of params.yaml keys to values.")
    return overrides


def flatten_overrides(overrides: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists are leaves."""
    flat: dict[str, Any] = {}
    for key, value in overrides.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat.update(flatten_overrides(value, name))
        else:
            flat[name] = value
    return flat


def apply_profile(params: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``params`` with every override set; raises ParamsError for a key params.yaml lacks."""
    merged = copy.deepcopy(params)
    for dotted, value in flatten_overrides(overrides).items():
        node = merged
        keys = dotted.split(".")
        for i, key in enumerate(keys[:-1]):
            if not isinstance(node.get(key), dict):
                raise ParamsError(f"profile key {dotted!r}: params.yaml has no section {'.'.join(keys[: i + 1])!r}.")
            node = node[key]
        if keys[-1] not in node:
            raise ParamsError(f"profile key {dotted!r} is not in params.yaml: fix the profile or add the key.")
        node[keys[-1]] = copy.deepcopy(value)
    return merged


def _hydra_value(value: Any) -> str:
    """A value in the override grammar of ``dvc exp run -S`` (no spaces, so the shell keeps one word)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_hydra_value(v) for v in value) + "]"
    if isinstance(value, str):
        if any(c in value for c in " ,[]{}'\"=") or value.lower() in ("true", "false", "null"):
            raise ParamsError(f"profile value {value!r} needs quoting; use a plainer value.")
        return value
    return repr(value) if isinstance(value, float) else str(value)


def dvc_set_flags(overrides: dict[str, Any]) -> list[str]:
    """``["-S", "a.b=1", "-S", ...]`` for ``dvc exp run``."""
    flags: list[str] = []
    for dotted, value in flatten_overrides(overrides).items():
        flags += ["-S", f"{dotted}={_hydra_value(value)}"]
    return flags


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(
            "usage: python -m promptseg.profiles NAME   (prints the `dvc exp run -S` flags of profiles/NAME.yaml)",
            file=sys.stderr,
        )
        return 2
    try:
        overrides = load_profile(argv[0])
        validate_params(apply_profile(load_params(), overrides))  # every key must exist in params.yaml, and validate
    except ParamsError as exc:
        print(f"promptseg.profiles: {exc}", file=sys.stderr)
        return 2
    print(" ".join(dvc_set_flags(overrides)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
