"""Which numbers of two runs of the pipeline match to the digit, which within a tolerance, and by how much.

    .venv/bin/python benchmarks/compare_metrics.py OTHER_REPO [--rev HEAD] [--tolerance 0.01] [--files GLOB ...]

Compares every numeric leaf of the metrics JSON files (default: metrics/train/*.json, metrics/eval/*.json,
metrics/data/*.json, metrics/summary.json) of this repository at ``--rev`` (read with ``git show``: the
committed numbers) with the same files in OTHER_REPO's working tree (a run on another machine). Timings and
sizes that depend on the machine's load (``seconds``, ``_ms``, ``_s``, ``rss``, ``minutes``) are left out.
Per file: how many leaves are identical, within ``--tolerance`` (absolute), beyond it, and the largest
differences, named by their key path. The ``machine`` block of each side is printed first.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_FILES = ("metrics/train/*.json", "metrics/eval/*.json", "metrics/data/*.json", "metrics/summary.json")
TIMING_MARKS = ("seconds", "_ms", "_s", "rss", "minutes", "mlflow_run_id")


def leaves(tree, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            out.update(leaves(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            out.update(leaves(value, f"{prefix}[{i}]"))
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        if not any(mark in prefix.rsplit(".", 1)[-1] for mark in TIMING_MARKS):
            out[prefix] = float(tree)
    return out


def committed_files(rev: str, patterns: list[str]) -> list[str]:
    names = subprocess.run(
        ["git", "ls-tree", "-r", "--name-only", rev, "metrics"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    return [n for n in names if any(fnmatch.fnmatch(n, p) and n.count("/") == p.count("/") for p in patterns)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("other", type=Path)
    parser.add_argument("--rev", default="HEAD")
    parser.add_argument("--tolerance", type=float, default=0.01)
    parser.add_argument("--files", nargs="*", default=list(DEFAULT_FILES))
    parser.add_argument("--top", type=int, default=5)
    args = parser.parse_args()
    totals = {"identical": 0, "within": 0, "beyond": 0}
    for name in committed_files(args.rev, args.files):
        other = args.other / name
        if not other.is_file():
            print(f"{name}: missing in {args.other}")
            continue
        ours = json.loads(
            subprocess.run(
                ["git", "show", f"{args.rev}:{name}"], cwd=REPO, capture_output=True, text=True, check=True
            ).stdout
        )
        theirs = json.loads(other.read_text())
        if name.startswith("metrics/eval/") or name.startswith("metrics/train/"):
            for side, tree in (("committed", ours), ("other", theirs)):
                if isinstance(tree, dict) and isinstance(tree.get("machine"), dict):
                    print(f"  {side} machine: {tree['machine'].get('cpu')} / {tree['machine'].get('onednn_isa')}")
        a, b = leaves(ours), leaves(theirs)
        common = sorted(set(a) & set(b))
        diffs = {k: abs(a[k] - b[k]) for k in common if a[k] == a[k] and b[k] == b[k]}  # NaN on either side: skip
        same = [k for k, d in diffs.items() if d == 0.0]
        within = [k for k, d in diffs.items() if 0.0 < d <= args.tolerance]
        beyond = [k for k, d in diffs.items() if d > args.tolerance]
        for key, value in (("identical", same), ("within", within), ("beyond", beyond)):
            totals[key] += len(value)
        largest = sorted(diffs, key=lambda k: -diffs[k])[: args.top]
        print(
            f"{name}: {len(common)} numbers: {len(same)} identical, {len(within)} within {args.tolerance:g}, "
            f"{len(beyond)} beyond; max |diff| {max(diffs.values(), default=0.0):.4g}"
        )
        for key in largest:
            if diffs[key] > 0:
                print(f"    {key}: {a[key]:.6g} -> {b[key]:.6g} ({b[key] - a[key]:+.4g})")
    print(
        f"all: {totals['identical']} identical, {totals['within']} within {args.tolerance:g}, {totals['beyond']} beyond"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
