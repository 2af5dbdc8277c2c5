"""Bad input and faults: nothing slips through, nothing is lost, no traceback reaches the user.

One test per fault (truncated and empty images at every entry point, labels that all fail validation,
unlisted images, a COCO file without annotations, the problems table, corrupt weights, a corrupt zip, an
empty export, an export without a train split, an unwritable --out, an interrupted masks stage), then a
corruption fuzz test over small synthetic exports: 200 seeded corruptions, parsed and rendered in-process,
a few through the real stage script.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from promptseg.images import (
    CORRUPT,
    IMAGE_SUFFIXES,
    TRUNCATED,
    ImageReadError,
    check_image_bytes,
    read_image,
)
from promptseg.ingest.exports import (
    IMAGE_SKIP_KINDS,
    PROBLEM_COLUMNS,
    ExportError,
    read_export,
)
from promptseg.ingest.masks import build_processed_dataset, write_processed_dataset
from promptseg.ingest.splits import image_signature, plan_splits

from conftest import predict_argv
from fixtures_exports import (
    coco_ann,
    coco_image,
    write_coco_split,
    write_image,
    write_yolo_export,
)

REPO = Path(__file__).resolve().parents[1]
TRI = [[2, 2, 20, 2, 2, 20]]  # a valid polygon inside a 32x24 image


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def rows_of(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def stage_env() -> dict:
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
        OMP_NUM_THREADS="1",
    )
    return env


def run_masks_stage(project: Path, dataset: str) -> subprocess.CompletedProcess:
    """``python stages/masks.py <dataset>`` in ``project`` (params.yaml copied from the repository)."""
    if not (project / "params.yaml").exists():
        shutil.copy(REPO / "params.yaml", project / "params.yaml")
    return subprocess.run(
        [sys.executable, str(REPO / "stages" / "masks.py"), dataset],
        check=False,
        cwd=project,
        env=stage_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


# ------------------------------------------------------------------------------------ images


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".bmp"])
def test_truncated_images_are_refused_whole_ones_decode_like_imread(tmp_path, suffix):
    whole = write_image(tmp_path / f"whole{suffix}", 40, 30, seed=1)
    np.testing.assert_array_equal(read_image(whole), cv2.imread(str(whole), cv2.IMREAD_COLOR))
    np.testing.assert_array_equal(read_image(whole, cv2.IMREAD_GRAYSCALE), cv2.imread(str(whole), cv2.IMREAD_GRAYSCALE))
    cut = truncate(Path(shutil.copy(whole, tmp_path / f"cut{suffix}")), 0.6)
    with pytest.raises(ImageReadError) as info:
        read_image(cut)
    assert info.value.kind == TRUNCATED and info.value.path == cut
    assert str(info.value).startswith(f"{cut}: ") and "truncated" in str(info.value)
    # losing only the last 2 bytes (the JPEG EOI marker, the end of PNG's IEND chunk) is caught too
    assert check_image_bytes(whole.read_bytes()[:-2])[0] == TRUNCATED


def test_empty_and_garbage_files_are_corrupt(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not an image at all" * 5)
    for path, words in (
        (empty, "empty (0 bytes)"),
        (garbage, "cannot be decoded"),
        (tmp_path / "gone.jpg", "cannot be read"),
    ):
        with pytest.raises(ImageReadError) as info:
            read_image(path)
        assert info.value.kind == CORRUPT and words in str(info.value) and str(path) in str(info.value)


def _coco_three(root: Path, split: str = "train") -> Path:
    """<split>: a.jpg, b.jpg (a triangle each), c.png (no annotation)."""
    images = [coco_image(0, "a.jpg"), coco_image(1, "b.jpg"), coco_image(2, "c.png")]
    anns = [coco_ann(1, 0, segmentation=TRI), coco_ann(2, 1, segmentation=TRI)]
    return write_coco_split(root, split, images, anns)


def test_truncated_and_empty_images_are_skipped_counted_and_named_by_the_masks_stage(tmp_path):
    d = _coco_three(tmp_path / "exp")
    truncate(d / "a.jpg")
    (d / "c.png").write_bytes(b"")
    read = read_export(tmp_path / "exp")
    summary = build_processed_dataset(read, tmp_path / "out", workers=1)
    t = summary["train"]
    assert (t["images_listed"], t["images"], t["truncated_image"], t["corrupt_image"]) == (3, 1, 1, 1)
    assert sorted(p.name for p in (tmp_path / "out" / "train" / "images").iterdir()) == ["b.jpg"]
    by_kind = {p.kind: p for p in read.problems}
    assert set(by_kind) == {"truncated_image", "corrupt_image"}
    assert by_kind["truncated_image"].file == str(d / "a.jpg") and "the file is truncated" in by_kind["truncated_image"]
    assert by_kind["corrupt_image"].file == str(d / "c.png") and "empty (0 bytes)" in by_kind["corrupt_image"]
    assert image_signature(d / "a.jpg") == (None, None)  # the split hashing refuses it too


def test_training_reader_skips_and_names_a_truncated_image(processed_root, tmp_path, capsys):
    from promptseg.images import list_split
    from promptseg.train.data import PromptedSegmentation

    root = tmp_path / "processed"
    shutil.copytree(processed_root / "cracks", root / "cracks")
    pairs = list_split(root, "cracks", "train")
    victim = truncate(pairs[1][0])
    dataset = PromptedSegmentation(pairs, "cracks", ["segment crack"], image_size=32, mean=[0.5] * 3, std=[0.5] * 3)
    assert len(dataset) == len(pairs) - 1 == 7
    assert [(p, k) for p, k, _ in dataset.skipped] == [(victim, "truncated_image")]
    err = capsys.readouterr().err
    assert f"skipped {victim}: JPEG data ends without its end-of-image marker" in err
    assert "1 of 8 images skipped (truncated_image 1)" in err
    assert victim not in [p for p, _ in dataset.pairs] and dataset[6][0].shape == (3, 32, 32)


def test_a_split_the_export_lacks_is_explained_honestly(processed_root, tmp_path):
    from promptseg.images import list_split
    from promptseg.train.data import PromptedSegmentation

    root = tmp_path / "processed"
    shutil.copytree(processed_root / "cracks", root / "cracks")
    shutil.rmtree(root / "cracks" / "train")  # as_exported on an export with valid/test only
    with pytest.raises(ValueError) as info:
        PromptedSegmentation(
            list_split(root, "cracks", "train"), "cracks", ["x"], image_size=32, mean=[0.5] * 3, std=[0.5] * 3
        )
    message = str(info.value)
    assert "the masks stage ran" in message and "has no train split (it has: test, val)" in message
    assert "data.cracks.split: grouped" in message and "run `dvc repro masks" not in message
    with pytest.raises(ValueError, match=r"has not been written; run `dvc repro masks@cracks` first"):
        PromptedSegmentation(
            list_split(tmp_path / "nothing", "cracks", "train"),
            "cracks",
            ["x"],
            image_size=32,
            mean=[0.5] * 3,
            std=[0.5] * 3,
        )


# ------------------------------------------------------------------------------- annotations


def test_coco_image_losing_all_annotations_is_skipped_not_a_negative(tmp_path):
    images = [coco_image(i, f"{n}.jpg") for i, n in enumerate(["nan", "two", "mixed", "neg", "cat", "ok"])]
    anns = [
        coco_ann(10, 0, segmentation=[[1, 1, float("nan"), 5, 9, 9]]),
        coco_ann(11, 1, segmentation=[[1, 1, 9, 9]]),
        coco_ann(12, 2, segmentation=[[1, 1, 9, 9]]),
        coco_ann(13, 2, segmentation=TRI),
        coco_ann(14, 4, segmentation=TRI, category_id=7),
        coco_ann(15, 5, segmentation=TRI),
    ]
    write_coco_split(tmp_path / "exp", "train", images, anns)
    read = read_export(tmp_path / "exp")
    c = read.counts["train"]
    assert (c["images_listed"], c["images"], c["all_labels_invalid"], c["images_without_labels"]) == (6, 3, 3, 1)
    assert sorted(r.image_path.name for r in read.records) == ["mixed.jpg", "neg.jpg", "ok.jpg"]
    rows = [(p.kind, Path(p.file).name, p.annotation) for p in read.problems]
    assert rows == [
        ("degenerate_polygons", "nan.jpg", "10"),
        ("degenerate_polygons", "two.jpg", "11"),
        ("degenerate_polygons", "mixed.jpg", "12"),
        ("unknown_category", "cat.jpg", "14"),
        ("all_labels_invalid", "nan.jpg", ""),
        ("all_labels_invalid", "two.jpg", ""),
        ("all_labels_invalid", "cat.jpg", ""),
    ]
    assert "non-finite or non-numeric coordinate (nan)" in read.problems[0]
    assert "has 2 points (fewer than 3)" in read.problems[1]
    assert "not kept as a negative" in read.problems[4]
    summary = build_processed_dataset(read, tmp_path / "out", workers=1)
    assert summary["train"]["images"] == 3 and summary["train"]["without_foreground"] == 1  # only neg.jpg


def test_yolo_image_losing_all_lines_is_skipped_and_lines_are_named(tmp_path):
    export = write_yolo_export(
        tmp_path / "exp",
        {
            "train": {
                "bad": (20, 10, ["0 0.5 0.5", "0 0.5 0.5 0.2 nan"]),
                "cls": (20, 10, ["3 0.5 0.5 0.2 0.2"]),
                "half": (20, 10, ["0 0.5 0.5 0.4 0.4", "x y z"]),
                "neg": (20, 10, []),
                "none": (20, 10, None),
            }
        },
    )
    read = read_export(export)
    c = read.counts["train"]
    assert (c["images_listed"], c["images"], c["all_labels_invalid"], c["images_without_labels"]) == (5, 3, 2, 2)
    assert c["malformed_label_lines"] == 3 and c["unknown_category"] == 1
    assert sorted(r.image_path.stem for r in read.records) == ["half", "neg", "none"]
    named = [(p.kind, Path(p.file).name, p.annotation) for p in read.problems]
    assert named == [
        ("malformed_label_lines", "bad.txt", "line 1"),
        ("malformed_label_lines", "bad.txt", "line 2"),
        ("malformed_label_lines", "half.txt", "line 2"),
        ("all_labels_invalid", "bad.jpg", ""),
        ("unknown_category", "cls.txt", "line 1"),
        ("all_labels_invalid", "cls.jpg", ""),
    ]
    assert f"{export / 'train' / 'labels' / 'cls.txt'}:1: class id 3" in read.problems[4]


def test_shapes_dropped_while_rendering_are_named_and_an_image_left_with_none_is_skipped(tmp_path):
    images = [coco_image(0, "thin.jpg"), coco_image(1, "rle.jpg"), coco_image(2, "ok.jpg")]
    anns = [
        coco_ann(1, 0, segmentation=[], bbox=(3, 3, 0.4, 5)),
        coco_ann(2, 1, segmentation={"size": [24, 32], "counts": [5, 5]}),  # counts do not sum to 24*32
        coco_ann(3, 2, segmentation=[], bbox=(1, 1, 4, 4)),
        coco_ann(4, 2, segmentation=[], bbox=(40, 40, 3, 3)),
    ]
    write_coco_split(tmp_path / "exp", "train", images, anns)
    read = read_export(tmp_path / "exp")
    summary = build_processed_dataset(read, tmp_path / "out", workers=1)
    t = summary["train"]
    assert (t["images"], t["all_labels_invalid"], t["degenerate_boxes"], t["malformed_rle"]) == (1, 2, 2, 1)
    named = [(p.kind, Path(p.file).name, p.annotation) for p in read.problems]
    assert named == [
        ("degenerate_boxes", "thin.jpg", "1"),
        ("all_labels_invalid", "thin.jpg", ""),
        ("malformed_rle", "rle.jpg", "2"),
        ("all_labels_invalid", "rle.jpg", ""),
        ("degenerate_boxes", "ok.jpg", "4"),
    ]
    assert "covers 0.40 x 5.00 px" in read.problems[0]


def test_unlisted_image_files_are_counted_and_named(tmp_path):
    d = _coco_three(tmp_path / "exp")
    write_image(d / "stray.jpg")
    (d / "notes.txt").write_text("not an image")
    read = read_export(tmp_path / "exp")
    assert read.counts["train"]["unlisted_image"] == 1 and read.counts["train"]["images"] == 3
    [p] = read.problems
    assert (p.kind, p.file) == ("unlisted_image", str(d / "stray.jpg")) and "does not list" in p


@pytest.mark.parametrize("key", ["annotations", "images"])
def test_coco_file_without_annotations_is_an_error_naming_it(tmp_path, key):
    d = _coco_three(tmp_path / "project" / "data" / "raw" / "cracks")
    data = json.loads((d / "_annotations.coco.json").read_text())
    del data[key]
    (d / "_annotations.coco.json").write_text(json.dumps(data))
    with pytest.raises(ExportError, match=rf"_annotations.coco.json: has no '{key}' list"):
        read_export(d.parent)
    result = run_masks_stage(tmp_path / "project", "cracks")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        f"masks@cracks: {Path('data/raw/cracks/train/_annotations.coco.json')}: has no "
        f"'{key}' list, so its images cannot be matched to their labels; re-download the "
        "export (or re-export it from Roboflow in COCO format)"
    )


# --------------------------------------------------------------------- problems table, stage


def test_masks_stage_writes_the_problems_table_and_prints_render_problems(tmp_path):
    project = tmp_path / "project"
    raw = project / "data" / "raw" / "cracks"
    images = [coco_image(i, f"{n}.jpg") for i, n in enumerate(["a", "b", "c", "d", "empty", "e", "f"])]
    anns = [coco_ann(i + 1, i, segmentation=TRI) for i in range(6)] + [coco_ann(9, 6, segmentation=[[1, 1, 2, 2]])]
    write_coco_split(raw, "train", images, anns, sizes={"b.jpg": (40, 30)})
    (raw / "train" / "empty.jpg").write_bytes(b"")
    # stale output of an earlier run, and a .partial left by an interrupted one: both replaced
    (project / "data" / "processed" / "cracks" / "old").mkdir(parents=True)
    (project / "data" / "processed" / "cracks.partial").mkdir(parents=True)
    result = run_masks_stage(project, "cracks")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert (
        "[masks] cracks: 4 problems (all_labels_invalid 1, corrupt_image 1, degenerate_polygons 1, size_mismatch 1) "
        "in metrics/data/problems/cracks.csv" in out
    )
    # printed AFTER rendering: the render-time problems (the empty file, the size mismatch) are shown, with the file
    assert f"{Path('data/raw/cracks/train/empty.jpg')}: the file is empty (0 bytes)" in out
    assert "b.jpg: the annotation says 32x24 but the file is 40x30" in out
    rows = rows_of(project / "metrics" / "data" / "problems" / "cracks.csv")
    assert tuple(rows[0]) == PROBLEM_COLUMNS
    assert sorted((r["kind"], Path(r["file"]).name, r["annotation"]) for r in rows) == [
        ("all_labels_invalid", "f.jpg", ""),
        ("corrupt_image", "empty.jpg", ""),
        ("degenerate_polygons", "f.jpg", "9"),
        ("size_mismatch", "b.jpg", ""),
    ]
    processed = project / "data" / "processed"
    assert sorted(p.name for p in processed.iterdir()) == ["cracks"]  # no .partial left, old tree replaced
    assert not (processed / "cracks" / "old").exists() and (processed / "cracks" / "index.csv").is_file()
    assert json.loads((project / "metrics" / "data" / "cracks.json").read_text())["problems"] == 4


def test_report_table_1_links_the_problems_table():
    from promptseg.score.report import _data_section

    text = "\n".join(
        _data_section({"cracks": {"problems": 4, "train": {"images": 3}}, "drywall": {}}, ["cracks", "drywall"])
    )
    assert "Every problem met, with its file: [`cracks`](data/problems/cracks.csv) (4).\n" in text


def test_interrupted_masks_write_keeps_the_previous_tree(tmp_path, monkeypatch):
    from promptseg.ingest import masks

    _coco_three(tmp_path / "exp")
    out = tmp_path / "processed" / "cracks"
    write_processed_dataset(read_export(tmp_path / "exp"), out, workers=1)
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    index = (out / "index.csv").read_text()
    calls = []
    real = masks._process_one

    def dies_on_the_second_image(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(masks, "_process_one", dies_on_the_second_image)
    with pytest.raises(KeyboardInterrupt):
        write_processed_dataset(read_export(tmp_path / "exp"), out, workers=1)
    assert (
        sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before and (out / "index.csv").read_text() == index
    )
    assert sorted(p.name for p in out.parent.iterdir()) == ["cracks"]


# ------------------------------------------------------------------------- download sources


def test_corrupt_zip_and_empty_folder_fail_at_download_naming_them(tmp_path):
    from promptseg.ingest.sources import SourceError, land_export
    from promptseg.settings import LocalSettings, RoboflowSettings, SourceSettings

    def local(path):  # data.cracks's source keys, as the download stage builds them (promptseg.settings)
        return SourceSettings(source="local", roboflow=RoboflowSettings("w", "p", 1, "coco"), local=LocalSettings(path))

    export = _coco_three(tmp_path / "exp").parent
    archive = Path(shutil.make_archive(str(tmp_path / "export"), "zip", export))
    data = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as z:
        info = z.getinfo("train/a.jpg")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    for i in range(start + 10, start + 40):
        data[i] ^= 0x5A
    archive.write_bytes(bytes(data))
    out = tmp_path / "raw" / "cracks"
    with pytest.raises(SourceError) as failed:
        land_export("cracks", local(str(archive)), None, out)
    assert str(failed.value).startswith(f"{archive} cannot be unzipped (") and "corrupt or truncated" in str(
        failed.value
    )
    empty = tmp_path / "empty-export"
    empty.mkdir()
    with pytest.raises(SourceError) as failed:
        land_export("cracks", local(str(empty)), None, out)
    assert str(failed.value).startswith(
        f"data.cracks.local.path {str(empty)!r} is not a Roboflow export: it holds nothing"
    )
    assert not out.exists() and not (tmp_path / "raw" / "cracks.partial").exists()
    (empty / "train").mkdir()
    (empty / "train" / "_annotations.coco.json").write_text('{"images": [], "annotations": []}')
    with pytest.raises(SourceError, match="holds no image files"):
        land_export("cracks", local(str(empty)), None, out)


def test_symlink_loops_and_a_path_holding_the_repository_are_one_message_at_download(tmp_path, monkeypatch):
    from promptseg.ingest.sources import SourceError, land_export
    from promptseg.settings import LocalSettings, RoboflowSettings, SourceSettings

    def local(path):
        return SourceSettings(source="local", roboflow=RoboflowSettings("w", "p", 1, "coco"), local=LocalSettings(path))

    repo = tmp_path / "repo"
    out = repo / "data" / "raw" / "cracks"
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(SourceError, match=r"is a symbolic link that loops back on itself"):
        land_export("cracks", local(str(tmp_path / "a")), None, out)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(SourceError, match=r"is a symbolic link to .*nowhere', which does not exist"):
        land_export("cracks", local(str(tmp_path / "dangling")), None, out)
    export = _coco_three(tmp_path / "exp").parent
    (export / "train" / "loop").symlink_to(export / "train" / "loop")
    with pytest.raises(SourceError) as failed:
        land_export("cracks", local(str(export)), None, out)
    assert f"data.cracks.local.path {str(export)!r}: 1 file(s) cannot be copied, e.g. {export / 'train' / 'loop'}" in (
        str(failed.value)
    )
    monkeypatch.chdir(repo)  # the repository; local.path: .. holds it
    with pytest.raises(SourceError, match=r"contains the folder the export is copied into"):
        land_export("cracks", local(".."), None, Path("data") / "raw" / "cracks")
    assert not out.exists() and not list((repo / "data" / "raw").glob("*"))


def test_as_exported_without_a_train_split_is_one_message_from_the_train_stage(processed_root, tmp_path):
    project = tmp_path / "project"
    for dataset in ("cracks", "drywall"):
        shutil.copytree(processed_root / dataset, project / "data" / "processed" / dataset)
    shutil.rmtree(project / "data" / "processed" / "cracks" / "train")
    shutil.copy(REPO / "params.yaml", project / "params.yaml")
    shutil.copytree(REPO / "vendor", project / "vendor")
    done = subprocess.run(
        [sys.executable, str(REPO / "stages" / "train.py"), "unet"],
        cwd=project,
        env=stage_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("train@unet: no images for dataset 'cracks' in ")
    assert "has no train split (it has: test, val)" in done.stderr and "data.cracks.split: grouped" in done.stderr


# ------------------------------------------------------------------------------------ predict


def test_predict_skips_truncated_images_with_the_reason(tiny_model_dir, tmp_path, capsys):
    from promptseg.serve.cli import main

    folder = tmp_path / "in"
    write_image(folder / "good.jpg", 40, 30)
    truncate(Path(shutil.copy(folder / "good.jpg", folder / "cut.jpg")))
    rc = main(
        predict_argv(
            str(tiny_model_dir), str(folder), out=str(tmp_path / "out"), extra=["--threshold", "0.5", "--quiet"]
        )
    )
    captured = capsys.readouterr()
    assert rc == 0 and sorted(p.name for p in (tmp_path / "out").glob("[!.]*")) == ["good__segment-crack.png"]
    assert (
        f"skipped {folder / 'cut.jpg'}: not a readable image (JPEG data ends without its end-of-image marker"
        in captured.err
    )
    assert "1 masks written, 1 skipped" in captured.out


def test_predict_with_corrupt_weights_is_rc2_with_a_message(tiny_model_dir, tmp_path, capsys):
    from promptseg.serve.cli import main

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    truncate(broken / "model.safetensors")
    write_image(tmp_path / "a.jpg")
    rc = main(
        predict_argv(str(broken), str(tmp_path / "a.jpg"), out=str(tmp_path / "out"), extra=["--threshold", "0.5"])
    )
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith(
        f"promptseg: cannot load the model from {broken}: {broken / 'model.safetensors'} is corrupt "
        "or truncated (SafetensorError: "
    )
    assert "Copy the model folder again, or retrain it" in err


def test_predict_refuses_an_unwritable_out_before_loading_the_model(tmp_path, monkeypatch, capsys):
    from promptseg.serve import cli

    monkeypatch.setattr(
        cli, "load_segmenter", lambda *a, **k: pytest.fail("the model was loaded before --out was checked")
    )
    write_image(tmp_path / "a.jpg")
    model = tmp_path / "model"
    model.mkdir()
    # /proc/self refuses new files even to root; a read-only folder refuses them to other users
    targets = [(Path("/proc/self"), "No such file or directory")]
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        targets.append((ro, "Permission denied"))
    for out, reason in targets:
        rc = cli.main(predict_argv(str(model), str(tmp_path / "a.jpg"), out=str(out)))
        err = capsys.readouterr().err
        assert rc == 2 and err == (
            f"promptseg: cannot write to the output folder {out}: {reason}; pass --out with a folder you can write to\n"
        )


def test_a_polygon_wholly_outside_is_invalid_and_its_image_skipped_when_nothing_remains(tmp_path):
    images = [coco_image(0, "out.jpg"), coco_image(1, "half.jpg")]
    outside = [[40, 30, 60, 30, 40, 50]]  # a 32x24 image: every vertex beyond x 32, y 24
    anns = [
        coco_ann(1, 0, segmentation=outside),
        coco_ann(2, 1, segmentation=outside),
        coco_ann(3, 1, segmentation=TRI),
    ]
    write_coco_split(tmp_path / "exp", "train", images, anns)
    read = read_export(tmp_path / "exp")
    t = build_processed_dataset(read, tmp_path / "out", workers=1)["train"]
    assert (t["images_listed"], t["images"], t["polygons_outside_image"], t["all_labels_invalid"]) == (2, 1, 2, 1)
    named = [p for p in read.problems if p.kind == "polygons_outside_image"]
    assert sorted(p.annotation for p in named) == ["1", "2"] and "wholly outside the 32x24 image" in named[0]
    assert [p.file for p in read.problems if p.kind == "all_labels_invalid"] == [
        str(tmp_path / "exp" / "train" / "out.jpg")
    ]


def test_yolo_values_outside_unit_are_named_and_an_unreadable_split_json_loses_counted_images(tmp_path):
    root = write_yolo_export(tmp_path / "yolo", {"train": {"a": (32, 24, ["0 0.5 0.5 1.4 0.2", "0 0.5 0.5 0.2 0.2"])}})
    read = read_export(root)
    assert read.counts["train"]["label_values_outside_unit"] == 1
    (named,) = [p for p in read.problems if p.kind == "label_values_outside_unit"]
    assert named.annotation == "line 1" and "1 value(s) outside [0, 1] (e.g. 1.4)" in named
    coco = _coco_three(tmp_path / "coco")
    valid = write_coco_split(tmp_path / "coco", "valid", [coco_image(0, "v.jpg")], [coco_ann(1, 0, segmentation=TRI)])
    (valid / "_annotations.coco.json").write_text("{not json")
    read = read_export(tmp_path / "coco")
    v = read.counts["val"]
    assert (v["unreadable_annotation_file"], v["images_listed"], v["lost_with_annotation_file"]) == (1, 1, 1)
    assert [p.file for p in read.problems if p.kind == "lost_with_annotation_file"] == [str(valid / "v.jpg")]
    assert read.counts["train"]["images"] == 3 and coco.name == "train"


# ------------------------------------------------------------------------- inside the file: damage, EXIF, size


def damage_jpeg(path: Path, nbytes: int = 4096, seed: int = 0) -> Path:
    """``nbytes`` of the JPEG's scan data overwritten in the middle: the file stays complete (its EOI is there)."""
    data = bytearray(path.read_bytes())
    start = len(data) // 2 - nbytes // 2
    data[start : start + nbytes] = np.random.default_rng(seed).integers(0, 256, nbytes, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def set_orientation(path: Path, orientation: int) -> Path:
    """The file's pixels as stored, re-saved with EXIF orientation ``orientation`` (a phone's portrait photo: 6)."""
    from PIL import Image

    with Image.open(path) as im:
        exif = im.getexif()
        exif[0x0112] = orientation
        im.load()
        im.save(path, exif=exif.tobytes(), **({"quality": 95} if im.format == "JPEG" else {}))
    return path


def huge_header_jpeg(path: Path, width: int, height: int) -> Path:
    """A small real JPEG whose frame header (SOF0) claims ``width`` x ``height``: nothing decodes it cheaply."""
    write_image(path, 16, 16)
    data = bytearray(path.read_bytes())
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    path.write_bytes(bytes(data))
    return path


def test_a_jpeg_damaged_inside_is_corrupt_although_complete(tmp_path):
    path = damage_jpeg(write_image(tmp_path / "d.jpg", 640, 400, seed=3))
    assert check_image_bytes(path.read_bytes()) is None  # complete: the end-of-image marker is there
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert info.value.kind == CORRUPT and "the JPEG data is damaged inside (libjpeg: Corrupt JPEG data" in str(
        info.value
    )
    d = _coco_three(tmp_path / "exp")
    damage_jpeg(shutil.copy(path, d / "a.jpg"))
    read = read_export(tmp_path / "exp")
    t = build_processed_dataset(read, tmp_path / "out", workers=1)["train"]
    assert (t["images_listed"], t["images"], t["corrupt_image"]) == (3, 2, 1)
    assert [p.file for p in read.problems if p.kind == CORRUPT] == [str(d / "a.jpg")]


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp"])
def test_exif_orientation_is_applied_once_for_every_format(tmp_path, suffix):
    from PIL import Image, ImageOps

    from promptseg.images import image_size

    for orientation in range(1, 9):
        path = set_orientation(write_image(tmp_path / f"o{orientation}{suffix}", 50, 30, seed=orientation), orientation)
        ours = read_image(path)[:, :, ::-1]
        with Image.open(path) as im:
            shown = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
        assert ours.shape == shown.shape == ((50, 30, 3) if orientation >= 5 else (30, 50, 3))
        assert image_size(path) == (ours.shape[1], ours.shape[0])
        if suffix == ".png":  # lossless: exactly PIL's exif_transpose
            np.testing.assert_array_equal(ours, shown)
        gray = read_image(path, cv2.IMREAD_GRAYSCALE)
        assert gray.shape == ours.shape[:2]


def _lit_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(mask)
    return int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max())


