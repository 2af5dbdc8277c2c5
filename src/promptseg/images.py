"""Read an image file, fully decoded and checked: the one place every image enters through.

``cv2.imread`` of a truncated JPEG returns a picture whose missing rows are grey (libjpeg only prints
"Premature end of JPEG file" on stderr), and a truncated PNG or BMP may decode partly. So the file's
bytes are read once, checked for completeness, then decoded from memory (``cv2.imdecode``: the same
pixels as ``cv2.imread``, EXIF orientation included):

* an empty file, or bytes no decoder accepts: :class:`ImageReadError` with kind ``corrupt_image``;
* a JPEG with no end-of-image marker (``FF D9``) after its first start-of-scan, a PNG that does not
  end with its ``IEND`` chunk, or another format that PIL cannot load in full
  (``ImageFile.LOAD_TRUNCATED_IMAGES`` is left at its default, False): kind ``truncated_image``.

Callers (the masks stage, the split hashing, the training reader, ``promptseg predict``) skip the
image, count ``error.kind`` and name ``error.path``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

# The file suffixes every reader treats as photos (exports, processed splits, QA, predict, the app).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

CORRUPT, TRUNCATED = "corrupt_image", "truncated_image"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"


class ImageReadError(ValueError):
    """An image file that cannot be used; ``kind`` is ``corrupt_image`` or ``truncated_image``."""

    def __init__(self, path, kind: str, reason: str):
        self.path, self.kind, self.reason = Path(path), kind, reason
        super().__init__(f"{path}: {reason}")


def _jpeg_scan_start(data: bytes) -> int | None:
    """Offset just after the first start-of-scan (SOS) header of a JPEG, or None if the headers end first."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if length < 2:
            return None
        if marker == 0xDA:
            end = pos + 2 + length
            return end if end <= len(data) else None
        pos += 2 + length
    return None


def check_image_bytes(data: bytes) -> tuple[str, str] | None:
    """``(kind, reason)`` if ``data`` is not a complete image file, else None (see the module docstring).
    For JPEG and PNG this reads markers only; other formats are loaded once with PIL."""
    if not data:
        return CORRUPT, "the file is empty (0 bytes)"
    if data[:2] == b"\xff\xd8":
        start = _jpeg_scan_start(data)
        if start is None:
            return TRUNCATED, f"JPEG headers end before the image data ({len(data)} bytes): the file is truncated"
        # Inside the entropy-coded data a 0xFF byte is always followed by 0x00 or a restart marker,
        # so FF D9 after the first scan header is the end-of-image marker.
        if data.find(b"\xff\xd9", start) < 0:
            return (
                TRUNCATED,
                f"JPEG data ends without its end-of-image marker ({len(data)} bytes): the file is truncated",
            )
        return None
    if data[:8] == _PNG_SIGNATURE:
        end = data.rfind(_PNG_IEND)
        if end < 0:
            return TRUNCATED, f"PNG data ends without its IEND chunk ({len(data)} bytes): the file is truncated"
        return None

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad data
        kind = TRUNCATED if "truncated" in str(exc).lower() else CORRUPT
        return kind, f"cannot be decoded ({type(exc).__name__}: {str(exc)[:120]})"
    return None


