"""Named profiles: small YAML files of OVERRIDES to ``params.yaml``, which stays the single source of truth.

``profiles/paper.yaml`` holds the student report's configuration. ``python -m promptseg.profiles paper``
prints one ``-S key=value`` per overridden leaf, so that::

    dvc exp run -n paper $(python -m promptseg.profiles paper)

runs the pipeline with exactly those keys changed (``make repro-paper``), and ``dvc exp diff paper``
shows exactly those keys. A profile key that ``params.yaml`` does not have is an error (a typo would
otherwise be added silently), with two exceptions: a profile may add whole rungs to ``train.rungs`` (the
CLIPSeg rungs, which the default ladder leaves out), each given with at least its method and architecture
and passed to DVC as one ``++train.rungs.<name>={...}``; and it may give a rung its own value of a
``train.common`` setting the rung does not override in ``params.yaml`` (e.g. ``dataset_repeats``), passed
as one ``++train.rungs.<name>.<key>=...`` of the whole value.
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


def merge_overrides(first: dict[str, Any], then: dict[str, Any]) -> dict[str, Any]:
    """``first`` with ``then`` laid over it, section by section (a leaf of ``then`` wins): two profiles as one,
    so each key reaches ``dvc exp run`` once."""
    merged = copy.deepcopy(first)
    for key, value in then.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_overrides(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_profiles(names: list[str] | tuple[str, ...], profiles_dir: Path = PROFILES_DIR) -> dict[str, Any]:
    """The overrides of several profiles applied in order (``real-cpu real-cpu-60min``: the real sample's
    settings, then the 60-minute budget's epochs), as one nested mapping."""
    merged: dict[str, Any] = {}
    for name in names:
        merged = merge_overrides(merged, load_profile(name, profiles_dir))
    return merged


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


# Sections where a profile may ADD a whole entry that params.yaml lacks: a rung (its complete definition). Anywhere
# else a key params.yaml lacks is a typo and an error.
ADDABLE_SECTIONS = ("train.rungs",)
RUNG_REQUIRED = ("method", "architecture")


def _is_rung(prefix: str) -> bool:
    return prefix.startswith("train.rungs.") and prefix.count(".") == 2


def profile_changes(params: dict[str, Any], overrides: dict[str, Any]) -> list[tuple[str, Any, bool]]:
    """``(dotted key, value, added)`` for every override, in the profile's order: a leaf params.yaml has
    (``added`` False), a whole new entry of an :data:`ADDABLE_SECTIONS` section (``added`` True: a rung the
    default ladder leaves out, e.g. the CLIPSeg rungs of the paper profile), or a rung's own value of a
    ``train.common`` key (``added`` True). Raises ParamsError for anything else."""
    changes: list[tuple[str, Any, bool]] = []

    def walk(over: dict[str, Any], node: Any, prefix: str) -> None:
        for key, value in over.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if _is_rung(prefix) and key not in node and key in ((params.get("train") or {}).get("common") or {}):
                changes.append((name, value, True))  # the rung's own value of a train.common setting
            elif prefix in ADDABLE_SECTIONS and key not in node:
                missing = [k for k in RUNG_REQUIRED if not isinstance(value, dict) or k not in value]
                if missing:
                    raise ParamsError(
                        f"profile key {name!r}: params.yaml has no rung {key!r}, and a profile that adds a rung gives "
                        f"its whole definition ({', '.join(missing)} missing): fix the name or complete the rung."
                    )
                changes.append((name, value, True))
            elif isinstance(value, dict):
                if not isinstance(node.get(key), dict):
                    raise ParamsError(f"profile key {name!r}: params.yaml has no section {name!r}.")
                walk(value, node[key], name)
            elif key not in node:
                raise ParamsError(f"profile key {name!r} is not in params.yaml: fix the profile or add the key.")
            else:
                changes.append((name, value, False))

    walk(overrides, params, "")
    return changes


def apply_profile(params: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``params`` with every override set and every added rung appended (as ``dvc exp run`` does);
    raises ParamsError for a key params.yaml lacks."""
    merged = copy.deepcopy(params)
    for dotted, value, _ in profile_changes(params, overrides):
        node = merged
        keys = dotted.split(".")
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = copy.deepcopy(value)
    return merged


def params_with_profiles(*names: str, params_path: Path = Path("params.yaml")) -> dict[str, Any]:
    """params.yaml with the named profiles applied in order, e.g. ``params_with_profiles("clipseg-small")``: the
    default ladder plus the random-init CLIPSeg rungs, for the benchmarks that time every architecture."""
    return apply_profile(load_params(params_path), load_profiles(names, Path(params_path).parent / PROFILES_DIR))


def _hydra_value(value: Any) -> str:
    """A value in the override grammar of ``dvc exp run -S`` (no spaces, so the shell keeps one word)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_hydra_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        if any(c in value for c in " ,[]{}'\"=") or value.lower() in ("true", "false", "null"):
            raise ParamsError(f"profile value {value!r} needs quoting; use a plainer value.")
        return value
    return repr(value) if isinstance(value, float) else str(value)


def dvc_set_flags(overrides: dict[str, Any], params: dict[str, Any]) -> list[str]:
    """``["-S", "a.b=1", "-S", ...]`` for ``dvc exp run``; an added rung is one ``++train.rungs.<name>={...}``
    (Hydra's add-or-override: a workspace that already holds the rung from an earlier run takes it again)."""
    flags: list[str] = []
    for dotted, value, added in profile_changes(params, overrides):
        flags += ["-S", f"{'++' if added else ''}{dotted}={_hydra_value(value)}"]
    return flags


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(
            "usage: python -m promptseg.profiles NAME [NAME ...]   (prints the `dvc exp run -S` flags of "
            "profiles/NAME.yaml; several names are laid over each other in order)",
            file=sys.stderr,
        )
        return 2
    try:
        overrides, params = load_profiles(argv), load_params()
        validate_params(apply_profile(params, overrides))  # every key must exist in params.yaml, and validate
    except ParamsError as exc:
        print(f"promptseg.profiles: {exc}", file=sys.stderr)
        return 2
    print(" ".join(dvc_set_flags(overrides, params)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
