"""Read an image file, fully decoded and checked: the one place every image enters through.

``cv2.imread`` of a truncated JPEG returns a picture whose missing rows are grey (libjpeg only prints
"Premature end of JPEG file" on stderr), and a truncated PNG or BMP may decode partly. So the file's
bytes are read once, checked for completeness, then decoded from memory (``cv2.imdecode``: the same
pixels as ``cv2.imread``, EXIF orientation included):

* an empty file, or bytes no decoder accepts: :class:`ImageReadError` with kind ``corrupt_image``;
* a JPEG with no end-of-image marker (``FF D9``) after its first start-of-scan, a PNG that does not
  end with its ``IEND`` chunk, or another format that PIL cannot load in full
  (``ImageFile.LOAD_TRUNCATED_IMAGES`` is left at its default, False): kind ``truncated_image``.

Then the pixels are decoded in full, strictly, with EXIF orientation applied here and only here:

* the header is read first (PIL, no pixels decoded): the displayed size and the EXIF orientation;
  with ``max_pixels`` (``data.max_image_pixels``), a larger image is kind ``image_too_large``
  before any pixel is decoded (:func:`image_size` gives the same size without decoding);
* a JPEG is decoded by ``cv2.imdecode`` with libjpeg's warnings captured: "Corrupt JPEG data: ..." or
  "Premature end of JPEG file" (damaged scan data that libjpeg papers over with grey or garbled rows)
  make it kind ``corrupt_image``. libjpeg prints its warnings on file descriptor 2, so the decode runs
  with that descriptor redirected under a lock; anything else written there meanwhile is passed on;
* the EXIF orientation (1-8) is applied to the decoded pixels (``cv2.IMREAD_IGNORE_ORIENTATION`` keeps
  OpenCV from applying it a second time, and from applying it for some formats and not others): every
  consumer (masks, YOLO box scaling, split hashing, training, predict, the app, the pyfunc model) sees
  the photo as displayed.

Callers (the masks stage, the split hashing, the training reader, ``promptseg predict``) skip the
image, count ``error.kind`` and name ``error.path``.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

# The file suffixes every reader treats as photos (exports, processed splits, QA, predict, the app).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

CORRUPT, TRUNCATED, TOO_LARGE = "corrupt_image", "truncated_image", "image_too_large"
#: ``promptseg predict``'s default cap (pixels), the default of params.yaml's ``data.max_image_pixels``.
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000
_LIBJPEG_CORRUPT = ("Corrupt JPEG data", "Premature end of JPEG file", "Inconsistent progression sequence")
_STDERR_LOCK = threading.Lock()
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


def _header(data: bytes | Path, path: Path, max_pixels: int | None) -> tuple[int, int, int]:
    """(width, height, EXIF orientation 1-8) from the header: the size as DISPLAYED (orientations 5-8 swap
    the stored width and height); no pixel is decoded. ImageReadError if unreadable or over ``max_pixels``."""

    Image.MAX_IMAGE_PIXELS = None  # PIL's own bomb check is replaced by max_pixels, checked below from the header
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:  # reads what it needs
            (w, h), fmt = im.size, im.format
            exif = im.getexif() if fmt != "PNG" or "exif" in im.info else {}
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad headers
        raise ImageReadError(
            path, CORRUPT, f"cannot be decoded as an image (corrupt or not an image; {type(exc).__name__}: {exc})"
        ) from None
    orientation = exif.get(0x0112, 1) if isinstance(exif.get(0x0112, 1), int) else 1
    orientation = orientation if 1 <= orientation <= 8 else 1
    if orientation >= 5:
        w, h = h, w
    if max_pixels is not None and w * h > max_pixels:
        raise ImageReadError(
            path,
            TOO_LARGE,
            f"{w}x{h} pixels ({w * h:,}) is more than the cap of {max_pixels:,} (data.max_image_pixels; predict "
            "--max-image-pixels); it is not decoded: scale the photo down, or raise the cap if memory allows",
        )
    return w, h, orientation


def image_size(path: str | Path, max_pixels: int | None = None) -> tuple[int, int]:
    """(width, height) of the image at ``path`` as displayed (EXIF orientation applied), from its header:
    the frame :func:`read_image` returns. :class:`ImageReadError` as :func:`read_image` for the header."""
    path = Path(path)
    try:
        empty = path.stat().st_size == 0
    except OSError as exc:
        raise ImageReadError(path, CORRUPT, f"cannot be read ({exc.strerror or exc})") from None
    if empty:
        raise ImageReadError(path, CORRUPT, "the file is empty (0 bytes)")
    w, h, _ = _header(path, path, max_pixels)  # PIL reads the header and EXIF only (WebP keeps EXIF at the end)
    return w, h


def _orient(image: np.ndarray, orientation: int) -> np.ndarray:
    """The stored pixels turned as EXIF ``orientation`` says (PIL's ``ImageOps.exif_transpose``)."""
    turned = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: np.swapaxes(a, 0, 1),
        6: lambda a: np.swapaxes(a, 0, 1)[:, ::-1],
        7: lambda a: np.swapaxes(a, 0, 1)[::-1, ::-1],
        8: lambda a: np.swapaxes(a, 0, 1)[::-1],
    }
    return np.ascontiguousarray(turned[orientation](image)) if orientation in turned else image


