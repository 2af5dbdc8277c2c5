"""Source groups, perceptual hashes, cross-split leakage and the grouped re-split.

A Roboflow export holds several copies of one source photo: augmentation copies and
re-uploads (``IMG_1_jpg.rf.<h1>.jpg``, ``IMG_1_jpg.rf.<h2>.jpg``), sometimes in different
splits. Scoring on a split that holds copies of training photos overstates a model, so
images are grouped before they are split:

* **Name group**: :func:`promptseg.ingest.exports.source_group_of` -- the stem of
  ``images[*].extra.name`` where the export has it, else the file stem before
  ``_<ext>.rf.<hash>``.
* **Near-duplicates**: a 64-bit difference hash (:func:`dhash`) of each image; two images
  whose hashes differ in at most ``max_distance`` bits AND whose high-passed 64x64
  thumbnails correlate at least ``min_correlation`` are near-duplicates
  (:func:`near_duplicate_pairs`; the thumbnail test removes the many different walls
  with the same lighting that a 9x8 hash cannot tell apart). Both survive
  brightness/contrast changes, JPEG re-encoding and mild blur, not flips, rotations or
  crops (flipped Roboflow copies keep their name, so they still group by name).
* **Group**: the connected components of "same name group" OR "near-duplicate"
  (union-find, :func:`union_groups`). Its key is the smallest name group in it.

Leakage of a split (:func:`split_stats`) is the number of its images whose name group
(``leak_by_name``), some near-duplicate (``leak_by_hash``) or group (``leak_by_group``,
implied by either) is also present in another split.

:func:`assign_grouped` re-splits by group: every group goes whole to one split, so no
photo or near-duplicate sits in two splits; ratios are in images.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from promptseg.images import ImageReadError, read_image
from promptseg.ingest.exports import ImageRecord, source_group_of
from promptseg.params import SPLITS


def map_in_threads(function, items: Sequence, workers: int | None = None) -> list:
    """``[function(x) for x in items]`` in ``workers`` threads (default ``min(8, cpu_count)``; 1 runs inline),
    results in input order. For cv2 decode/encode and file copies, which release the GIL."""
    n = workers if workers is not None else min(8, os.cpu_count() or 1)
    if n <= 1 or len(items) < 2:
        return [function(x) for x in items]
    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(function, items))


SPLIT_STRATEGIES = ("as_exported", "grouped")
#: Side and high-pass sigma of the thumbnails that confirm a dhash match (see :func:`detail_thumbnail`).
THUMB_SIDE = 64
THUMB_SIGMA = 2.0
#: Defaults of the near-duplicate test (params.yaml ``masks.near_duplicates``).
DEFAULT_MAX_DISTANCE = 6
DEFAULT_MIN_CORRELATION = 0.8
DEFAULT_RATIOS = {"train": 0.7, "val": 0.15, "test": 0.15}

__all__ = [
    "DEFAULT_MAX_DISTANCE",
    "DEFAULT_MIN_CORRELATION",
    "DEFAULT_RATIOS",
    "SPLIT_STRATEGIES",
    "SplitPlan",
    "assign_grouped",
    "dhash",
    "hamming",
    "hash_hex",
    "detail_thumbnail",
    "image_dhash",
    "image_signature",
    "near_duplicate_pairs",
    "plan_splits",
    "split_stats",
    "thumbnail_correlation",
    "union_groups",
]


# ------------------------------------------------------------------- perceptual hash


def dhash(image: np.ndarray, hash_size: int = 8) -> int:
    """Difference hash of an image as a Python int of ``hash_size**2`` bits (64 by default).

    ``image``: ``(H, W)`` gray or ``(H, W, 3)`` BGR, any dtype cv2 can resize. The image is
    turned gray, shrunk to ``(hash_size, hash_size + 1)`` (rows, cols) with ``INTER_AREA``
    and bit ``r * hash_size + c`` (most significant first) is ``small[r, c + 1] > small[r, c]``:
    whether brightness rises from left to right. Scaling the brightness keeps the sign of
    those differences, so jittered copies land a few bits apart; unrelated images differ in
    about half the bits.
    """
    img = np.asarray(image)
    if img.ndim == 3:
        if img.shape[2] == 1:
            img = img[..., 0]
        else:
            img = cv2.cvtColor(img[..., :3], cv2.COLOR_BGR2GRAY)
    if img.ndim != 2 or img.size == 0:
        raise ValueError(f"dhash needs a 2-D gray or 3-channel image, got shape {np.shape(image)}")
    small = cv2.resize(img.astype(np.float32), (hash_size + 1, hash_size), interpolation=cv2.INTER_AREA)
    bits = (small[:, 1:] > small[:, :-1]).reshape(-1)
    value = 0
    for b in bits:
        value = (value << 1) | int(b)
    return value


def image_dhash(path: str | Path, hash_size: int = 8) -> int | None:
    """:func:`dhash` of the image file at ``path`` (decoded gray), ``None`` if it is truncated or
    cannot be decoded (:func:`promptseg.images.read_image`)."""
    try:
        img = read_image(path, cv2.IMREAD_GRAYSCALE)
    except ImageReadError:
        return None
    return dhash(img, hash_size)


def detail_thumbnail(image: np.ndarray, side: int = THUMB_SIDE, sigma: float = THUMB_SIGMA) -> np.ndarray:
    """The image's fine structure, for confirming a dhash match: gray, shrunk to
    ``side x side`` (``INTER_AREA``), minus its Gaussian blur (``sigma`` px: removes the
    lighting, vignette and overall brightness that dominate a 9x8 dhash), zero mean, unit
    L2 norm, float16. The dot product of two is their correlation (1: same structure)."""
    img = np.asarray(image)
    if img.ndim == 3:
        img = cv2.cvtColor(img[..., :3], cv2.COLOR_BGR2GRAY) if img.shape[2] >= 3 else img[..., 0]
    t = cv2.resize(img.astype(np.float32), (side, side), interpolation=cv2.INTER_AREA)
    hp = t - cv2.GaussianBlur(t, (0, 0), sigma)
    hp -= hp.mean()
    norm = float(np.linalg.norm(hp))
    return (hp / norm if norm > 1e-6 else np.zeros_like(hp)).astype(np.float16)


def image_signature(path: str | Path) -> tuple[int | None, np.ndarray | None]:
    """``(dhash, detail_thumbnail)`` of the image file at ``path`` from one gray decode;
    ``(None, None)`` if it is truncated or cannot be decoded (:func:`promptseg.images.read_image`;
    the masks stage then skips and names it)."""
    try:
        img = read_image(path, cv2.IMREAD_GRAYSCALE)
    except ImageReadError:
        return None, None
    return dhash(img), detail_thumbnail(img)


def thumbnail_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of two :func:`detail_thumbnail` arrays (in [-1, 1]; 0 if either is flat)."""
    return float(np.dot(a.astype(np.float32).ravel(), b.astype(np.float32).ravel()))


