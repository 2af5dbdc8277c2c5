"""The torch Dataset over the processed tree: image + mask + a prompt of its dataset.

Everything random (prompt choice, flip, negative prompts, data order) is a pure function of
``(seed, epoch, sample index)``, so a run resumed after an interruption sees exactly the batches an
uninterrupted run would have seen.

Every image is decoded once, when the dataset is built (:func:`promptseg.images.read_image`: a truncated
or undecodable file is refused); such an image, or one whose mask is unreadable, is skipped, counted in
``skipped`` and named on stderr, and the rest is cached.
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset, Sampler

from promptseg.cache import ByteBudgetCache
from promptseg.images import EmptySplitError, ImageReadError, explain_empty_split, read_rgb
from promptseg.modeling.preprocessing import normalize, resize_rgb


def _rng(seed: int, epoch: int, index: int, salt: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index, salt])


def crop_window(seed: int, epoch: int, index: int, height: int, width: int, size: int) -> tuple[int, int]:
    """Top-left (y, x) of a ``size`` x ``size`` crop inside an (height, width) image, uniform over the valid
    positions, a pure function of ``(seed, epoch, index)``. The image must be at least ``size`` on both sides."""
    if height < size or width < size:
        raise ValueError(f"a {size} px crop does not fit in a {height}x{width} image")
    rng = _rng(seed, epoch, index, 2_000)
    return int(rng.integers(height - size + 1)), int(rng.integers(width - size + 1))


def upscale_to_fit(rgb: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Image and mask scaled up together (PIL bilinear) so their shorter side is ``size``, if it is shorter."""
    height, width = rgb.shape[:2]
    if min(height, width) >= size:
        return rgb, mask
    scale = size / min(height, width)
    new = (max(size, round(width * scale)), max(size, round(height * scale)))  # PIL: (width, height)
    return (
        np.asarray(Image.fromarray(rgb).resize(new, Image.BILINEAR)),
        np.asarray(Image.fromarray(mask).resize(new, Image.BILINEAR)),
    )


def jitter_colors(rgb: np.ndarray, brightness: float, contrast: float, saturation: float) -> np.ndarray:
    """(H, W, 3) uint8 RGB with its brightness, contrast and saturation scaled by these factors (1.0: unchanged),
    in that order, as torchvision's ``adjust_*`` define them: brightness scales every value; contrast blends
    with the mean gray level (ITU-R 601-2 luma); saturation blends with the pixel's own gray. Rounded, clipped."""
    luma = np.float32([0.299, 0.587, 0.114])
    x = np.clip(np.asarray(rgb, dtype=np.float32) * np.float32(brightness), 0, 255)
    mean_gray = np.float32((x @ luma).mean())
    x = np.clip((x - mean_gray) * np.float32(contrast) + mean_gray, 0, 255)
    gray = (x @ luma)[..., None]
    x = (x - gray) * np.float32(saturation) + gray
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


