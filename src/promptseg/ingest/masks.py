"""Render :class:`~promptseg.ingest.exports.ImageRecord` shapes to binary masks, clip and count.

Conventions (tested in ``tests/test_masks.py``):

* Masks are ``uint8`` with values ``{0, 255}``, at the image's ACTUAL decoded size
  (:func:`promptseg.images.read_image`, which also refuses truncated files), never at the size the annotation file claims. A differing size is
  counted ``size_mismatch`` and reported; coordinates are NOT rescaled, they are
  rendered as they are and clipped to the real image.
* Rounding is half-up: ``floor(v + 0.5)`` (not numpy's round-half-to-even).
* **Box** ``(x0, y0, x1, y1)`` in continuous pixel coordinates (pixel column ``c`` spans
  ``[c, c + 1)``) covers columns ``round(x0) .. round(x1) - 1`` and rows
  ``round(y0) .. round(y1) - 1`` (half-open), i.e. after clipping to the image
  ``cv2.rectangle(mask, (c0, r0), (c1 - 1, r1 - 1), 255, thickness=-1)``. A COCO bbox
  ``[x, y, w, h]`` = ``[0, 0, 640, 640]`` on a 640x640 image covers every pixel.
  A box reaching outside ``[0, W] x [0, H]`` (e.g. ``x + w == W + 1``) is clipped and
  counted ``clipped_boxes``. A box whose clipped width or height is below
  ``min_box_side_px`` (sub-pixel ``[0, 0, 0.5, 1]``, zero-width ``[0, 0, 0, 1]``, a box
  entirely outside the image) is skipped and counted ``degenerate_boxes``; so is one
  that rounds to zero columns or rows (possible only with ``min_box_side_px < 1``).
* **Polygon**: vertices rounded half-up, then ``np.clip`` to ``[0, W-1] x [0, H-1]``,
  then ``cv2.fillPoly`` (boundary pixels included). A polygon with a vertex outside
  ``[0, W] x [0, H]`` is counted ``clipped_polygons`` (a vertex exactly on the border,
  ``x == W``, as Roboflow writes them, is inside); one wholly outside (its bounding box misses the image)
  draws nothing and is dropped as ``polygons_outside_image``. Several polygons (the parts of a
  multi-part annotation, or several annotations) render to their union: each is filled
  on its own, so overlaps never cancel. COCO polygons cannot express holes.
* **RLE**: decoded with ``pycocotools.mask`` (compressed or uncompressed counts). An RLE
  whose size differs from the image is cropped/zero-padded at the top-left and counted
  ``rle_size_mismatch``; an undecodable one is counted ``malformed_rle``.
* Every shape dropped while rendering (a degenerate box, a malformed RLE) is reported with its
  annotation; an image whose shapes are ALL dropped is skipped (``all_labels_invalid``), never
  written as a negative. A truncated or undecodable image is skipped (``truncated_image`` or
  ``corrupt_image``) and named.
"""

from __future__ import annotations

import collections
import csv
import shutil
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from tqdm import tqdm

from promptseg.images import ImageReadError, read_image
from promptseg.ingest.exports import (
    PROBLEM_COLUMNS,
    ExportError,
    ExportReadResult,
    ImageRecord,
    Problem,
    source_group_of,
)
from promptseg.ingest.splits import SplitPlan, hash_hex, map_in_threads, plan_splits
from promptseg.params import SPLITS

#: Counters rendering adds to each split (zero when not met).
RENDER_COUNT_KEYS = (
    "corrupt_image",
    "truncated_image",
    "all_labels_invalid",
    "size_mismatch",
    "clipped_boxes",
    "clipped_polygons",
    "polygons_outside_image",
    "degenerate_boxes",
    "rle_size_mismatch",
    "malformed_rle",
    "duplicate_stems",
)