def test_rotated_photos_get_their_labels_in_the_displayed_frame_coco_and_yolo(tmp_path):
    """Stored 640x400 with EXIF orientation 6: shown (and labelled) 400 wide, 640 tall. The box
    x 100..300, y 128..192 of the shown photo renders there in both formats, at the shown size."""
    from promptseg.images import read_rgb

    yolo = write_yolo_export(
        tmp_path / "yolo", {"train": {"box": (640, 400, ["0 0.5 0.25 0.5 0.1"]), "poly": (640, 400, None)}}
    )
    poly = "0 0.25 0.2 0.75 0.2 0.75 0.3 0.25 0.3"  # x 100..300, y 128..192 of 400x640
    (yolo / "train" / "labels" / "poly.txt").write_text(poly + "\n")
    coco = write_coco_split(
        tmp_path / "coco",
        "train",
        [coco_image(0, "rot.jpg", 400, 640)],
        [coco_ann(1, 0, segmentation=[[100, 128, 300, 128, 300, 192, 100, 192]], bbox=(100, 128, 200, 64))],
        sizes={"rot.jpg": (640, 400)},
    )
    stored = [yolo / "train" / "images" / "box.jpg", yolo / "train" / "images" / "poly.jpg", coco / "rot.jpg"]
    for path in stored:
        set_orientation(path, 6)
    for root in (yolo, tmp_path / "coco"):
        read = read_export(root)
        out = tmp_path / f"out_{root.name}"
        t = build_processed_dataset(read, out, workers=1)["train"]
        assert t["size_mismatch"] == 0 and t["images"] == len(read.records)
        for mask_path in sorted((out / "train" / "masks").iterdir()):
            mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
            image = read_rgb(next((out / "train" / "images").glob(f"{mask_path.stem}.*")))
            assert mask.shape == image.shape[:2] == (640, 400)
            assert _lit_box(mask) in ((100, 128, 299, 191), (100, 128, 300, 192))  # box half-open, polygon inclusive
    as_stored = cv2.imread(str(stored[0]), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    np.testing.assert_array_equal(read_image(stored[0]), np.rot90(as_stored, k=-1))  # turned clockwise, once


@pytest.mark.parametrize("side", [30000, 60000])
def test_a_huge_header_is_image_too_large_before_decoding_in_coco_and_yolo(tmp_path, side):
    from promptseg.images import TOO_LARGE

    d = _coco_three(tmp_path / "coco")
    huge_header_jpeg(d / "a.jpg", side, side)
    yolo = write_yolo_export(tmp_path / "yolo", {"train": {"big": (32, 24, ["0 0.5 0.5 0.2 0.2"]), "ok": (32, 24, [])}})
    huge_header_jpeg(yolo / "train" / "images" / "big.jpg", side, side)
    for root, victim in ((tmp_path / "coco", d / "a.jpg"), (yolo, yolo / "train" / "images" / "big.jpg")):
        started = time.perf_counter()
        read = read_export(root, max_image_pixels=100_000_000)
        assert time.perf_counter() - started < 5  # read from the header, nothing decoded
        c = read.counts["train"]
        assert (c["images_listed"], c[TOO_LARGE]) == (len(read.records) + 1, 1)
        problem = next(p for p in read.problems if p.kind == TOO_LARGE)
        assert problem.file == str(victim) and f"{side}x{side} pixels" in str(problem)
        assert "is more than the cap of 100,000,000 (data.max_image_pixels" in str(problem)
        assert victim not in [r.image_path for r in read.records]


def test_predict_refuses_damaged_and_huge_images_and_writes_rotated_ones_as_shown(tiny_model_dir, tmp_path, capsys):
    from promptseg.serve.cli import main

    folder = tmp_path / "in"
    damage_jpeg(write_image(folder / "damaged.jpg", 640, 400))
    huge_header_jpeg(folder / "huge.jpg", 30000, 30000)
    set_orientation(write_image(folder / "rotated.jpg", 64, 40), 6)
    rc = main(
        predict_argv(str(tiny_model_dir), str(folder), out=str(tmp_path / "out")) + ["--threshold", "0.5", "--quiet"]
    )
    captured = capsys.readouterr()
    assert rc == 0 and "1 masks written, 2 skipped" in captured.out
    assert cv2.imread(str(tmp_path / "out" / "rotated__segment-crack.png"), cv2.IMREAD_GRAYSCALE).shape == (64, 40)
    assert f"skipped {folder / 'damaged.jpg'}: not a readable image (the JPEG data is damaged inside" in captured.err
    assert (
        f"skipped {folder / 'huge.jpg'}: 30000x30000 pixels (900,000,000) is more than the cap of 100,000,000"
        in captured.err
    )


def test_predict_never_mixes_runs_in_one_out_folder(tiny_model_dir, tmp_path, capsys):
    from promptseg.serve.cli import PREDICT_LOCK, main

    write_image(tmp_path / "in" / "a.jpg", 40, 30, seed=1)
    write_image(tmp_path / "in" / "b.jpg", 40, 30, seed=2)
    out = tmp_path / "out"

    def predict(image: str, prompt: str = "segment crack", model: Path = tiny_model_dir, *flags: str) -> int:
        argv = predict_argv(str(model), str(tmp_path / "in" / image), out=str(out), prompt=prompt)
        return main([*argv, "--threshold", "0.5", "--quiet", "--measure", *flags])

    assert predict("a.jpg") == 0 and predict("b.jpg") == 0  # the same model and prompt: one run's folder
    measured = json.loads((out / "measurements.json").read_text())
    assert sorted(measured) == ["a__segment-crack.png", "b__segment-crack.png"]  # merged, not the last run's alone
    capsys.readouterr()
    other = Path(shutil.copytree(tiny_model_dir, tmp_path / "other"))
    for (prompt, model), said in (
        (("segment wall crack", tiny_model_dir), f"with prompt 'segment crack'; writing those of {tiny_model_dir}"),
        (("segment crack", other), f"of model {tiny_model_dir.resolve()} with prompt 'segment crack'"),
    ):
        rc, err = predict("a.jpg", prompt, model), capsys.readouterr().err
        assert rc == 2 and f"{out} already holds 2 masks " in err and said in err and "--overwrite" in err
    assert sorted(p.name for p in out.glob("*__*[!d].png")) == ["a__segment-crack.png", "b__segment-crack.png"]
    assert predict("a.jpg", "segment wall crack", tiny_model_dir, "--overwrite") == 0
    (out / PREDICT_LOCK).write_text(f"{os.getpid()}\n")  # a predict that is running
    assert predict("b.jpg", "segment wall crack") == 2
    assert f"another promptseg predict (pid {os.getpid()}) is writing into {out}" in capsys.readouterr().err
    dead = subprocess.Popen(["true"])
    dead.wait()
    (out / PREDICT_LOCK).write_text(f"{dead.pid}\n")  # a predict killed while writing
    assert predict("b.jpg", "segment wall crack") == 0 and not (out / PREDICT_LOCK).exists()


def test_dvclive_overlays_of_the_epochs_before_a_kill_survive_dvc_deleting_the_outputs(tmp_path, monkeypatch):
    from promptseg.train.live import OVERLAY_NAME, EpochLogger

    monkeypatch.chdir(tmp_path)
    live_dir, store = tmp_path / "metrics" / "train" / "unet", tmp_path / "checkpoints" / "unet" / OVERLAY_NAME
    first = EpochLogger("unet", live_dir, params={"epochs": 3}, overlay_store=store)
    rows = []
    for epoch in (1, 2):
        image = np.zeros((6, 8, 3), np.uint8)
        image[:, :epoch] = (255, 0, 0)
        first.log_epoch(epoch, 0.5, 0.5, 0.5, 1e-3, image)
        rows.append({"epoch": epoch, "train_loss": 0.5, "val_loss": 0.5, "val_dice": 0.5, "lr": 1e-3})
    first.close("KILLED")
    images = live_dir / "plots" / "images" / OVERLAY_NAME
    before = {p.name: p.read_bytes() for p in images.iterdir()}
    shutil.rmtree(live_dir)  # `dvc repro` removes the stage's outputs; the checkpoint folder stays
    resumed = EpochLogger("unet", live_dir, params={"epochs": 3}, resume_epoch=2, history=rows, overlay_store=store)
    resumed.log_epoch(3, 0.4, 0.4, 0.6, 1e-3, np.zeros((6, 8, 3), np.uint8))
    resumed.close()
    assert sorted(before) == ["0.png", "1.png"]
    assert {p.name: p.read_bytes() for p in images.iterdir() if p.name != "2.png"} == before
    assert (images / "2.png").is_file()


def test_the_smaller_faults_are_one_message_each(tmp_path, capsys, monkeypatch):
    """A masks run interrupted just after its rename leaves no stale metrics; --mm-per-px inf is refused; a bad
    unet_config.json is named; an input that is a symlink loop says so."""
    from promptseg.ingest import masks
    from promptseg.modeling.unet import build_unet_model
    from promptseg.serve.cli import main

    from conftest import TINY_MODEL, TINY_UNET

    _coco_three(tmp_path / "exp")
    out, metrics = tmp_path / "processed" / "cracks", tmp_path / "metrics" / "cracks.json"
    metrics.parent.mkdir()
    metrics.write_text('{"old": 1}')
    real_rename = Path.rename

    def killed_after_the_rename(self, target):
        real_rename(self, target)
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "rename", killed_after_the_rename)
    with pytest.raises(KeyboardInterrupt):
        masks.write_processed_dataset(read_export(tmp_path / "exp"), out, workers=1, describes=(metrics,))
    monkeypatch.undo()
    assert (out / "index.csv").is_file() and not metrics.exists()  # the new tree, no metrics of the old one

    write_image(tmp_path / "m.png", 16, 16)
    assert main(["measure", str(tmp_path / "m.png"), "--mm-per-px", "inf"]) == 2
    assert "inf must be a positive finite number" in capsys.readouterr().err

    model, processor = build_unet_model({**TINY_MODEL, "unet": TINY_UNET}, 64, 0)
    unet = tmp_path / "unet"
    model.save_pretrained(unet)
    processor.save_pretrained(unet)
    (unet / "unet_config.json").write_text('{"architecture": "unet", "widths": [8]')  # cut short
    (tmp_path / "loop.jpg").symlink_to(tmp_path / "loop.jpg")
    argv = predict_argv(str(unet), out=str(tmp_path / "o"))
    assert main([*argv, str(tmp_path / "loop.jpg")]) == 2
    assert (
        capsys.readouterr().err == f"promptseg: {tmp_path / 'loop.jpg'} is a symbolic link that loops back on itself\n"
    )
    assert main([*argv, str(tmp_path / "m.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{unet / 'unet_config.json'} cannot be read as the U-Net's config" in err


# ------------------------------------------------------------------------------- values out of range


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("train.common.lr", -0.001, "train.common.lr: -0.001 is out of range; allowed: > 0"),
        ("train.common.epochs", 0, "train.common.epochs: 0 is out of range; allowed: >= 1"),
        ("infer.threshold_grid", [0.5, 1.5, -0.2], "infer.threshold_grid[1]: 1.5 is out of range; allowed: in (0, 1)"),
        ("infer.threshold_grid", [], "infer.threshold_grid: is an empty list; give at least one value"),
        ("train.rungs.unet.lr", 0, "train.rungs.unet.lr: 0.0 is out of range; allowed: > 0"),
        (
            "train.common.negative_prompt_prob",
            1.5,
            "train.common.negative_prompt_prob: 1.5 is out of range; allowed: in [0, 1]",
        ),
        ("eval.empty_score", float("nan"), "eval.empty_score: nan is not a finite number; give a number"),
        ("model.unet.widths", [32, 0], "model.unet.widths[1]: 0 is out of range; allowed: >= 1"),
    ],
)
def test_a_value_out_of_range_is_exit_2_naming_the_key_and_the_range(tmp_path, key, value, message):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    node = params
    for part in key.split(".")[:-1]:
        node = node[part]
    node[key.rsplit(".", 1)[-1]] = value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    run = subprocess.run(
        [sys.executable, "-m", "promptseg.settings", "params.yaml"],
        cwd=tmp_path,
        env=stage_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 2 and run.stderr == f"promptseg.settings: params.yaml: {message}\n"


def _recipe_file(path: Path, **recipe) -> Path:
    from promptseg.infer.recipe import Recipe

    entry = {"threshold": 0.5, "recipe": {**Recipe().to_dict(), **recipe}}
    path.write_text(json.dumps({"cracks": entry, "drywall": {"threshold": 0.5}}))
    return path


@pytest.mark.parametrize(
    "field,value,allowed",
    [("threshold", -0.2, "in (0, 1)"), ("kernel", 0, ">= 1"), ("tile_overlap", 1.0, "in [0, 1)")],
)
def test_a_recipe_out_of_range_is_refused_by_predict_the_app_and_the_pyfunc_model(
    tiny_model_dir, tmp_path, capsys, field, value, allowed
):
    from promptseg.infer.recipe import RecipeError, check_recipes
    from promptseg.serve.cli import main

    recipe = _recipe_file(tmp_path / "eval.json", **{field: value})
    write_image(tmp_path / "a.jpg")
    argv = ["predict", "--model", str(tiny_model_dir), "--prompt", "segment crack", str(tmp_path / "a.jpg")]
    rc = main([*argv, "--out", str(tmp_path / "out"), "--eval-metrics", str(recipe)])
    err = capsys.readouterr().err
    said = f"{recipe}: cracks.recipe.{field}: {value!r} is out of range; allowed: {allowed}"
    assert rc == 2 and err.count("\n") == 1 and said in err and not list((tmp_path / "out").glob("*.png"))
    card = json.loads((tiny_model_dir / "promptseg.json").read_text())
    with pytest.raises(RecipeError, match=re.escape(said)):  # what the app and the pyfunc model call on load
        check_recipes(card, "tiny", recipe)
    check_recipes(card, "tiny", _recipe_file(tmp_path / "good.json"))


def test_a_recipe_scored_on_other_weights_or_another_rung_is_refused_or_with_the_flag_warned(
    tiny_model_dir, tmp_path, capsys
):
    import hashlib

    from promptseg.infer.recipe import SCORED_MODEL_KEY, RecipeError, check_recipes, scored_model
    from promptseg.serve.cli import main

    weights = tiny_model_dir / "model.safetensors"
    expected = hashlib.sha256(b"model.safetensors\0" + weights.read_bytes()).hexdigest()
    assert scored_model(tiny_model_dir, "tiny") == {"rung": "tiny", "weights_sha256": expected}
    write_image(tmp_path / "a.jpg")
    card = json.loads((tiny_model_dir / "promptseg.json").read_text())

    def recipe_for(record: dict) -> Path:
        path = _recipe_file(tmp_path / f"eval{len(list(tmp_path.glob('eval*')))}.json")
        path.write_text(json.dumps({**json.loads(path.read_text()), SCORED_MODEL_KEY: record}))
        return path

    def predict(recipe: Path, *flags: str) -> tuple[int, str]:
        argv = ["predict", "--model", str(tiny_model_dir), "--prompt", "segment crack", str(tmp_path / "a.jpg")]
        rc = main([*argv, "--out", str(tmp_path / f"out{next(outs)}"), "--eval-metrics", str(recipe), *flags])
        captured = capsys.readouterr()
        return rc, captured.out + captured.err

    outs = iter(range(10))
    assert predict(recipe_for({"rung": "tiny", "weights_sha256": expected}))[0] == 0
    retrained = recipe_for({"rung": "tiny", "weights_sha256": "0" * 64})
    rc, said = predict(retrained)
    assert (
        rc == 2
        and f"{retrained} was scored on weights with sha256 000000000000..., and {tiny_model_dir} holds " in said
    )
    assert "its threshold and recipe were chosen for another model" in said and "--warn-recipe-mismatch" in said
    rc, said = predict(retrained, "--warn-recipe-mismatch")
    assert rc == 0 and "warning: " in said and "used anyway (--warn-recipe-mismatch)" in said
    other_rung = recipe_for({"rung": "unet", "weights_sha256": expected})
    rc, said = predict(other_rung)
    assert rc == 2 and f"{other_rung} was scored on rung 'unet', and {tiny_model_dir} is rung 'tiny'" in said
    with pytest.raises(RecipeError, match="was scored on weights with sha256"):  # the app and the pyfunc model
        check_recipes(card, "tiny", retrained, tiny_model_dir)
    assert check_recipes(card, "tiny", _recipe_file(tmp_path / "old.json"), tiny_model_dir) == [
        f"note: {tmp_path / 'old.json'} does not record the weights it scored (evaluated before it did): not checked"
    ]


def test_metric_json_never_holds_nan_or_infinity(tmp_path):
    from promptseg.paths import write_json

    path = write_json(tmp_path / "m.json", {"dice": float("nan"), "per": [1.0, float("inf"), np.float32("nan")]})
    assert path.read_text() == '{\n  "dice": null,\n  "per": [\n    1.0,\n    null,\n    null\n  ]\n}\n'
    assert not list(tmp_path.glob(".*tmp"))  # written beside it, then renamed


# ------------------------------------------------------------------------------- validation DVC cannot skip


def _dvc(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**stage_env(), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.update(DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1", MLFLOW_DISABLE_TELEMETRY="true")
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)


def test_a_misspelt_key_fails_dvc_exp_run_and_dvc_repro_even_when_no_stage_reads_it(tmp_path):
    from conftest import copy_repository

    repo = copy_repository(tmp_path / "repo")
    commit = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm"]
    for args in (["git", "init", "-q"], ["git", "add", "-A"], [*commit, "base"]):
        assert _dvc(args, repo).returncode == 0
    first = _dvc(["dvc", "repro", "validate"], repo)
    assert first.returncode == 0 and (repo / "metrics" / "params_check.txt").is_file(), first.stderr
    again = _dvc(["dvc", "repro", "validate"], repo)
    assert "didn't change" in again.stdout + again.stderr and "Running stage" not in again.stdout
    _dvc(["git", "add", "-A"], repo)
    _dvc([*commit, "validated"], repo)
    said = "validate: params.yaml: data.cracks.sorce: unknown key; did you mean 'source'?"
    exp = _dvc(["dvc", "exp", "run", "-S", "+data.cracks.sorce=local", "validate"], repo)  # DVC's own syntax
    assert exp.returncode != 0 and said in exp.stdout + exp.stderr, exp.stdout + exp.stderr
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["cracks"]["sorce"] = "local"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    repro = _dvc(["dvc", "repro", "validate"], repo)
    assert repro.returncode != 0 and said in repro.stdout + repro.stderr
    assert "Traceback" not in repro.stdout + repro.stderr + exp.stdout + exp.stderr
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert "metrics/params_check.txt" in stages["download"]["do"]["deps"]  # every stage runs after it


# ------------------------------------------------------------------------------- fuzz test

FUZZ_RUNS = 200
FUZZ_STAGE_RUNS = 3


@pytest.fixture(scope="module")
def fuzz_bases(tmp_path_factory):
    """Two small exports from the synthetic builders: cracks (COCO polygons, one extra PNG image) and
    drywall (YOLO boxes), 48 px images, 6 images each."""
    from promptseg.ingest.synthetic import write_synthetic_export

    root = tmp_path_factory.mktemp("fuzz-bases")
    counts = {"train": 3, "valid": 2, "test": 1}
    for dataset in ("cracks", "drywall"):
        write_synthetic_export(dataset, root / dataset, seed=5, image_size=48, counts=counts, negative_share=0.2)
    ann = root / "cracks" / "train" / "_annotations.coco.json"
    data = json.loads(ann.read_text())
    write_image(ann.parent / "extra.png", 48, 48, seed=7)
    data["images"].append(coco_image(99, "extra.png", 48, 48))
    data["annotations"].append(
        coco_ann(999, 99, segmentation=[[4, 4, 30, 4, 4, 30]], category_id=data["annotations"][0]["category_id"])
    )
    ann.write_text(json.dumps(data))
    return root


def _delete_json_key(path: Path, rng: np.random.Generator) -> str | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    holders = [data] + [
        x
        for key in ("images", "annotations", "categories")
        if isinstance(data.get(key), list)
        for x in data[key]
        if isinstance(x, dict)
    ]
    holders = [h for h in holders if h]
    if not holders:
        return None
    holder = holders[int(rng.integers(len(holders)))]
    key = sorted(holder)[int(rng.integers(len(holder)))]
    del holder[key]
    path.write_text(json.dumps(data), encoding="utf-8")
    return f"deleted key {key!r} in {path.name}"


def _corrupt_jpeg_inside(f: Path, rng: np.random.Generator) -> str:
    """Damage that leaves the JPEG complete: scan data overwritten, an EXIF rotation, a huge frame header."""
    kind = int(rng.integers(3))
    if kind == 0:
        n = max(8, len(f.read_bytes()) // 10)
        damage_jpeg(f, nbytes=n, seed=int(rng.integers(1 << 30)))
        return f"overwrote {n} bytes of scan data inside {f.name}"
    if kind == 1:
        orientation = int(rng.integers(2, 9))
        try:
            set_orientation(f, orientation)
        except OSError:  # damaged by an earlier corruption of this run: PIL cannot re-save it
            return f"(no EXIF rotation: {f.name} is already damaged)"
        return f"EXIF orientation {orientation} on {f.name}"
    side = int(rng.choice([12000, 30000, 60000]))
    huge_header_jpeg(f, side, side)
    return f"header of {f.name} claims {side}x{side}"


def corrupt_export(root: Path, rng: np.random.Generator) -> list[str]:
    """1-3 random corruptions: bytes flipped or the file truncated (images, label files, JSON, data.yaml),
    a key deleted from the COCO JSON, or a JPEG damaged inside (scan data, EXIF rotation, huge header)."""
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and "true_masks" not in p.parts
        and p.suffix.lower() in (*IMAGE_SUFFIXES, ".txt", ".json", ".yaml")
    )
    done = []
    for _ in range(int(rng.integers(1, 4))):
        f = files[int(rng.integers(len(files)))]
        if f.suffix == ".json" and rng.random() < 0.6:
            what = _delete_json_key(f, rng)
            if what:
                done.append(what)
                continue
        if f.suffix.lower() == ".jpg" and f.stat().st_size > 600 and rng.random() < 0.4:
            done.append(_corrupt_jpeg_inside(f, rng))
            continue
        data = bytearray(f.read_bytes())
        if data and rng.random() < 0.5:
            keep = int(rng.integers(0, len(data)))
            f.write_bytes(bytes(data[:keep]))
            done.append(f"truncated {f.relative_to(root)} to {keep} of {len(data)} bytes")
        elif data:
            for i in rng.integers(0, len(data), size=int(rng.integers(1, 9))):
                data[int(i)] ^= int(rng.integers(1, 256))
            f.write_bytes(bytes(data))
            done.append(f"flipped bytes in {f.relative_to(root)}")
    return done


def listed_images(root: Path, fmt: str) -> tuple[int, bool]:
    """(images the export lists, whether the export must be refused outright), computed from the files
    independently of the parser: COCO entries with an id and a string file_name in each JSON that parses;
    YOLO image files in <split>/images."""
    listed, refused = 0, False
    for split in ("train", "valid", "test"):
        if fmt == "yolo":
            d = root / split / "images"
            listed += (
                sum(1 for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES) if d.is_dir() else 0
            )
            continue
        path = root / split / "_annotations.coco.json"
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
        except ValueError:
            data = None
        if not isinstance(data, dict):  # unreadable: the split's image files are listed, and lost
            listed += sum(1 for p in path.parent.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            continue
        if not all(isinstance(data.get(k), list) for k in ("images", "annotations")):
            refused = True
            continue
        listed += sum(
            1 for im in data["images"] if isinstance(im, dict) and "id" in im and isinstance(im.get("file_name"), str)
        )
    return listed, refused


def fuzz_once(base: Path, work: Path, fmt: str, seed: int) -> dict:
    """Corrupt a copy of ``base``, parse and render it in-process; the figures of the run."""
    rng = np.random.default_rng([2026, seed])
    export, out = work / "raw", work / "processed" / "x"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(base, export)
    what = corrupt_export(export, rng)
    listed, must_refuse = listed_images(export, fmt)
    result = {
        "seed": seed,
        "what": what,
        "listed": listed,
        "written": 0,
        "skipped": 0,
        "traceback": None,
        "error": None,
        "unnamed": [],
        "skip_kinds": {},
    }
    read = None
    try:
        read = read_export(export, max_image_pixels=100_000_000)  # params.yaml's data.max_image_pixels
        plan = plan_splits(read.records, strategy="grouped" if seed % 4 == 3 else "as_exported", workers=1)
        write_processed_dataset(read, out, plan=plan, workers=1)
    except ExportError as exc:  # the project's own error: one message
        result["error"] = str(exc)
    except Exception as exc:  # noqa: BLE001 - anything else is a traceback the user would see
        import traceback

        result["traceback"] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
        return result
    if read is None:  # refused while parsing: only a COCO file without its lists, and the message names it
        result["refused_ok"] = must_refuse and "_annotations.coco.json: " in result["error"]
        result["accounted"] = None
        return result
    result["written"] = sum(1 for p in out.glob("*/images/*") if p.is_file()) if out.is_dir() else 0
    skips = [p for p in read.problems if p.kind in IMAGE_SKIP_KINDS]
    result["skipped"] = len(skips)
    result["skip_kinds"] = {k: sum(p.kind == k for p in skips) for k in IMAGE_SKIP_KINDS}
    result["unnamed"] = [str(p) for p in skips if not p.file or Path(p.file).name not in p]
    result["refused_ok"] = not must_refuse
    result["accounted"] = listed == result["written"] + result["skipped"]
    return result


def test_corruption_fuzz_never_a_traceback_and_every_image_accounted_for(fuzz_bases, tmp_path):
    started = time.perf_counter()
    runs = []
    for seed in range(FUZZ_RUNS):
        fmt = "coco" if seed % 2 == 0 else "yolo"
        runs.append(fuzz_once(fuzz_bases / ("cracks" if fmt == "coco" else "drywall"), tmp_path / "run", fmt, seed))
    in_process_s = time.perf_counter() - started
    tracebacks = [r for r in runs if r["traceback"]]
    unaccounted = [r for r in runs if r.get("accounted") is False]
    refused = [r for r in runs if not r["traceback"] and r["accounted"] is None]
    # stage runs through the real script: one refused export, one with skipped images, one clean-ish
    picks = []
    for wanted in (
        lambda r: r in refused,
        lambda r: r["skipped"] and not r["error"],
        lambda r: not r["error"] and not r["skipped"],
    ):
        pick = next((r for r in runs if wanted(r) and r not in picks), None)
        if pick is not None:
            picks.append(pick)
    stage_results = []
    for r in picks[:FUZZ_STAGE_RUNS]:
        fmt_dataset = "cracks" if r["seed"] % 2 == 0 else "drywall"
        project = tmp_path / f"stage-{r['seed']}"
        work = tmp_path / "stage-work"
        fuzz_once(fuzz_bases / fmt_dataset, work, "coco" if fmt_dataset == "cracks" else "yolo", r["seed"])
        (project / "data" / "raw").mkdir(parents=True)
        shutil.move(str(work / "raw"), project / "data" / "raw" / fmt_dataset)
        done = run_masks_stage(project, fmt_dataset)
        stage_results.append((r["seed"], done.returncode, done.stderr))
    figures = {
        "runs": len(runs),
        "tracebacks": len(tracebacks),
        "images unaccounted for": len(unaccounted),
        "refused with a message": len(refused),
        "no usable images (accounted, then a message)": sum(bool(r["error"]) for r in runs) - len(refused),
        "images listed (runs not refused)": sum(r["listed"] for r in runs if r["accounted"] is not None),
        "written": sum(r["written"] for r in runs),
        "skipped and named": sum(r["skipped"] for r in runs),
        "skips by kind": {k: sum(r["skip_kinds"].get(k, 0) for r in runs) for k in IMAGE_SKIP_KINDS},
        "stage script runs": len(stage_results),
        "stage tracebacks": sum("Traceback" in e for _, _, e in stage_results),
        "seconds in-process": round(in_process_s, 1),
        "seconds total": round(time.perf_counter() - started, 1),
    }
    print("\nfuzz figures:", json.dumps(figures))
    assert not tracebacks, (tracebacks[0]["what"], tracebacks[0]["traceback"])
    assert not unaccounted, [(r["seed"], r["what"], r["listed"], r["written"], r["skipped"]) for r in unaccounted[:3]]
    assert not [r for r in runs if r["unnamed"]], [r["unnamed"] for r in runs if r["unnamed"]][:3]
    assert all(r["refused_ok"] for r in runs), [
        (r["seed"], r["what"], r["error"]) for r in runs if not r["refused_ok"]
    ][:3]
    assert figures["skipped and named"] > 0 and figures["refused with a message"] > 0 and figures["written"] > 0
    assert len(stage_results) == FUZZ_STAGE_RUNS
    for seed, rc, stderr in stage_results:
        assert "Traceback" not in stderr, (seed, stderr)
        assert rc == 0 or (rc == 1 and stderr.strip().startswith("masks@")), (seed, rc, stderr)