def read_image(path: str | Path, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    """The image at ``path`` decoded with ``cv2.imdecode(..., flags)`` (BGR for ``IMREAD_COLOR``) after
    :func:`check_image_bytes`; :class:`ImageReadError` naming the file if it is missing, empty,
    truncated or undecodable."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageReadError(path, CORRUPT, f"cannot be read ({exc.strerror or exc})") from None
    problem = check_image_bytes(data)
    if problem is not None:
        raise ImageReadError(path, *problem)
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    except cv2.error as exc:
        image, why = None, f" ({str(exc).strip().splitlines()[-1][:120]})"
    else:
        why = ""
    if image is None or image.size == 0:
        raise ImageReadError(path, CORRUPT, f"cannot be decoded as an image (corrupt or not an image){why}")
    return image


__all__ = ["CORRUPT", "TRUNCATED", "ImageReadError", "check_image_bytes", "overlay_image", "read_image"]


OVERLAY_COLOR_RGB = (255, 0, 0)
OVERLAY_ALPHA = 0.5


def overlay_image(
    rgb: np.ndarray, mask: np.ndarray, *, color=OVERLAY_COLOR_RGB, alpha: float = OVERLAY_ALPHA
) -> np.ndarray:
    """(H, W, 3) uint8 RGB with the mask's pixels blended towards ``color`` with ``alpha``."""
    out = rgb.astype(np.float32)
    lit = mask > 0
    out[lit] = (1.0 - alpha) * out[lit] + alpha * np.asarray(color, dtype=np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- photos as RGB, processed splits
def read_rgb(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB, or :class:`promptseg.images.ImageReadError` (a ValueError; ``kind``
    ``corrupt_image`` or ``truncated_image``) naming the file: missing, empty, truncated or undecodable."""
    try:
        image = read_image(path, cv2.IMREAD_COLOR)
    except ImageReadError as exc:
        raise ImageReadError(exc.path, exc.kind, f"{exc.reason}; re-export or remove it") from None
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class SplitPairs(list):
    """The (image, mask) pairs of one split, remembering the ``folder`` they were listed from (so that an
    empty split can be explained: :func:`explain_empty_split`)."""

    def __init__(self, pairs, folder: Path):
        super().__init__(pairs)
        self.folder = Path(folder)


def list_split(processed_root: Path, dataset: str, split: str) -> list[tuple[Path, Path]]:
    """(image, mask) pairs of one split of the processed tree, sorted by stem (a :class:`SplitPairs`)."""
    folder = Path(processed_root) / dataset / split
    images = sorted(p for p in (folder / "images").glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    return SplitPairs([(p, folder / "masks" / f"{p.stem}.png") for p in images], folder)


def explain_empty_split(folder: Path, dataset: str) -> str:
    """Why ``<processed>/<dataset>/<split>`` has no images, and the fix."""
    folder = Path(folder)
    root, split = folder.parent, folder.name
    if not (root / "index.csv").is_file():
        return f"no images for dataset {dataset!r}: {root} has not been written; run `dvc repro masks@{dataset}` first."
    present = sorted(p.name for p in root.iterdir() if (p / "images").is_dir() and any((p / "images").iterdir()))
    return (
        f"no images for dataset {dataset!r} in {folder}: the masks stage ran, but the processed dataset has no "
        f"{split} split (it has: {', '.join(present) or 'none'}). With data.{dataset}.split: as_exported the "
        f"splits are the export's own, and this export has no {split} split: set data.{dataset}.split: grouped "
        f"in params.yaml to re-split it (ratios in masks.grouped_split), or export a {split} split from Roboflow."
    )


@dataclass
class SplitData:
    stems: list[str]
    images: list[np.ndarray]  # RGB uint8, own size
    truths: list[np.ndarray]  # bool, own size: the rendered labels (filled boxes for box-labelled data)
    true_masks: list[np.ndarray] | None = None  # bool: the TRUE object pixels where the export has them (synthetic)


def load_split(processed_root: Path, dataset: str, split: str) -> SplitData:
    """Images and label masks of a processed split, plus ``true_masks/<stem>.png`` when every image has one
    (the synthetic export's tape bands: used by evaluation only, never by training)."""
    pairs = list_split(processed_root, dataset, split)
    images, truths = [], []
    for image_path, mask_path in pairs:
        images.append(read_rgb(image_path))
        truths.append(cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE) > 0)
    true_paths = [
        Path(processed_root) / dataset / split / "true_masks" / f"{mask_path.stem}.png" for _, mask_path in pairs
    ]
    true_masks = None
    if pairs and all(path.exists() for path in true_paths):
        true_masks = [cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) > 0 for path in true_paths]
    return SplitData([p.stem for p, _ in pairs], images, truths, true_masks)