INDEX_COLUMNS = (
    "stem",
    "split",
    "exported_split",
    "source_group",
    "group",
    "dhash",
    "width",
    "height",
    "foreground_fraction",
    "n_shapes",
    "notes",
    "leak_as_exported",
)

#: Where a synthetic (or any) export keeps true masks beside the annotations:
#: ``<export>/true_masks/<roboflow split>/<file stem>.png``; they are copied to
#: ``<processed>/<split>/true_masks/<stem>.png``, following the image to its written split.
TRUE_MASKS_DIR = "true_masks"


def _round_half_up(v):
    return np.floor(np.asarray(v, dtype=np.float64) + 0.5)


def _fill_polygons(mask: np.ndarray, polygons: list[np.ndarray]) -> None:
    h, w = mask.shape[:2]
    for poly in polygons:
        pts = _round_half_up(np.asarray(poly, dtype=np.float64).reshape(-1, 2))
        pts[:, 0] = np.clip(pts[:, 0], 0, w - 1)
        pts[:, 1] = np.clip(pts[:, 1], 0, h - 1)
        # One call per polygon: a union, whatever the orientation or overlap.
        cv2.fillPoly(mask, [pts.astype(np.int32)], 255)


def _box_pixels(box, height: int, width: int) -> tuple[int, int, int, int, bool, float, float]:
    """Half-open pixel box (c0, r0, c1, r1) clipped to the image, whether clipping
    happened, and the clipped continuous width/height."""
    x0, y0, x1, y1 = (float(v) for v in box)
    clipped = x0 < 0 or y0 < 0 or x1 > width or y1 > height
    cw = min(x1, width) - max(x0, 0.0)
    ch = min(y1, height) - max(y0, 0.0)
    c0, r0, c1, r1 = (int(v) for v in _round_half_up([x0, y0, x1, y1]))
    c0, c1 = max(c0, 0), min(c1, width)
    r0, r1 = max(r0, 0), min(r1, height)
    return c0, r0, c1, r1, clipped, cw, ch


def _fill_box(mask: np.ndarray, c0: int, r0: int, c1: int, r1: int) -> None:
    cv2.rectangle(mask, (c0, r0), (c1 - 1, r1 - 1), 255, thickness=-1)


def render_polygon_mask(height: int, width: int, polygons: list[np.ndarray]) -> np.ndarray:
    """uint8 {0,255} mask: union of ``cv2.fillPoly`` of each (N, 2) polygon (x, y),
    vertices rounded half-up and clipped to the image."""
    mask = np.zeros((height, width), dtype=np.uint8)
    _fill_polygons(mask, polygons)
    return mask


def render_box_mask(height: int, width: int, boxes: list[tuple[float, float, float, float]]) -> np.ndarray:
    """uint8 {0,255} mask: each ``(x0, y0, x1, y1)`` box filled over columns
    ``round(x0) .. round(x1) - 1`` and rows ``round(y0) .. round(y1) - 1`` (half-open),
    clipped to the image; boxes that round to nothing draw nothing."""
    mask = np.zeros((height, width), dtype=np.uint8)
    for box in boxes:
        c0, r0, c1, r1, *_ = _box_pixels(box, height, width)
        if c1 > c0 and r1 > r0:
            _fill_box(mask, c0, r0, c1, r1)
    return mask


def _decode_rle(rle: dict) -> np.ndarray:

    h, w = (int(v) for v in rle["size"])
    cnts = rle["counts"]
    if isinstance(cnts, list):
        if sum(int(v) for v in cnts) != h * w:
            raise ValueError(f"uncompressed RLE counts sum to {sum(cnts)}, not {h}*{w}")
        enc = mask_utils.frPyObjects({"size": [h, w], "counts": [int(v) for v in cnts]}, h, w)
    else:
        enc = {"size": [h, w], "counts": cnts.encode("ascii") if isinstance(cnts, str) else cnts}
    m = mask_utils.decode(enc)
    if m.ndim == 3:
        m = m[..., 0]
    return m


