"""Data QA a person can look at: contact sheets of the processed splits and a CSV of
suspicious items, both read off the processed tree (``index.csv``, ``images/``, ``masks/``).

* :func:`write_contact_sheets`: one PNG per split, ``grid x grid`` tiles of images with
  their mask overlaid in red and the file stem beneath. The tiles are a deterministic
  selection: evenly spaced over the split's images sorted by stem. A split with no images
  still gets a sheet (saying so), so that DVC always finds the declared outputs.
* :func:`suspicious_items`: one row per (image, reason): ``empty_render`` (the image has
  shapes but its mask has no pixel), ``degenerate_box`` (a box thinner than
  ``masks.min_box_side_px`` was skipped), ``render_problem`` (an RLE that could not be
  decoded or had another size, an image whose size differs from the annotation),
  ``large_mask`` (the mask covers more than ``max_foreground_share`` of the image) and
  ``duplicate_across_splits`` (in the export as downloaded, the same source photo or a
  near-duplicate sat in another split; the image's split in the CSV is the written one).
"""

from __future__ import annotations

import collections
import csv
from pathlib import Path

import cv2
import numpy as np

from promptseg.images import IMAGE_SUFFIXES
from promptseg.params import SPLITS

__all__ = [
    "HEADER_PX",
    "LABEL_PX",
    "SUSPICIOUS_COLUMNS",
    "contact_sheet",
    "contact_sheet_size",
    "read_index",
    "suspicious_items",
    "write_contact_sheets",
    "write_suspicious_csv",
]

SUSPICIOUS_COLUMNS = ("split", "stem", "reason", "detail")
HEADER_PX = 26  # title band above the tiles
LABEL_PX = 18  # file name band beneath each tile
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_OVERLAY_BGR = np.array([0, 0, 255], np.float32)  # red
_RENDER_PROBLEMS = ("malformed_rle", "rle_size_mismatch", "size_mismatch", "unknown_shape_kind")


def read_index(path: str | Path) -> list[dict[str, str]]:
    """The rows of a processed ``index.csv``."""
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------ suspicious


def _notes(row: dict) -> dict[str, int]:
    out = {}
    for part in (row.get("notes") or "").split(";"):
        if "=" in part:
            k, v = part.split("=", 1)
            try:
                out[k] = int(v)
            except ValueError:
                pass
    return out


def suspicious_items(rows: list[dict], *, max_foreground_share: float = 0.6) -> list[dict[str, str]]:
    """Rows ``{split, stem, reason, detail}`` for the suspicious images among ``rows`` (the
    processed ``index.csv``), sorted by split (train, val, test), stem and reason."""
    out = []
    for row in rows:
        split, stem = row["split"], row["stem"]
        n_shapes = int(row.get("n_shapes") or 0)
        frac = float(row.get("foreground_fraction") or 0.0)
        notes = _notes(row)

        def add(reason: str, detail: str) -> None:
            out.append({"split": split, "stem": stem, "reason": reason, "detail": detail})

        if n_shapes > 0 and frac == 0.0:
            add("empty_render", f"{n_shapes} shape(s) in the annotation, no pixel in the mask")
        if notes.get("degenerate_boxes"):
            add("degenerate_box", f"{notes['degenerate_boxes']} box(es) below masks.min_box_side_px skipped")
        problems = [f"{k}={notes[k]}" for k in _RENDER_PROBLEMS if notes.get(k)]
        if problems:
            add("render_problem", ", ".join(problems))
        if frac > max_foreground_share:
            add("large_mask", f"mask covers {frac:.1%} of the image (limit {max_foreground_share:.0%})")
        if row.get("leak_as_exported"):
            exported = row.get("exported_split") or "?"
            add("duplicate_across_splits", f"exported in {exported}: {row['leak_as_exported']}")
    order = {s: i for i, s in enumerate(SPLITS)}
    out.sort(key=lambda r: (order.get(r["split"], len(order)), r["split"], r["stem"], r["reason"]))
    return out


def write_suspicious_csv(rows: list[dict], path: str | Path, *, max_foreground_share: float = 0.6) -> dict[str, int]:
    """Write :func:`suspicious_items` to ``path`` (header even when empty); return the
    number of rows per reason."""
    items = suspicious_items(rows, max_foreground_share=max_foreground_share)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(SUSPICIOUS_COLUMNS))
        writer.writeheader()
        writer.writerows(items)
    return dict(sorted(collections.Counter(r["reason"] for r in items).items()))


# --------------------------------------------------------------------- contact sheets