def _decode_capturing_stderr(buf: np.ndarray, flags: int) -> tuple[np.ndarray | None, str]:
    """``cv2.imdecode`` with file descriptor 2 redirected to a temporary file: (image, what libjpeg printed).
    Lines that are not libjpeg's corruption warnings are written back to stderr."""
    with _STDERR_LOCK, tempfile.TemporaryFile() as tmp:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):  # no usable stderr: decode without listening
            return cv2.imdecode(buf, flags), ""
        try:
            os.dup2(tmp.fileno(), 2)
            image = cv2.imdecode(buf, flags)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        text = tmp.read().decode("utf-8", "replace")
    others = [line for line in text.splitlines() if not line.startswith(_LIBJPEG_CORRUPT)]
    if others:
        print("\n".join(others), file=sys.stderr)
    return image, text


def read_image(path: str | Path, flags: int = cv2.IMREAD_COLOR, max_pixels: int | None = None) -> np.ndarray:
    """The image at ``path`` as displayed, decoded with ``cv2.imdecode(..., flags)`` (BGR for ``IMREAD_COLOR``)
    after :func:`check_image_bytes` and the header (:func:`image_size`'s frame); :class:`ImageReadError`
    naming the file if it is missing, empty, truncated, larger than ``max_pixels``, undecodable, or a JPEG
    that libjpeg decodes only with "Corrupt JPEG data" warnings."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageReadError(path, CORRUPT, f"cannot be read ({exc.strerror or exc})") from None
    return decode_image_bytes(data, path, flags, max_pixels)


def decode_image_bytes(data: bytes, name, flags: int = cv2.IMREAD_COLOR, max_pixels: int | None = None) -> np.ndarray:
    """:func:`read_image` on an encoded file's bytes (an upload, a pyfunc request); ``name`` names it in errors."""
    path = Path(str(name))
    if not data:
        raise ImageReadError(path, CORRUPT, "the file is empty (0 bytes)")
    try:
        _, _, orientation = _header(data, path, max_pixels)  # the size first: nothing larger than the cap is decoded
    except ImageReadError as exc:
        problem = check_image_bytes(data) if exc.kind == CORRUPT else None
        raise (exc if problem is None else ImageReadError(path, *problem)) from None
    problem = check_image_bytes(data)
    if problem is not None:
        raise ImageReadError(path, *problem)
    buf, flags = np.frombuffer(data, dtype=np.uint8), flags | cv2.IMREAD_IGNORE_ORIENTATION
    try:
        if data[:2] == b"\xff\xd8":
            image, printed = _decode_capturing_stderr(buf, flags)
        else:
            image, printed = cv2.imdecode(buf, flags), ""
    except cv2.error as exc:
        image, why = None, f" ({str(exc).strip().splitlines()[-1][:120]})"
    else:
        why = ""
    if image is None or image.size == 0:
        raise ImageReadError(path, CORRUPT, f"cannot be decoded as an image (corrupt or not an image){why}")
    damage = [line.strip() for line in printed.splitlines() if line.startswith(_LIBJPEG_CORRUPT)]
    if damage:
        raise ImageReadError(
            path, CORRUPT, f"the JPEG data is damaged inside (libjpeg: {damage[0][:120]}): rows would decode garbled"
        )
    return _orient(image, orientation)


__all__ = [
    "CORRUPT",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "TOO_LARGE",
    "TRUNCATED",
    "ImageReadError",
    "check_image_bytes",
    "decode_image_bytes",
    "image_size",
    "overlay_image",
    "read_image",
]


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
def read_rgb(path: str | Path, max_pixels: int | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB as displayed (EXIF orientation applied), or :class:`promptseg.images.ImageReadError`
    (a ValueError; ``kind`` ``corrupt_image``, ``truncated_image`` or, over ``max_pixels``, ``image_too_large``)
    naming the file: missing, empty, truncated, damaged inside, too large or undecodable."""
    try:
        image = read_image(path, cv2.IMREAD_COLOR, max_pixels)
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


class EmptySplitError(ValueError):
    """A split the training needs has no images (:func:`explain_empty_split` says why and the fix); the train
    stage prints it as one message."""


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