def render_record_mask(
    record: ImageRecord,
    height: int,
    width: int,
    counts: collections.Counter,
    *,
    min_box_side_px: float = 1.0,
    dropped: list | None = None,
) -> np.ndarray:
    """The union of ``record.shapes`` as a uint8 {0,255} mask of ``(height, width)``
    (the image's actual size). Clipping, degenerate boxes and RLE trouble are added to
    ``counts`` (see the module docstring for the conventions); each shape that draws nothing
    because it is unusable is appended to ``dropped`` as ``(shape, counter, reason)``."""
    dropped = [] if dropped is None else dropped
    mask = np.zeros((height, width), dtype=np.uint8)
    polygons = []
    for shape in record.shapes:
        if shape.kind == "polygon":
            pts = np.asarray(shape.points, dtype=np.float64).reshape(-1, 2)
            if (
                (pts[:, 0] < 0).any()
                or (pts[:, 0] > width).any()
                or (pts[:, 1] < 0).any()
                or (pts[:, 1] > height).any()
            ):
                counts["clipped_polygons"] += 1
            if pts[:, 0].max() < 0 or pts[:, 0].min() > width or pts[:, 1].max() < 0 or pts[:, 1].min() > height:
                counts["polygons_outside_image"] += 1
                why = (
                    f"polygon spans x {pts[:, 0].min():g}..{pts[:, 0].max():g}, y {pts[:, 1].min():g}.."
                    f"{pts[:, 1].max():g}: wholly outside the {width}x{height} image"
                )
                dropped.append((shape, "polygons_outside_image", why))
                continue
            polygons.append(pts)
        elif shape.kind == "box":
            c0, r0, c1, r1, clipped, cw, ch = _box_pixels(shape.box, height, width)
            if clipped:
                counts["clipped_boxes"] += 1
            if cw < min_box_side_px or ch < min_box_side_px or c1 <= c0 or r1 <= r0:
                counts["degenerate_boxes"] += 1
                why = (
                    f"box {tuple(round(float(v), 2) for v in shape.box)} (x0, y0, x1, y1) covers "
                    f"{max(cw, 0):.2f} x {max(ch, 0):.2f} px of the {width}x{height} image "
                    f"(below min_box_side_px={min_box_side_px:g})"
                )
                dropped.append((shape, "degenerate_boxes", why))
                continue
            _fill_box(mask, c0, r0, c1, r1)
        elif shape.kind == "rle":
            try:
                m = _decode_rle(shape.rle)
            except Exception as exc:  # noqa: BLE001 - a bad RLE is counted, not fatal
                counts["malformed_rle"] += 1
                dropped.append(
                    (shape, "malformed_rle", f"RLE cannot be decoded ({type(exc).__name__}: {str(exc)[:80]})")
                )
                continue
            if m.shape != (height, width):
                counts["rle_size_mismatch"] += 1
                hh, ww = min(m.shape[0], height), min(m.shape[1], width)
                mask[:hh, :ww][m[:hh, :ww] > 0] = 255
            else:
                mask[m > 0] = 255
        else:
            counts["unknown_shape_kind"] += 1
            dropped.append((shape, "unknown_shape_kind", f"unknown shape kind {shape.kind!r}"))
    if polygons:
        _fill_polygons(mask, polygons)
    return mask


def _check_no_overlap(out_dir: Path, split_names: list[str], export_root: Path | None) -> None:
    """Refuse to write into the export being read, or to clear a folder that holds it."""
    if export_root is None:
        return
    r = Path(export_root).resolve()
    o = Path(out_dir).resolve()
    bad = o == r or r in o.parents  # out_dir is the export or inside it
    for split in split_names:
        p = (o / split).resolve()
        bad = bad or p == r or p in r.parents  # clearing out_dir/<split> would delete it
    if bad:
        raise ValueError(
            f"refusing to write {out_dir}: it overlaps the export being read ({export_root}); "
            "write the processed dataset to another folder"
        )