def contact_sheet_size(grid: int = 4, tile_px: int = 192) -> tuple[int, int]:
    """``(width, height)`` in px of a contact sheet: ``grid`` tiles of ``tile_px`` across;
    a title band and, under each row of tiles, a label band."""
    return grid * tile_px, HEADER_PX + grid * (tile_px + LABEL_PX)


def _fit_text(text: str, width: int, scale: float) -> str:
    """``text``, shortened in the middle with '..' until it fits ``width`` px."""
    if cv2.getTextSize(text, _FONT, scale, 1)[0][0] <= width:
        return text
    keep = len(text)
    while keep > 4:
        keep -= 1
        head = (keep + 1) // 2
        short = text[:head] + ".." + text[len(text) - (keep - head) :]
        if cv2.getTextSize(short, _FONT, scale, 1)[0][0] <= width:
            return short
    return text[:4]


def _tile(image: np.ndarray, mask: np.ndarray | None, tile_px: int, alpha: float) -> np.ndarray:
    """The image letterboxed into ``tile_px`` square, the mask overlaid in red. The mask is
    shrunk with ``INTER_AREA`` and any coverage counts, so one-pixel cracks stay visible."""
    h, w = image.shape[:2]
    scale = tile_px / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    small = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA).astype(np.float32)
    if mask is not None and mask.shape[:2] == (h, w) and mask.any():
        m = cv2.resize((mask > 0).astype(np.float32), (nw, nh), interpolation=cv2.INTER_AREA) > 0
        small[m] = (1 - alpha) * small[m] + alpha * _OVERLAY_BGR
    tile = np.full((tile_px, tile_px, 3), 40, np.uint8)
    y0, x0 = (tile_px - nh) // 2, (tile_px - nw) // 2
    tile[y0 : y0 + nh, x0 : x0 + nw] = np.clip(np.rint(small), 0, 255).astype(np.uint8)
    return tile


def contact_sheet(
    split_dir: str | Path,
    *,
    title: str,
    grid: int = 4,
    tile_px: int = 192,
    alpha: float = 0.5,
) -> np.ndarray:
    """A BGR ``uint8`` contact sheet of ``split_dir/images`` with ``split_dir/masks`` overlaid,
    of :func:`contact_sheet_size`; ``grid * grid`` images evenly spaced over the images sorted
    by stem (all of them when fewer); the title band reads ``title``."""
    split_dir = Path(split_dir)
    width, height = contact_sheet_size(grid, tile_px)
    sheet = np.full((height, width, 3), 255, np.uint8)
    images = []
    if (split_dir / "images").is_dir():
        images = sorted(
            (p for p in (split_dir / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES),
            key=lambda p: (p.stem, p.name),
        )
    k = min(grid * grid, len(images))
    picks = sorted(set(np.linspace(0, len(images) - 1, k).round().astype(int).tolist())) if k else []
    header = f"{title}: {len(picks)} of {len(images)} images, mask in red" if images else f"{title}: no images"
    cv2.putText(sheet, _fit_text(header, width - 8, 0.5), (4, HEADER_PX - 8), _FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    for n, idx in enumerate(picks):
        path = images[idx]
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            continue
        mask = cv2.imread(str(split_dir / "masks" / f"{path.stem}.png"), cv2.IMREAD_GRAYSCALE)
        r, c = divmod(n, grid)
        y = HEADER_PX + r * (tile_px + LABEL_PX)
        x = c * tile_px
        sheet[y : y + tile_px, x : x + tile_px] = _tile(img, mask, tile_px, alpha)
        label = _fit_text(path.stem, tile_px - 4, 0.35)
        cv2.putText(sheet, label, (x + 2, y + tile_px + LABEL_PX - 5), _FONT, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    return sheet


def write_contact_sheets(
    processed_dir: str | Path,
    dataset: str,
    out_dir: str | Path,
    *,
    splits: tuple[str, ...] = SPLITS,
    grid: int = 4,
    tile_px: int = 192,
) -> list[Path]:
    """Write ``out_dir/<dataset>_<split>.png`` for every split in ``splits`` (an empty or
    missing split gets a sheet that says so); return the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for split in splits:
        sheet = contact_sheet(Path(processed_dir) / split, title=f"{dataset} / {split}", grid=grid, tile_px=tile_px)
        path = out_dir / f"{dataset}_{split}.png"
        if not cv2.imwrite(str(path), sheet):
            raise OSError(f"could not write {path}")
        paths.append(path)
    return paths