def hamming(a: int, b: int) -> int:
    """Number of differing bits between two hashes."""
    return int(a ^ b).bit_count()


def hash_hex(h: int | None, bits: int = 64) -> str:
    """A hash as fixed-width hex (``""`` for None)."""
    return "" if h is None else f"{h:0{bits // 4}x}"


def near_duplicate_pairs(
    hashes: Sequence[int | None],
    max_distance: int,
    *,
    thumbnails: Sequence[np.ndarray | None] | None = None,
    min_correlation: float = DEFAULT_MIN_CORRELATION,
    chunk: int = 1024,
) -> list[tuple[int, int, int]]:
    """Every near-duplicate pair ``(i, j, distance)``, ``i < j``, sorted.

    A pair is a near-duplicate when its 64-bit hashes differ in at most ``max_distance``
    bits and, where ``thumbnails`` are given (one :func:`detail_thumbnail` per image), the
    correlation of their thumbnails is at least ``min_correlation``. The second test is
    needed on real photos: a 9x8 dhash mostly sees the lighting, and on the real crack
    export (804 images) 239 pairs lie within 6 bits, nearly all of them different walls
    (thumbnail correlation at most 0.75), while copies of one photo correlated 0.92 or more. Entries that are ``None``
    (unreadable images) pair with nothing; a negative ``max_distance`` gives no pairs. All
    pairs are compared (vectorised, ``chunk`` rows at a time): 5,000 images take well under
    a second.
    """
    if max_distance < 0:
        return []
    idx = np.array([i for i, h in enumerate(hashes) if h is not None], dtype=np.int64)
    if len(idx) < 2:
        return []
    vals = np.array([hashes[i] for i in idx], dtype=np.uint64)
    out: list[tuple[int, int, int]] = []
    for start in range(0, len(vals), chunk):
        block = vals[start : start + chunk]
        dist = np.bitwise_count(block[:, None] ^ vals[None, :])  # (b, n)
        rows, cols = np.nonzero(dist <= max_distance)
        keep = cols > rows + start  # upper triangle only
        for r, c in zip(rows[keep], cols[keep]):
            i, j = int(idx[r + start]), int(idx[c])
            if thumbnails is not None:
                ti, tj = thumbnails[i], thumbnails[j]
                if ti is None or tj is None or thumbnail_correlation(ti, tj) < min_correlation:
                    continue
            out.append((i, j, int(dist[r, c])))
    out.sort()
    return out