def _true_mask_source(rec: ImageRecord, export_root: Path | None) -> Path | None:
    """``<export>/true_masks/<roboflow split>/<file stem>.png`` for ``rec`` if it exists."""
    if export_root is None:
        return None
    try:
        rf_split = Path(rec.image_path).relative_to(export_root).parts[0]
    except ValueError:
        return None
    p = Path(export_root) / TRUE_MASKS_DIR / rf_split / f"{Path(rec.image_path).stem}.png"
    return p if p.is_file() else None


def _process_one(
    rec: ImageRecord,
    split: str,
    stem: str,
    dup: bool,
    out_dir: Path,
    min_box_side_px: float,
    true_mask: Path | None = None,
) -> tuple[dict | None, collections.Counter, list[Problem]]:
    """Decode, render and write one image into ``out_dir/<split>``: (index row or None,
    per-image counts, problems)."""
    per_image: collections.Counter = collections.Counter()
    problems: list[Problem] = []
    path = Path(rec.image_path)
    size = _decoded_size(path, split, per_image, problems)
    if size is None:
        return None, per_image, problems
    h, w = size
    if dup:
        per_image["duplicate_stems"] += 1
    check_size(rec, path, split, h, w, per_image, problems)
    mask = render_with_problems(rec, path, split, h, w, min_box_side_px, per_image, problems)
    if mask is None:
        return None, per_image, problems
    _write_image_and_masks(path, out_dir / split, stem, mask, true_mask)
    return _index_row(rec, path, split, stem, mask, h, w, per_image, true_mask), per_image, problems


def _decoded_size(path: Path, split: str, per_image: collections.Counter, problems: list) -> tuple[int, int] | None:
    """(height, width) of the decoded image, or None (counted, with a problem) when it cannot be decoded."""
    try:
        img = read_image(path, cv2.IMREAD_COLOR)
    except ImageReadError as exc:
        per_image[exc.kind] += 1
        problems.append(
            Problem(
                f"{path}: {exc.reason}; it is skipped; re-download the export or remove the file",
                kind=exc.kind,
                file=path,
                split=split,
            )
        )
        return None
    return img.shape[:2]


def check_size(rec: ImageRecord, path: Path, split: str, h: int, w: int, per_image, problems: list) -> None:
    """A size in the annotation that differs from the file's is counted and named."""
    if (rec.width is not None and rec.width != w) or (rec.height is not None and rec.height != h):
        per_image["size_mismatch"] += 1
        problems.append(
            Problem(
                f"{path}: the annotation says {rec.width}x{rec.height} but the file is {w}x{h}; "
                "the shapes are rendered unscaled and clipped to the file; re-download the export",
                kind="size_mismatch",
                file=path,
                split=split,
            )
        )


def render_with_problems(
    rec: ImageRecord, path: Path, split: str, h: int, w: int, min_box_side_px: float, per_image, problems: list
) -> np.ndarray | None:
    """The rendered mask, each shape that draws nothing named; None when every shape draws nothing."""
    dropped: list = []
    mask = render_record_mask(rec, h, w, per_image, min_box_side_px=min_box_side_px, dropped=dropped)
    for shape, kind, why in dropped:
        problems.append(
            Problem(
                f"{path}: annotation {shape.ref or '?'}: {why}; it draws nothing; fix it in Roboflow and re-export",
                kind=kind,
                file=path,
                split=split,
                annotation=shape.ref,
            )
        )
    if rec.shapes and len(dropped) == len(rec.shapes):
        per_image["all_labels_invalid"] += 1
        problems.append(
            Problem(
                f"{path}: all {len(dropped)} of its shapes draw nothing (see the problems naming them); the "
                "image is skipped, not kept as a negative; fix the labels and re-export",
                kind="all_labels_invalid",
                file=path,
                split=split,
            )
        )
        return None
    return mask


