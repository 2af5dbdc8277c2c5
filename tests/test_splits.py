"""Source groups, dhash near-duplicates, leakage counts and the grouped re-split."""

from __future__ import annotations

import collections
import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from promptseg.ingest.exports import read_export
from promptseg.ingest.masks import build_processed_dataset
from promptseg.ingest.splits import (
    assign_grouped,
    detail_thumbnail,
    dhash,
    hamming,
    hash_hex,
    near_duplicate_pairs,
    plan_splits,
    split_stats,
    thumbnail_correlation,
    union_groups,
)
from promptseg.ingest.synthetic import write_synthetic_export

from fixtures_exports import coco_ann, coco_image, rf_name, write_coco_split

SIDE = 64


def wall(seed: int, side: int = SIDE) -> np.ndarray:
    """A textured BGR 'photo': smooth blotches at a few scales plus grain, mid-grey, no clipping."""
    rng = np.random.default_rng(seed)
    img = np.full((side, side), 120.0, np.float32)
    for cells, amp in ((3, 25.0), (8, 12.0)):
        grid = rng.standard_normal((cells, cells)).astype(np.float32)
        img += amp * cv2.resize(grid, (side, side), interpolation=cv2.INTER_CUBIC)
    img += 6.0 * rng.standard_normal((side, side)).astype(np.float32)
    img = np.clip(img, 20, 220)
    return np.repeat(img[..., None], 3, axis=2).round().astype(np.uint8)


