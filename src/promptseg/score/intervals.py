"""How sure a test score is: intervals from resampling whole source photos (a grouped bootstrap).

The real test splits are small (the sample's: 120 crack and 39 drywall photos) and their images are not
independent: Roboflow's flipped and re-cropped copies of one source photo, and near-duplicates, share a
``group`` in the processed ``index.csv`` (promptseg.ingest.splits), and the grouped split keeps each group
in one split. So the unit that is resampled is the group, not the image: each resample draws as many groups
as the split has, with replacement, and takes the mean over all their (image, prompt) rows, which is how
evaluation's mIoU is averaged (every image scored with every prompt of its dataset). The interval is the
central ``level`` share of those means (the percentile bootstrap).

A paired interval compares two rungs on the same rows (same images, same prompts): the resampled statistic
is the mean of their per-row differences, so photo-to-photo difficulty, which both rungs share, drops out.
An interval that includes 0 says the test split cannot tell the two apart.

Inputs are evaluation's per-image CSV (``metrics/eval/per_image/<rung>.csv``: dataset, split, reported, stem,
prompt, iou, dice, ...) and the processed index's ``group`` per stem; a stem the index lacks is its own group.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "Interval",
    "grouped_interval",
    "paired_interval",
    "read_groups",
    "read_scored_rows",
    "score_interval",
]


@dataclass(frozen=True)
class Interval:
    """A mean and its grouped-bootstrap interval (``low``, ``high``) at ``level``, over ``groups`` groups and
    ``rows`` (image, prompt) rows."""

    mean: float
    low: float
    high: float
    level: float
    groups: int
    rows: int

    def to_dict(self) -> dict:
        return {
            "mean": self.mean,
            "low": self.low,
            "high": self.high,
            "level": self.level,
            "groups": self.groups,
            "rows": self.rows,
        }


def grouped_interval(
    values: Sequence[float], groups: Sequence[str], *, resamples: int, level: float, seed: int
) -> Interval:
    """The mean of ``values`` and its ``level`` percentile interval when whole ``groups`` are resampled.

    One group (or none) gives no spread to resample: the interval is then the mean itself, and ``groups``
    says why."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no rows to resample")
    if len(groups) != values.size:
        raise ValueError(f"{values.size} values but {len(groups)} group keys")
    keys, index = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    sums = np.bincount(index, weights=values, minlength=keys.size)
    counts = np.bincount(index, minlength=keys.size).astype(np.float64)
    mean = float(values.mean())
    if keys.size < 2:
        return Interval(mean, mean, mean, level, int(keys.size), int(values.size))
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, keys.size, size=(resamples, keys.size))
    weights = np.zeros((resamples, keys.size))
    np.add.at(weights, (np.arange(resamples)[:, None], draws), 1.0)  # how often each group was drawn
    means = (weights @ sums) / (weights @ counts)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return Interval(mean, float(low), float(high), level, int(keys.size), int(values.size))


def read_groups(index_csv: str | Path) -> dict[str, str]:
    """``{stem: group}`` from a processed ``index.csv``; empty when the file is missing."""
    path = Path(index_csv)
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as handle:
        return {row["stem"]: row.get("group") or row["stem"] for row in csv.DictReader(handle)}


def read_scored_rows(per_image_csv: str | Path, dataset: str, split: str) -> list[dict[str, str]]:
    """The per-image CSV's rows of ``dataset`` on ``split`` (empty when the file is missing)."""
    path = Path(per_image_csv)
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return [r for r in csv.DictReader(handle) if r["dataset"] == dataset and r["split"] == split]


def _values(rows: Iterable[Mapping[str, str]], metric: str) -> dict[tuple[str, str], float]:
    return {(r["stem"], r["prompt"]): float(r[metric]) for r in rows}


def _keyed_interval(
    values: Mapping[tuple[str, str], float], groups: Mapping[str, str], *, resamples: int, level: float, seed: int
) -> Interval | None:
    """:func:`grouped_interval` of ``{(stem, prompt): value}``, each stem in its index group; None without values."""
    if not values:
        return None
    keys = sorted(values)
    return grouped_interval(
        [values[k] for k in keys],
        [groups.get(stem, stem) for stem, _ in keys],
        resamples=resamples,
        level=level,
        seed=seed,
    )


def score_interval(
    rows: Sequence[Mapping[str, str]],
    groups: Mapping[str, str],
    *,
    metric: str = "iou",
    resamples: int,
    level: float,
    seed: int,
) -> Interval | None:
    """The grouped interval of a rung's mean ``metric`` over its scored rows; None without rows."""
    return _keyed_interval(_values(rows, metric), groups, resamples=resamples, level=level, seed=seed)


def paired_interval(
    rows_a: Sequence[Mapping[str, str]],
    rows_b: Sequence[Mapping[str, str]],
    groups: Mapping[str, str],
    *,
    metric: str = "iou",
    resamples: int,
    level: float,
    seed: int,
) -> Interval | None:
    """The grouped interval of the mean per-row difference a - b over the rows both rungs scored (same image,
    same prompt); None when they share none."""
    a, b = _values(rows_a, metric), _values(rows_b, metric)
    differences = {k: a[k] - b[k] for k in set(a) & set(b)}
    return _keyed_interval(differences, groups, resamples=resamples, level=level, seed=seed)