def _write_image_and_masks(path: Path, split_dir: Path, stem: str, mask: np.ndarray, true_mask: Path | None) -> None:
    """``images/<stem><ext>`` (a copy), ``masks/<stem>.png`` and, where there is one, ``true_masks/<stem>.png``."""
    shutil.copy2(path, split_dir / "images" / f"{stem}{path.suffix}")
    mask_path = split_dir / "masks" / f"{stem}.png"
    if not cv2.imwrite(str(mask_path), mask):
        raise OSError(f"could not write {mask_path}")
    if true_mask is not None:
        (split_dir / TRUE_MASKS_DIR).mkdir(exist_ok=True)
        shutil.copy2(true_mask, split_dir / TRUE_MASKS_DIR / f"{stem}.png")


def _index_row(rec, path: Path, split: str, stem: str, mask, h: int, w: int, per_image, true_mask) -> dict:
    frac = float(np.count_nonzero(mask)) / float(mask.size)
    return {
        "stem": stem,
        "split": split,
        "exported_split": rec.split,
        "source_group": source_group_of(path.name, rec.source_name),
        "width": w,
        "height": h,
        "foreground_fraction": f"{frac:.6f}",
        "n_shapes": len(rec.shapes),
        "notes": ";".join(f"{k}={v}" for k, v in sorted(per_image.items()) if v),
        "_fraction": frac,
        "_true_mask": true_mask is not None,
    }