# ------------------------------------------------------------------------- grouping


def union_groups(name_groups: Sequence[str], pairs: Sequence[tuple[int, int, int]]) -> list[str]:
    """Final group key per image: connected components of "same name group" or "a pair in
    ``pairs``" (union-find); each component is keyed by the smallest name group in it."""
    parent = list(range(len(name_groups)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)

    first: dict[str, int] = {}
    for i, g in enumerate(name_groups):
        if g in first:
            union(first[g], i)
        else:
            first[g] = i
    for i, j, _ in pairs:
        union(i, j)
    key: dict[int, str] = {}
    for i, g in enumerate(name_groups):
        r = find(i)
        key[r] = min(key.get(r, g), g)
    return [key[find(i)] for i in range(len(name_groups))]


def _normalise_ratios(ratios: dict[str, float]) -> dict[str, float]:
    unknown = set(ratios) - set(SPLITS)
    if unknown:
        raise ValueError(f"split ratios name unknown splits {sorted(unknown)}; use {', '.join(SPLITS)}")
    vals = {s: float(ratios.get(s, 0.0)) for s in SPLITS}
    if any(v < 0 or not np.isfinite(v) for v in vals.values()) or sum(vals.values()) <= 0:
        raise ValueError(f"split ratios must be non-negative with a positive sum, got {ratios}")
    total = sum(vals.values())
    return {s: v / total for s, v in vals.items()}


def assign_grouped(groups: Sequence[str], ratios: dict[str, float], seed: int) -> list[str]:
    """Split per image such that every group lies in exactly one split.

    Groups (sorted by key) are visited in the order of ``numpy.random.default_rng(seed)
    .permutation``; each goes to the split furthest below its target (``ratio * images``;
    ties: train, val, test), so the ratios hold in images, not in groups. When the groups
    left are just enough to give every still-empty split (with a ratio above zero) one
    group, they go there: with at least as many groups as such splits, none is empty.
    Deterministic for given groups, ratios and seed.
    """
    share = _normalise_ratios(ratios)
    wanted = [s for s in SPLITS if share[s] > 0]
    size: dict[str, int] = {}
    for g in groups:
        size[g] = size.get(g, 0) + 1
    keys = sorted(size)
    order = [keys[i] for i in np.random.default_rng(int(seed)).permutation(len(keys))]
    total = len(groups)
    filled = {s: 0 for s in SPLITS}
    where: dict[str, str] = {}
    for k, g in enumerate(order):
        left = len(order) - k
        empty = [s for s in wanted if filled[s] == 0]
        if empty and left <= len(empty):
            # Just enough groups left to fill the empty splits: one each, largest target first.
            split = max(empty, key=lambda s: (share[s] * total - filled[s], -SPLITS.index(s)))
        else:
            split = max(wanted, key=lambda s: (share[s] * total - filled[s], -SPLITS.index(s)))
        where[g] = split
        filled[split] += size[g]
    return [where[g] for g in groups]


# --------------------------------------------------------------------------- stats


def split_stats(
    splits: Sequence[str],
    name_groups: Sequence[str],
    groups: Sequence[str],
    pairs: Sequence[tuple[int, int, int]],
) -> dict[str, dict[str, int]]:
    """Per split (in :data:`promptseg.SPLITS` order, only those present): ``images``,
    ``groups`` (distinct final groups: source photos), ``name_groups``, ``copies``
    (``images - groups``) and leakage counts ``leak_by_name``, ``leak_by_hash``,
    ``leak_by_group``: images of this split whose name group / some near-duplicate /
    group is also in another split."""
    present = [s for s in SPLITS if s in set(splits)] + sorted(set(splits) - set(SPLITS))
    name_splits: dict[str, set[str]] = {}
    group_splits: dict[str, set[str]] = {}
    for s, n, g in zip(splits, name_groups, groups):
        name_splits.setdefault(n, set()).add(s)
        group_splits.setdefault(g, set()).add(s)
    hash_leak = set()
    for i, j, _ in pairs:
        if splits[i] != splits[j]:
            hash_leak.update((i, j))
    out: dict[str, dict[str, int]] = {}
    for s in present:
        members = [i for i, x in enumerate(splits) if x == s]
        n_groups = len({groups[i] for i in members})
        out[s] = {
            "images": len(members),
            "groups": n_groups,
            "name_groups": len({name_groups[i] for i in members}),
            "copies": len(members) - n_groups,
            "leak_by_name": sum(1 for i in members if len(name_splits[name_groups[i]]) > 1),
            "leak_by_hash": sum(1 for i in members if i in hash_leak),
            "leak_by_group": sum(1 for i in members if len(group_splits[groups[i]]) > 1),
        }
    return out


# ---------------------------------------------------------------------------- plan


@dataclass
class SplitPlan:
    """Where each record of an export goes, and why. Lists are aligned with the records."""

    strategy: str
    exported: list[str]  # the export's split (ours: train/val/test)
    written: list[str]  # the split the processed tree gets
    name_groups: list[str]
    groups: list[str]
    hashes: list[int | None]
    pairs: list[tuple[int, int, int]]  # near-duplicates (i < j, distance)
    max_distance: int
    min_correlation: float = DEFAULT_MIN_CORRELATION
    seed: int | None = None
    ratios: dict[str, float] | None = None
    names: list[str] = field(default_factory=list)  # image file names, for messages

    def stats(self, which: str, keep: Sequence[bool] | None = None) -> dict[str, dict[str, int]]:
        """:func:`split_stats` of the ``"as_exported"`` or ``"written"`` splits, over the
        records where ``keep`` is true (default: all)."""
        splits = self.exported if which == "as_exported" else self.written
        if keep is None:
            return split_stats(splits, self.name_groups, self.groups, self.pairs)
        kept = [i for i, k in enumerate(keep) if k]
        new = {i: n for n, i in enumerate(kept)}
        pairs = [(new[i], new[j], d) for i, j, d in self.pairs if i in new and j in new]
        return split_stats(
            [splits[i] for i in kept], [self.name_groups[i] for i in kept], [self.groups[i] for i in kept], pairs
        )

    def duplicates_across(self, which: str = "as_exported") -> dict[int, list[str]]:
        """Record index -> human notes for each record whose source photo (by name) or a
        near-duplicate (by hash) sits in another split of ``which``."""
        splits = self.exported if which == "as_exported" else self.written
        name_members: dict[str, list[int]] = {}
        for i, n in enumerate(self.name_groups):
            name_members.setdefault(n, []).append(i)
        notes: dict[int, list[str]] = {}
        for i, n in enumerate(self.name_groups):
            others = sorted({splits[j] for j in name_members[n] if splits[j] != splits[i]})
            if others:
                notes.setdefault(i, []).append(f"source photo '{n}' also in {'/'.join(others)}")
        for i, j, d in self.pairs:
            if splits[i] != splits[j]:
                for a, b in ((i, j), (j, i)):
                    notes.setdefault(a, []).append(
                        f"near-duplicate (dhash distance {d}) of {self.names[b]} in {splits[b]}"
                    )
        return notes

    def summary(self, written: Sequence[bool] | None = None) -> dict:
        """The ``split`` section of ``metrics/data/<dataset>.json`` (numbers only).

        ``written``: per record, whether it made it into the processed tree (an image
        that cannot be decoded does not); the ``"written"`` figures count only those."""
        out: dict = {
            "grouped": int(self.strategy == "grouped"),
            "dhash_max_distance": int(self.max_distance),
            "min_correlation": float(self.min_correlation),
            "images": len(self.groups),
            "groups": len(set(self.groups)),
            "name_groups": len(set(self.name_groups)),
            "near_duplicate_pairs": len(self.pairs),
            "unhashed_images": sum(1 for h in self.hashes if h is None),
            "as_exported": self.stats("as_exported"),
            "written": self.stats("written", written),
        }
        if self.seed is not None:
            out["seed"] = int(self.seed)
        return out


def plan_splits(
    records: Sequence[ImageRecord],
    *,
    strategy: str = "as_exported",
    ratios: dict[str, float] | None = None,
    seed: int = 42,
    max_distance: int = DEFAULT_MAX_DISTANCE,
    min_correlation: float = DEFAULT_MIN_CORRELATION,
    workers: int | None = None,
) -> SplitPlan:
    """Group ``records`` (name groups + near-duplicates) and decide their split.

    ``strategy``: ``"as_exported"`` keeps each record's split; ``"grouped"`` re-splits
    with :func:`assign_grouped` (``ratios``: train/val/test shares in images, default
    :data:`DEFAULT_RATIOS`; ``seed``). Near-duplicates: :func:`near_duplicate_pairs` with
    ``max_distance`` and ``min_correlation`` (``<= -1`` trusts the dhash alone). Each
    image is decoded gray once (``workers`` threads, default ``min(8, cpu_count)``); an
    unreadable image gets no hash and groups by name only.
    """
    if strategy not in SPLIT_STRATEGIES:
        raise ValueError(f"split strategy must be one of {SPLIT_STRATEGIES}, got {strategy!r}")
    records = list(records)
    paths = [r.image_path for r in records]
    sigs = map_in_threads(image_signature, paths, workers)
    hashes = [h for h, _ in sigs]
    thumbs = [t for _, t in sigs] if min_correlation > -1 else None
    name_groups = [source_group_of(Path(r.image_path).name, r.source_name) for r in records]
    pairs = near_duplicate_pairs(hashes, int(max_distance), thumbnails=thumbs, min_correlation=float(min_correlation))
    groups = union_groups(name_groups, pairs)
    exported = [r.split for r in records]
    if strategy == "grouped":
        ratios = _normalise_ratios(dict(DEFAULT_RATIOS if ratios is None else ratios))
        written = assign_grouped(groups, ratios, seed)
    else:
        ratios = None
        written = list(exported)
    return SplitPlan(
        strategy=strategy,
        exported=exported,
        written=written,
        name_groups=name_groups,
        groups=groups,
        hashes=hashes,
        pairs=pairs,
        max_distance=int(max_distance),
        min_correlation=float(min_correlation),
        seed=int(seed) if strategy == "grouped" else None,
        ratios=ratios,
        names=[Path(r.image_path).name for r in records],
    )