class PromptedSegmentation(Dataset):
    """One dataset split: each item is (pixel_values, target, prompt, dataset name).

    - prompt: drawn from ``prompts`` by ``(seed, epoch, index)``; with probability
      ``negative_prompt_prob`` a negative prompt and an all-zero target: one of ``unrelated_prompts``
      (prompts naming neither dataset) with probability ``unrelated_share``, else one of
      ``negative_prompts`` (the other dataset's prompts). Two pools, so that adding unrelated prompts
      does not dilute the other dataset's negatives.
    - target: the {0,255} mask resized bilinearly to ``image_size`` and scaled to [0, 1] (soft edges).
    - ``hflip_prob``: horizontal flip of image and mask together.
    - ``rot90_prob``: a rotation of image and mask together by 90, 180 or 270 degrees (drawn by
      ``(seed, epoch, index)`` from its own stream, so 0.0 leaves every other draw as it was). With the
      flip it covers all eight symmetries of the square: cracks and joints run any way in a photo.
    - ``color_jitter`` (strength ``s``): the photo's brightness, contrast and saturation each scaled by a
      factor drawn uniformly from ``[1 - s, 1 + s]`` (:func:`jitter_colors`; the mask is untouched), drawn by
      ``(seed, epoch, index)`` from its own stream, so 0.0 leaves every other draw as it was. Real photos
      vary in light and white balance more than a few hundred of them show.
    Every image and mask is decoded once, resized and cached when the dataset is built; a pair that cannot
    be used is skipped, listed in ``skipped`` and named on stderr.
    - ``crop_size``, ``crop_share`` (``train.rungs.<v>.crop``): with probability ``crop_share`` (drawn by
      ``(seed, epoch, index)``) the sample is a ``crop_size`` px square cut from the photo at its OWN
      resolution (:func:`crop_window`; a photo smaller than that is first scaled up to fit), image and mask
      cut identically, then resized to ``image_size`` (no-op when equal); otherwise the whole photo resized.
      Thin cracks keep their width in pixels in a crop; the whole view keeps the photo's context.
    - ``repeats``: each photo appears this many times per epoch (item ``i`` is photo ``i % photos``), each copy
      with its own prompt, flip, rotation, jitter and crop (every draw keyed by the item's index): a small dataset
      trained jointly with a larger one (the real sample: 174 drywall photos beside 562 crack photos) gets more
      updates per epoch. 1 leaves every item as it was.
    Resized images and masks are cached in memory after the first read; photos decoded at their own size
    (for crops) are cached up to ``native_cache_bytes`` (least recently used dropped). Neither cache changes
    a sample (tested).
    """

    def __init__(
        self,
        pairs,
        dataset: str,
        prompts,
        *,
        image_size: int,
        mean,
        std,
        seed: int = 42,
        hflip_prob: float = 0.0,
        rot90_prob: float = 0.0,
        color_jitter: float = 0.0,
        negative_prompts=(),
        negative_prompt_prob: float = 0.0,
        unrelated_prompts=(),
        unrelated_share: float = 0.5,
        per_image: bool = False,
        crop_size: int = 0,
        crop_share: float = 0.0,
        native_cache_bytes: int = 1 << 30,
        repeats: int = 1,
    ):
        if not pairs:
            folder = getattr(pairs, "folder", None)
            raise EmptySplitError(
                explain_empty_split(folder, dataset)
                if folder is not None
                else f"no images for dataset {dataset!r}: run `dvc repro masks` first."
            )
        if not prompts:
            raise ValueError(f"dataset {dataset!r} has no prompts in params.yaml (data.{dataset}.prompts).")
        self.pairs, self.dataset, self.prompts = list(pairs), dataset, list(prompts)
        self.image_size, self.mean, self.std, self.seed = image_size, mean, std, seed
        self.hflip_prob, self.rot90_prob = hflip_prob, rot90_prob
        if not 0.0 <= color_jitter < 1.0:
            raise ValueError(f"color_jitter must be in [0, 1), got {color_jitter}")
        self.color_jitter = float(color_jitter)
        self.negative_prompts, self.negative_prompt_prob = list(negative_prompts), negative_prompt_prob
        self.unrelated_prompts, self.unrelated_share = list(unrelated_prompts), unrelated_share
        self.per_image = per_image
        self.epoch = 0
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if crop_share and crop_size < 1:
            raise ValueError(f"crop share {crop_share} needs a crop size of at least 1 px, got {crop_size}")
        self.crop_size, self.crop_share = int(crop_size), float(crop_share)
        if int(repeats) < 1:
            raise ValueError(f"dataset {dataset!r}: repeats must be at least 1, got {repeats}")
        self.repeats = int(repeats)
        self._native = ByteBudgetCache(native_cache_bytes)
        self.skipped: list[tuple[Path, str, str]] = []  # (image, kind, message) of each image left out
        self._decode_all()

    def _decode_all(self) -> None:
        """Decode every pair once (into the cache); skip, count and name the ones that cannot be used."""
        kept, cache = [], {}
        for image_path, mask_path in self.pairs:
            try:
                item = self._read_pair(image_path, mask_path)
            except ImageReadError as exc:
                self.skipped.append((Path(image_path), exc.kind, str(exc)))
                continue
            except ValueError as exc:
                self.skipped.append((Path(image_path), "unreadable_mask", str(exc)))
                continue
            cache[len(kept)] = item
            kept.append((image_path, mask_path))
        if self.skipped:
            kinds = collections.Counter(kind for _, kind, _ in self.skipped)
            for _, _, message in self.skipped:
                print(f"[data] {self.dataset}: skipped {message}", file=sys.stderr)
            print(
                f"[data] {self.dataset}: {len(self.skipped)} of {len(self.pairs)} images skipped ("
                + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
                + ")",
                file=sys.stderr,
            )
            if not kept:
                raise ValueError(
                    f"no usable images for dataset {self.dataset!r}: all {len(self.pairs)} were skipped "
                    f"(first: {self.skipped[0][2]}); rerun `dvc repro masks@{self.dataset}`."
                )
        self.pairs, self._cache = kept, cache

    def _read_pair(self, image_path, mask_path) -> tuple[np.ndarray, np.ndarray]:
        rgb = resize_rgb(read_rgb(image_path), self.image_size)
        mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise ValueError(f"{mask_path}: mask missing or unreadable; rerun `dvc repro masks`.")
        mask = np.asarray(Image.fromarray(mask).resize((self.image_size,) * 2, Image.BILINEAR))
        return rgb, mask

    def __len__(self) -> int:
        return len(self.pairs) * self.repeats

    def photo(self, index: int) -> int:
        """The photo (index into ``pairs``) item ``index`` shows."""
        return index % len(self.pairs)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def load_resized(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if index not in self._cache:
            self._cache[index] = self._read_pair(*self.pairs[index])
        return self._cache[index]

    def load_native(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(RGB, mask) at the photo's own size, scaled up only where it is smaller than ``crop_size``."""

        def read():
            image_path, mask_path = self.pairs[index]
            rgb = read_rgb(image_path)
            mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
            if mask is None:
                raise ValueError(f"{mask_path}: mask missing or unreadable; rerun `dvc repro masks`.")
            if mask.shape != rgb.shape[:2]:
                mask = np.asarray(Image.fromarray(mask).resize(rgb.shape[1::-1], Image.BILINEAR))
            return upscale_to_fit(rgb, mask, self.crop_size)

        return self._native.get(index, read)

    def uses_crop(self, index: int) -> bool:
        """Whether this item is a native-resolution crop in the current epoch."""
        return bool(self.crop_share) and _rng(self.seed, self.epoch, index, 3_000).random() < self.crop_share

    def load_crop(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(RGB, mask) of this epoch's crop of item ``index``, resized to ``image_size``."""
        rgb, mask = self.load_native(self.photo(index))
        y, x = crop_window(self.seed, self.epoch, index, rgb.shape[0], rgb.shape[1], self.crop_size)
        rgb, mask = (
            rgb[y : y + self.crop_size, x : x + self.crop_size],
            mask[y : y + self.crop_size, x : x + self.crop_size],
        )
        if self.crop_size != self.image_size:
            rgb = resize_rgb(np.ascontiguousarray(rgb), self.image_size)
            mask = np.asarray(
                Image.fromarray(np.ascontiguousarray(mask)).resize((self.image_size,) * 2, Image.BILINEAR)
            )
        return rgb, mask

    def sample_prompt(self, index: int) -> tuple[str, bool]:
        """(prompt, is_negative) for this item in the current epoch."""
        rng = _rng(self.seed, self.epoch, index, sum(self.dataset.encode()))
        has_negatives = bool(self.negative_prompts or self.unrelated_prompts)
        negative = has_negatives and rng.random() < self.negative_prompt_prob
        pool = self.prompts
        if negative:
            pool = self.negative_prompts or self.unrelated_prompts
            if self.negative_prompts and self.unrelated_prompts and rng.random() < self.unrelated_share:
                pool = self.unrelated_prompts
        return pool[int(rng.integers(len(pool)))], negative

    def __getitem__(self, index: int):
        rgb, mask = self.load_crop(index) if self.uses_crop(index) else self.load_resized(self.photo(index))
        prompt, negative = self.sample_prompt(index)
        flip_rng = _rng(self.seed, self.epoch, index, 1_000)
        if self.hflip_prob and flip_rng.random() < self.hflip_prob:
            rgb, mask = rgb[:, ::-1], mask[:, ::-1]
        if self.rot90_prob:
            rot_rng = _rng(self.seed, self.epoch, index, 2_000)
            if rot_rng.random() < self.rot90_prob:
                turns = int(rot_rng.integers(1, 4))
                rgb, mask = np.rot90(rgb, turns, axes=(0, 1)), np.rot90(mask, turns, axes=(0, 1))
        if self.color_jitter:
            factors = _rng(self.seed, self.epoch, index, 4_000).uniform(1 - self.color_jitter, 1 + self.color_jitter, 3)
            rgb = jitter_colors(rgb, *factors)
        pixel_values = normalize(np.ascontiguousarray(rgb), self.mean, self.std, self.per_image)
        target = (
            torch.zeros(mask.shape, dtype=torch.float32)
            if negative
            else torch.from_numpy(np.array(mask, dtype=np.float32)).div_(255.0)
        )
        return pixel_values, target, prompt, self.dataset


class JointSegmentation(ConcatDataset):
    """Both datasets concatenated; ``set_epoch`` reaches every part."""

    def set_epoch(self, epoch: int) -> None:
        for part in self.datasets:
            part.set_epoch(epoch)


class EpochShuffleSampler(Sampler[int]):
    """A permutation of ``range(n)`` seeded by ``(seed, epoch)``: reproducible across resumes."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter(np.random.default_rng([self.seed, self.epoch]).permutation(self.n).tolist())

    def __len__(self) -> int:
        return self.n


def collate(batch):
    pixel_values = torch.stack([b[0] for b in batch])
    targets = torch.stack([b[1] for b in batch])
    return pixel_values, targets, [b[2] for b in batch], [b[3] for b in batch]