def write_problems_csv(problems: list, path: Path) -> collections.Counter:
    """Write every problem as a row of :data:`promptseg.ingest.exports.PROBLEM_COLUMNS` (a plain string
    becomes a row with only ``detail``); return the count per kind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kinds: collections.Counter = collections.Counter()
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(PROBLEM_COLUMNS))
        writer.writeheader()
        for p in problems:
            row = p.row() if isinstance(p, Problem) else {"detail": str(p)}
            kinds[row.get("kind") or "other"] += 1
            writer.writerow(row)
    return kinds


def write_processed_dataset(read: ExportReadResult, out_dir: Path, *, describes: tuple = (), **kwargs) -> dict:
    """:func:`build_processed_dataset` into the sibling folder ``<out_dir>.partial``, renamed to
    ``out_dir`` (replacing it) only when complete: an interrupted run never leaves a half-written
    tree or a stale ``index.csv`` behind (``download`` does the same). ``describes``: files written about the
    tree after it (``metrics/data/<dataset>.json``), removed just before the rename, so that an interruption
    leaves the old tree with its files, or the new tree without them, never the new tree with the old ones."""
    out_dir = Path(out_dir)
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        summary = build_processed_dataset(read, partial, **kwargs)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    for stale in describes:
        Path(stale).unlink(missing_ok=True)
    shutil.rmtree(out_dir, ignore_errors=True)
    partial.rename(out_dir)
    return summary


def build_processed_dataset(
    read: ExportReadResult,
    out_dir: Path,
    *,
    min_box_side_px: float = 1.0,
    workers: int | None = None,
    plan: SplitPlan | None = None,
) -> dict:
    """Write ``out_dir/<split>/images/<stem><ext>`` (a copy), ``out_dir/<split>/masks/<stem>.png``
    ({0,255} uint8) and ``out_dir/index.csv``; return the dict for ``metrics/data/<dataset>.json``.

    ``plan`` (:func:`promptseg.ingest.splits.plan_splits` of ``read.records``) decides each image's
    split; by default the export's own splits (``as_exported``, near-duplicates found with the
    default thresholds, for the leakage figures). Where the export has true masks
    (``<export>/true_masks/<roboflow split>/<file stem>.png``, as the synthetic drywall export
    writes), each is copied to ``out_dir/<split>/true_masks/<stem>.png`` beside its image.

    Existing ``out_dir/{train,val,test}`` folders are replaced. An image that is truncated or
    cannot be decoded is skipped (``truncated_image`` / ``corrupt_image``), so is one whose shapes
    all draw nothing (``all_labels_invalid``); rendering problems (:class:`Problem`) are appended
    to ``read.problems``.
    The returned dict has, per written split, ``images`` (written), ``with_foreground``,
    ``without_foreground``, ``mean_foreground_fraction`` and every rendering count
    (:data:`RENDER_COUNT_KEYS`); with ``as_exported`` splits also every count of
    ``read.counts`` (which are counts of the export's splits, so a grouped re-split keeps
    them only under ``"export"``). Top level: ``"problems"`` (the number of problem
    messages), ``"export"`` (``read.counts``), ``"split"`` (:meth:`SplitPlan.summary`: groups,
    copies and cross-split leakage of the splits as exported and as written) and, when the
    export has them, ``"true_masks"`` (copied per split). Raises ``ValueError`` if no usable
    image comes out (an :class:`~promptseg.ingest.exports.ExportError`). ``workers``: threads for decode/render/write (default
    ``min(8, cpu_count)``; 1 runs inline); the output does not depend on it.
    """
    out_dir = Path(out_dir)
    if plan is None:
        plan = plan_splits(read.records, strategy="as_exported", workers=workers)
    split_names = _prepare_out_dir(read, out_dir, plan)
    jobs = _plan_jobs(read, plan, split_names, out_dir)

    def work(job):
        _, rec, split, stem, dup, true_mask = job
        return _process_one(rec, split, stem, dup, out_dir, min_box_side_px, true_mask)

    with tqdm(total=len(jobs), desc=f"masks {out_dir.name}", unit="img", disable=None) as bar:  # render progress
        results = map_in_threads(lambda job: (work(job), bar.update())[0], jobs, workers)
    rows, render_counts, fg_fractions, true_masks = _collect_rows(read, plan, split_names, jobs, results)
    if not rows:
        _raise_no_usable_images(read, render_counts)
    with open(out_dir / "index.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(INDEX_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    summary = _split_summaries(read, plan, split_names, render_counts, fg_fractions)
    summary["problems"] = len(read.problems)
    summary["export"] = {split: {k: int(v) for k, v in c.items()} for split, c in read.counts.items()}
    summary["split"] = plan.summary(written=[r[0] is not None for r in results])
    if true_masks:
        summary["true_masks"] = {s: int(true_masks[s]) for s in split_names}
    return summary


def _prepare_out_dir(read: ExportReadResult, out_dir: Path, plan: SplitPlan) -> list[str]:
    """Check the plan and the folders, clear ``out_dir``'s split folders; the split names to write."""
    if len(plan.written) != len(read.records):
        raise ValueError(f"the split plan has {len(plan.written)} entries for {len(read.records)} records")
    split_names = list(dict.fromkeys([*read.counts.keys(), *plan.written]))
    _check_no_overlap(out_dir, list(dict.fromkeys([*SPLITS, *split_names])), read.root)
    for split in dict.fromkeys([*SPLITS, *split_names]):
        if (out_dir / split).exists():
            shutil.rmtree(out_dir / split)
    out_dir.mkdir(parents=True, exist_ok=True)
    if plan.strategy == "grouped":
        split_names = [s for s in SPLITS if s in set(plan.written)]
    return split_names