def jitter(img: np.ndarray, factor: float) -> np.ndarray:
    return np.clip(np.rint(img.astype(np.float32) * factor), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------- dhash


def test_dhash_identical_jittered_unrelated():
    a = wall(1)
    assert dhash(a) == dhash(a.copy()) and hamming(dhash(a), dhash(a)) == 0
    assert 0 <= dhash(a) < 2**64
    # gray input gives the same hash as BGR
    assert dhash(cv2.cvtColor(a, cv2.COLOR_BGR2GRAY)) == dhash(a)
    for factor in (0.8, 0.9, 1.1, 1.2):
        assert hamming(dhash(a), dhash(jitter(a, factor))) <= 3, factor
    # a JPEG round trip changes little
    ok, buf = cv2.imencode(".jpg", jitter(a, 0.85), [cv2.IMWRITE_JPEG_QUALITY, 80])
    assert hamming(dhash(a), dhash(cv2.imdecode(buf, cv2.IMREAD_COLOR))) <= 4
    unrelated = [hamming(dhash(a), dhash(wall(s))) for s in range(2, 12)]
    assert min(unrelated) >= 16 and np.mean(unrelated) > 24
    # a flip is another image for a dhash (flipped copies group by name instead)
    assert hamming(dhash(a), dhash(a[:, ::-1])) >= 16
    assert hash_hex(dhash(a)) == f"{dhash(a):016x}" and hash_hex(None) == ""


def test_dhash_bit_order_is_documented():
    # brightness rises left to right on every row: all 64 bits set
    ramp = np.tile(np.arange(90, dtype=np.uint8), (80, 1))
    assert dhash(ramp) == 2**64 - 1
    assert dhash(ramp[:, ::-1]) == 0


def test_thumbnail_confirms_only_real_copies():
    """Two different walls under the same strong lighting gradient: the 9x8 dhash cannot tell
    them apart, the high-passed thumbnail can; a jittered copy passes both."""
    ramp = np.tile(np.linspace(40, 200, SIDE, dtype=np.float32), (SIDE, 1))[..., None]
    a = np.clip(ramp + (wall(1).astype(np.float32) - 120) * 0.3, 0, 255).astype(np.uint8)
    b = np.clip(ramp + (wall(2).astype(np.float32) - 120) * 0.3, 0, 255).astype(np.uint8)
    c = jitter(a, 0.85)
    hashes = [dhash(x) for x in (a, b, c)]
    assert hamming(hashes[0], hashes[1]) <= 6
    thumbs = [detail_thumbnail(x) for x in (a, b, c)]
    assert thumbnail_correlation(thumbs[0], thumbs[2]) > 0.95
    assert thumbnail_correlation(thumbs[0], thumbs[1]) < 0.5
    assert near_duplicate_pairs(hashes, 6, thumbnails=thumbs, min_correlation=0.8) == [
        (0, 2, hamming(hashes[0], hashes[2]))
    ]
    # dhash alone pairs them all
    assert {(i, j) for i, j, _ in near_duplicate_pairs(hashes, 6)} == {(0, 1), (0, 2), (1, 2)}


def test_near_duplicate_pairs_vectorised_matches_loop():
    rng = np.random.default_rng(0)
    hashes = [int(v) for v in rng.integers(0, 2**63, 300, dtype=np.int64)]
    hashes += [h ^ (1 << 5) for h in hashes[:20]] + [None]
    expected = sorted(
        (i, j, hamming(hashes[i], hashes[j]))
        for i in range(len(hashes))
        for j in range(i + 1, len(hashes))
        if hashes[i] is not None and hashes[j] is not None and hamming(hashes[i], hashes[j]) <= 6
    )
    assert near_duplicate_pairs(hashes, 6, chunk=37) == expected
    assert len(expected) >= 20
    assert near_duplicate_pairs(hashes, -1) == []


# ---------------------------------------------------------------------- grouping


def test_union_groups_and_split_stats():
    names = ["a", "a", "b", "c", "d"]
    groups = union_groups(names, [(2, 3, 1)])  # b ~ c by hash
    assert groups == ["a", "a", "b", "b", "d"]
    splits = ["train", "val", "train", "test", "test"]
    st = split_stats(splits, names, groups, [(2, 3, 1)])
    assert list(st) == ["train", "val", "test"]
    assert st["train"] == {
        "images": 2,
        "groups": 2,
        "name_groups": 2,
        "copies": 0,
        "leak_by_name": 1,
        "leak_by_hash": 1,
        "leak_by_group": 2,
    }
    assert st["val"]["leak_by_name"] == 1 and st["val"]["leak_by_hash"] == 0
    assert st["test"] == {
        "images": 2,
        "groups": 2,
        "name_groups": 2,
        "copies": 0,
        "leak_by_name": 0,
        "leak_by_hash": 1,
        "leak_by_group": 1,
    }


def test_assign_grouped_ratios_determinism_and_no_split_groups():
    rng = np.random.default_rng(1)
    groups = [f"g{i}" for i in range(120) for _ in range(int(rng.integers(1, 6)))]
    ratios = {"train": 0.7, "val": 0.15, "test": 0.15}
    a = assign_grouped(groups, ratios, seed=42)
    assert a == assign_grouped(list(groups), ratios, seed=42)
    assert a != assign_grouped(groups, ratios, seed=43)
    where = collections.defaultdict(set)
    for g, s in zip(groups, a):
        where[g].add(s)
    assert all(len(s) == 1 for s in where.values())
    n = collections.Counter(a)
    for split, share in ratios.items():
        assert abs(n[split] / len(groups) - share) < 0.03, (split, n)
    with pytest.raises(ValueError, match="unknown splits"):
        assign_grouped(groups, {"train": 1, "valid": 1}, 0)
    with pytest.raises(ValueError, match="positive sum"):
        assign_grouped(groups, {"train": 0}, 0)


@pytest.mark.parametrize("sizes", [[1, 1, 100], [100, 1, 1], [50, 50, 50], [1, 1, 1], [5, 1, 1, 1, 30]])
def test_assign_grouped_every_split_non_empty_with_three_groups(sizes):
    groups = [f"g{i}" for i, n in enumerate(sizes) for _ in range(n)]
    for seed in range(6):
        out = assign_grouped(groups, {"train": 0.7, "val": 0.15, "test": 0.15}, seed)
        assert set(out) == {"train", "val", "test"}, (sizes, seed)


# -------------------------------------------------------------- planted exports


def _planted_export(root: Path, splits=("train", "valid", "test"), n_unrelated: int = 4) -> Path:
    """COCO export with planted leaks:

    * IMG_A: ``IMG_A_jpg.rf.<1>`` in train, its horizontally flipped copy ``IMG_A_jpg.rf.<2>``
      in valid (same name group, different dhash);
    * IMG_B in train and a brightness-jittered copy uploaded as ``OTHER_jpg.rf.<4>`` in valid
      (another name, near-duplicate by hash);
    * IMG_C twice in train (a within-split copy, no leak);
    * ``n_unrelated`` unrelated photos per split.
    """
    seed = 100
    plan: dict[str, list[tuple[str, np.ndarray]]] = {s: [] for s in splits}
    a, b, c = wall(1), wall(2), wall(3)
    plan["train"] += [
        (rf_name("IMG_A", 1), a),
        (rf_name("IMG_B", 3), b),
        (rf_name("IMG_C", 5), c),
        (rf_name("IMG_C", 6), jitter(c, 1.1)),
    ]
    if "valid" in plan:
        plan["valid"] += [
            (rf_name("IMG_A", 2), np.ascontiguousarray(a[:, ::-1])),
            (rf_name("OTHER", 4), jitter(b, 0.85)),
        ]
    for split in splits:
        for k in range(n_unrelated):
            seed += 1
            plan[split].append((rf_name(f"{split}_photo{k}", seed), wall(seed)))
    for split, items in plan.items():
        images = [coco_image(i, name, SIDE, SIDE) for i, (name, _) in enumerate(items)]
        anns = [coco_ann(i + 1, i, segmentation=[[4, 4, 30, 4, 4, 30]], bbox=(4, 4, 26, 26)) for i in range(len(items))]
        d = write_coco_split(root, split, images, anns)
        for name, img in items:  # replace the fixture's noise images with our walls
            assert cv2.imwrite(str(d / name), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return root


def _index(out: Path) -> list[dict]:
    with open(out / "index.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_as_exported_keeps_splits_and_counts_leakage_exactly(tmp_path):
    read = read_export(_planted_export(tmp_path / "exp"))
    plan = plan_splits(read.records, strategy="as_exported", workers=1)
    assert plan.written == plan.exported
    summary = build_processed_dataset(read, tmp_path / "out", plan=plan)
    st = summary["split"]["as_exported"]
    assert st["train"] == {
        "images": 8,
        "groups": 7,
        "name_groups": 7,
        "copies": 1,
        "leak_by_name": 1,
        "leak_by_hash": 1,
        "leak_by_group": 2,
    }
    assert st["val"] == {
        "images": 6,
        "groups": 6,
        "name_groups": 6,
        "copies": 0,
        "leak_by_name": 1,
        "leak_by_hash": 1,
        "leak_by_group": 2,
    }
    assert st["test"] == {
        "images": 4,
        "groups": 4,
        "name_groups": 4,
        "copies": 0,
        "leak_by_name": 0,
        "leak_by_hash": 0,
        "leak_by_group": 0,
    }
    assert summary["split"]["written"] == st
    assert summary["split"]["grouped"] == 0
    # the files stay in their own split; the per-split counts keep the export's counters
    rows = {r["stem"]: r for r in _index(tmp_path / "out")}
    assert all(r["split"] == r["exported_split"] for r in rows.values())
    assert summary["train"]["images"] == 8 and summary["train"]["images_listed"] == 8
    assert summary["export"]["val"]["images"] == 6
    # B and its renamed jittered copy share a group; A's flipped copy shares it by name only
    b, other = rows[Path(rf_name("IMG_B", 3)).stem], rows[Path(rf_name("OTHER", 4)).stem]
    assert b["group"] == other["group"] == "IMG_B" and other["source_group"] == "OTHER"
    assert hamming(int(b["dhash"], 16), int(other["dhash"], 16)) <= 6
    a1, a2 = rows[Path(rf_name("IMG_A", 1)).stem], rows[Path(rf_name("IMG_A", 2)).stem]
    assert a1["group"] == a2["group"] == "IMG_A"
    assert hamming(int(a1["dhash"], 16), int(a2["dhash"], 16)) > 6
    assert "source photo 'IMG_A' also in val" in a1["leak_as_exported"]
    assert "near-duplicate" in other["leak_as_exported"] and rf_name("IMG_B", 3) in other["leak_as_exported"]
    assert rows[Path(rf_name("IMG_C", 5)).stem]["leak_as_exported"] == ""
    json.dumps(summary)


def test_grouped_split_has_zero_leakage(tmp_path):
    read = read_export(_planted_export(tmp_path / "exp"))
    plan = plan_splits(read.records, strategy="grouped", seed=3, ratios={"train": 0.5, "val": 0.25, "test": 0.25})
    out = tmp_path / "out"
    summary = build_processed_dataset(read, out, plan=plan)
    written = summary["split"]["written"]
    assert set(written) == {"train", "val", "test"}
    for split, st in written.items():
        assert st["images"] > 0
        assert st["leak_by_name"] == st["leak_by_hash"] == st["leak_by_group"] == 0, (split, st)
    # the as-exported figures are still reported
    assert summary["split"]["as_exported"]["train"]["leak_by_group"] == 2
    # on disk: no group and no name group in two splits; index agrees with the folders
    rows = _index(out)
    for key in ("group", "source_group"):
        where = collections.defaultdict(set)
        for r in rows:
            where[r[key]].add(r["split"])
        assert all(len(s) == 1 for s in where.values()), key
    for r in rows:
        assert (out / r["split"] / "masks" / f"{r['stem']}.png").is_file()
    assert sum(summary[s]["images"] for s in ("train", "val", "test")) == len(rows) == 18
    # grouped: the export's counters live under "export", not in the written splits
    assert "images_listed" not in summary["train"] and summary["export"]["train"]["images_listed"] == 8


def test_grouped_split_is_deterministic(tmp_path):
    root = _planted_export(tmp_path / "exp")
    a = plan_splits(read_export(root).records, strategy="grouped", seed=5, workers=1)
    b = plan_splits(read_export(root).records, strategy="grouped", seed=5, workers=4)
    assert a.written == b.written and a.groups == b.groups and a.pairs == b.pairs


def test_grouped_split_creates_a_test_split(tmp_path):
    root = _planted_export(tmp_path / "exp", splits=("train", "valid"), n_unrelated=6)
    read = read_export(root)
    assert set(read.counts) == {"train", "val"}
    out = tmp_path / "out"
    summary = build_processed_dataset(read, out, plan=plan_splits(read.records, strategy="grouped"))
    assert summary["test"]["images"] > 0 and any((out / "test" / "images").iterdir())
    assert set(summary["split"]["as_exported"]) == {"train", "val"}
    assert set(summary["split"]["written"]) == {"train", "val", "test"}
    # as_exported makes no test split
    out2 = tmp_path / "out2"
    summary2 = build_processed_dataset(read_export(root), out2)
    assert "test" not in summary2 and not (out2 / "test").exists()


def test_plan_rejects_unknown_strategy(tmp_path):
    read = read_export(_planted_export(tmp_path / "exp", splits=("train", "valid"), n_unrelated=0))
    with pytest.raises(ValueError, match="split strategy"):
        plan_splits(read.records, strategy="random")


# ------------------------------------------------------------------ synthetic


def test_synthetic_copies_are_grouped_and_true_masks_follow(tmp_path):
    """The generator's augmentation copies group by name; brightness copies that do not clip
    also match by hash; flipped ones do not. True masks follow their image to its split."""
    raw = tmp_path / "raw"
    write_synthetic_export(
        "drywall",
        raw,
        seed=4,
        image_size=96,
        counts={"train": 16, "valid": 4, "test": 0},
        negative_share=0.0,
        augment_copies_share=1.0,
    )
    read = read_export(raw)
    plan = plan_splits(read.records, strategy="grouped")
    paired = {(i, j) for i, j, _ in plan.pairs}
    by_name = collections.defaultdict(list)
    for i, n in enumerate(plan.name_groups):
        by_name[n].append(i)
    kinds = collections.Counter()
    for members in by_name.values():
        if len(members) != 2:
            continue
        i, j = members
        assert plan.groups[i] == plan.groups[j] and plan.written[i] == plan.written[j]
        a, b = (cv2.imread(str(read.records[k].image_path), cv2.IMREAD_GRAYSCALE).astype(int) for k in (i, j))
        if np.abs(a[:, ::-1] - b).mean() < np.abs(a - b).mean():
            kinds["hflip"] += 1
            assert (i, j) not in paired
        elif max((a >= 254).mean(), (b >= 254).mean()) < 0.01:
            kinds["brightness"] += 1
            assert (i, j) in paired, (plan.names[i], plan.names[j])
    assert kinds["hflip"] >= 2 and kinds["brightness"] >= 2, kinds

    out = tmp_path / "out"
    summary = build_processed_dataset(read, out, plan=plan)
    assert sum(summary["true_masks"].values()) == len(read.records)
    for r in _index(out):
        truth = out / r["split"] / "true_masks" / f"{r['stem']}.png"
        assert truth.is_file()
        rf_split = "valid" if r["exported_split"] == "val" else r["exported_split"]
        source = raw / "true_masks" / rf_split / f"{r['stem']}.png"
        np.testing.assert_array_equal(cv2.imread(str(truth), -1), cv2.imread(str(source), -1))