def _plan_jobs(read: ExportReadResult, plan: SplitPlan, split_names: list[str], out_dir: Path) -> list[tuple]:
    """One job per record: (index, record, split, output stem, duplicate?, true mask source); output stems
    unique per split, decided up front so that the work can run in threads. Makes the split folders."""
    used_stems: dict[str, set[str]] = {s: set() for s in split_names}
    jobs = []
    for i, (rec, split) in enumerate(zip(read.records, plan.written)):
        stem = Path(rec.image_path).stem
        dup = stem in used_stems[split]
        if dup:
            k = 2
            while f"{stem}__{k}" in used_stems[split]:
                k += 1
            stem = f"{stem}__{k}"
        used_stems[split].add(stem)
        jobs.append((i, rec, split, stem, dup, _true_mask_source(rec, read.root)))
    for split in set(plan.written):
        (out_dir / split / "images").mkdir(parents=True, exist_ok=True)
        (out_dir / split / "masks").mkdir(parents=True, exist_ok=True)
    return jobs


def _collect_rows(read: ExportReadResult, plan: SplitPlan, split_names: list[str], jobs, results):
    """The index rows of the written images (with group, hash and leaks), the render counts and foreground
    fractions per split, the true masks copied per split; every problem appended to ``read.problems``."""
    leaks = plan.duplicates_across("as_exported")
    render_counts: dict[str, collections.Counter] = {
        s: collections.Counter({k: 0 for k in RENDER_COUNT_KEYS}) for s in split_names
    }
    fg_fractions: dict[str, list[float]] = {s: [] for s in split_names}
    true_masks: collections.Counter = collections.Counter()
    rows = []
    for (i, _, split, _, _, _), (row, per_image, problems) in zip(jobs, results):
        render_counts[split].update(per_image)
        read.problems.extend(problems)
        if row is not None:
            fg_fractions[split].append(row.pop("_fraction"))
            true_masks[split] += int(row.pop("_true_mask"))
            row["group"] = plan.groups[i]
            row["dhash"] = hash_hex(plan.hashes[i])
            row["leak_as_exported"] = "; ".join(leaks.get(i, []))
            rows.append(row)
    return rows, render_counts, fg_fractions, true_masks


def _raise_no_usable_images(read: ExportReadResult, render_counts: dict) -> None:
    listed = sum(c.get("images_listed", 0) for c in read.counts.values())
    missing = sum(c.get("missing_image_file", 0) for c in read.counts.values())
    corrupt = sum(
        c.get(k, 0)
        for c in [*read.counts.values(), *render_counts.values()]
        for k in ("corrupt_image", "truncated_image", "image_too_large")
    )
    invalid = sum(c.get("all_labels_invalid", 0) for c in [*read.counts.values(), *render_counts.values()])
    where = read.root if read.root is not None else "the export"
    hint = "check the export path" if missing or not listed else "re-download the export"
    first = f"; first problem: {read.problems[0]}" if read.problems else ""
    raise ExportError(
        f"no usable images in {where}: {listed} listed, {missing} missing on disk, "
        f"{corrupt} corrupt, truncated or too large, {invalid} with only invalid labels; {hint}{first}"
    )


def _split_summaries(read, plan: SplitPlan, split_names: list[str], render_counts: dict, fg_fractions: dict) -> dict:
    """Per written split: the export's counts (as_exported only), the render counts and the foreground figures."""
    summary: dict = {}
    for split in split_names:
        fr = fg_fractions[split]
        entry: dict = {}
        if plan.strategy != "grouped":
            entry.update({k: int(v) for k, v in read.counts.get(split, {}).items()})
        for k, v in render_counts[split].items():
            entry[k] = entry.get(k, 0) + int(v)
        entry["images"] = len(fr)
        entry["with_foreground"] = sum(1 for x in fr if x > 0)
        entry["without_foreground"] = sum(1 for x in fr if x == 0)
        entry["mean_foreground_fraction"] = round(sum(fr) / len(fr), 6) if fr else 0.0
        summary[split] = entry
    return summary


__all__ = [
    "INDEX_COLUMNS",
    "RENDER_COUNT_KEYS",
    "check_size",
    "render_with_problems",
    "build_processed_dataset",
    "write_problems_csv",
    "write_processed_dataset",
    "render_box_mask",
    "render_polygon_mask",
    "render_record_mask",
    "source_group_of",
]
