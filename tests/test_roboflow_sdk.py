"""A Roboflow download, as the SDK lays it out on disk, through the download and masks stages' own code.

``FakeRoboflow`` stands in for ``roboflow.Roboflow`` (the class ``promptseg.ingest.sources`` calls) and does on disk
what roboflow 1.7.3's ``Version.download(model_format, location, overwrite)`` does after the network: it
creates ``location``, writes the export zip to ``location/roboflow.zip``, extracts it there, deletes the zip,
and, for the YOLO formats, re-dumps ``data.yaml`` with ``yaml.dump`` (``amend_data_yaml``: keys sorted).
The zip holds what Roboflow's exports hold: ``README.dataset.txt`` and ``README.roboflow.txt`` at the top;
for ``coco`` / ``coco-segmentation`` one ``<split>/_annotations.coco.json`` beside each split's images; for
``yolov8`` ``data.yaml`` (which names ``../test/images`` even when the export has no test split) and
``<split>/images`` + ``<split>/labels``. The official drywall exports have train and valid only.

The key is set in ``ROBOFLOW_API_KEY``; it must appear in no file, message or log.
"""

import io
import json
import logging
import os
import runpy
import shutil
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from fixtures_exports import rf_name, write_coco_export, write_yolo_export

REPO = Path(__file__).resolve().parents[1]
SECRET = "rf_" + "fake_sdk_key_" + "0123456789abcdef"  # assembled, so no file of the repository holds it
CALLS = []


def _zip_of(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


def export_zip(workspace: str, project: str, version: int, model_format: str, staging: Path) -> bytes:
    """The zip Roboflow serves for this project/version/format (small fixture contents)."""
    shutil.rmtree(staging, ignore_errors=True)
    crack = [("poly", [4.0, 4.0, 20.5, 4.0, 20.5, 8.0, 4.0, 8.0])]
    if project.startswith("cracks"):  # a segmentation project: train/valid/test
        if model_format != "coco-segmentation":
            raise RuntimeError(f"fixture: no {model_format} export of {project}")
        write_coco_export(
            staging,
            {
                "train": [
                    (rf_name("c0", 1), 32, 24, crack),
                    (rf_name("c0", 2), 32, 24, crack),  # two augmented copies
                    (rf_name("c1", 3), 32, 24, [("empty", [2, 2, 5, 5])]),
                    (rf_name("c2", 4), 32, 24, []),
                ],
                "valid": [(rf_name("c3", 5), 32, 24, crack)],
                "test": [(rf_name("c4", 6), 32, 24, crack), (rf_name("c5", 7), 32, 24, [])],
            },
        )
    elif model_format == "coco":  # drywall, boxes only, train + valid (the official exports)
        categories = [
            {"id": 0, "name": "drywall-join", "supercategory": "none"},
            {"id": 1, "name": "drywall-join", "supercategory": "drywall-join"},
        ]
        write_coco_export(
            staging,
            {
                "train": [
                    (rf_name("d0", 1), 32, 24, [("box", [4, 0, 6, 24])]),
                    (rf_name("d1", 2), 32, 24, [("box", [24, 3, 9, 10])]),
                ],  # overruns by 1 px
                "valid": [(rf_name("d2", 3), 32, 24, [("box", [10, 2, 4, 20])])],
            },
            categories=categories,
        )
    elif model_format == "yolov8":
        write_yolo_export(
            staging,
            {
                "train": {
                    Path(rf_name("d0", 1)).stem: (32, 24, ["0 0.21875 0.5 0.1875 1.0"]),
                    Path(rf_name("d1", 2)).stem: (32, 24, []),
                },
                "valid": {Path(rf_name("d2", 3)).stem: (32, 24, ["0 0.375 0.5 0.125 0.8333333"])},
            },
            names=None,
        )
        (staging / "data.yaml").write_text(
            "train: ../train/images\nval: ../valid/images\ntest: ../test/images\n\nnc: 1\nnames: ['drywall-join']\n\n"
            f"roboflow:\n  workspace: {workspace}\n  project: {project}\n  version: {version}\n  license: CC BY 4.0\n"
            f"  url: https://universe.roboflow.com/{workspace}/{project}/dataset/{version}\n"
        )
    else:
        raise RuntimeError(f"fixture: no {model_format} export of {project}")
    (staging / "README.roboflow.txt").write_text(f"{project} - v{version}\nexported via roboflow.com\n")
    (staging / "README.dataset.txt").write_text(f"# {project}\n")
    return _zip_of(staging)


class FakeRoboflow:
    """``Roboflow(api_key=...).workspace(w).project(p).version(n).download(model_format, location, overwrite)``."""

    def __init__(self, api_key=None, **_):
        self._key = api_key
        print("loading Roboflow workspace...")

    def workspace(self, name):
        print("loading Roboflow project...")
        return _Node(self._key, name)


class _Node:
    def __init__(self, key, workspace, project=None):
        self._key, self.workspace, self.project_name = key, workspace, project

    def project(self, name):
        return _Node(self._key, self.workspace, name)

    def version(self, number):
        return _Version(self._key, self.workspace, self.project_name, number)


class _Version:
    def __init__(self, key, workspace, project, number):
        self._key, self.workspace, self.project, self.number = key, workspace, project, number

    def download(self, model_format=None, location=None, overwrite=False):
        CALLS.append((self.workspace, self.project, self.number, model_format))
        if self.workspace == "no-such-workspace":  # the SDK's errors may carry the request URL, key and all
            raise RuntimeError(f"404 for https://api.roboflow.com/{self.workspace}?api_key={self._key}")
        if os.path.exists(location) and not overwrite:
            return
        os.makedirs(location, exist_ok=True)
        payload = export_zip(
            self.workspace,
            self.project,
            self.number,
            model_format,
            Path(location).parent / f".{Path(location).name}.fake-sdk-staging",
        )
        shutil.rmtree(Path(location).parent / f".{Path(location).name}.fake-sdk-staging")
        with open(os.path.join(location, "roboflow.zip"), "wb") as handle:
            handle.write(payload)
        sys.stdout.write(
            f"\rDownloading Dataset Version Zip in {location} to {model_format}: 100% "
            f"[{len(payload)} / {len(payload)}] bytes\n"
        )
        with zipfile.ZipFile(os.path.join(location, "roboflow.zip")) as archive:
            archive.extractall(location)
        os.remove(os.path.join(location, "roboflow.zip"))
        if model_format in ("yolov5pytorch", "mt-yolov6", "yolov7pytorch", "yolov8", "yolov9"):
            data_yaml = os.path.join(location, "data.yaml")
            with open(data_yaml) as handle:
                content = yaml.safe_load(handle)
            os.remove(data_yaml)
            with open(data_yaml, "w") as handle:
                yaml.dump(content, handle)


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A working directory with the repository's stages and params.yaml, the fake SDK and the key set."""
    import roboflow

    for name in ("params.yaml", "stages/download.py", "stages/masks.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ROBOFLOW_API_KEY", SECRET)
    monkeypatch.setattr(roboflow, "Roboflow", FakeRoboflow)
    CALLS.clear()
    return tmp_path


def set_params(root: Path, **datasets) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    for name, roboflow_cfg in datasets.items():
        params["data"][name].update(source="roboflow", split="as_exported")
        params["data"][name]["roboflow"].update(roboflow_cfg)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def run_stage(script: str, dataset: str, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", [script, dataset])
    runpy.run_path(script, run_name="__main__")


def assert_secret_nowhere(root: Path, *texts: str) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    for text in texts:
        assert SECRET not in text


def mask(root: Path, dataset: str, split: str, name: str) -> np.ndarray:
    return cv2.imread(
        str(root / "data" / "processed" / dataset / split / "masks" / f"{Path(name).stem}.png"), cv2.IMREAD_GRAYSCALE
    )


@pytest.mark.parametrize("drywall_format", ["coco", "yolov8"])
def test_download_and_masks_on_the_sdk_layout(project, monkeypatch, capsys, caplog, drywall_format):
    caplog.set_level(logging.DEBUG)
    set_params(project, cracks={"format": "coco-segmentation"}, drywall={"format": drywall_format})
    for dataset in ("cracks", "drywall"):
        run_stage("stages/download.py", dataset, monkeypatch)
        run_stage("stages/masks.py", dataset, monkeypatch)
    assert CALLS == [
        ("fyp-ny1jt", "cracks-3ii36", 1, "coco-segmentation"),
        ("objectdetect-pu6rn", "drywall-join-detect", 2, drywall_format),
    ]
    raw = project / "data" / "raw"
    # landed as the SDK leaves it: no zip, no partial folder, the READMEs at the top
    assert sorted(p.name for p in raw.iterdir()) == ["cracks", "drywall"]
    assert {p.name for p in (raw / "cracks").iterdir()} == {
        "README.dataset.txt",
        "README.roboflow.txt",
        "train",
        "valid",
        "test",
    }
    if drywall_format == "yolov8":
        assert yaml.safe_load((raw / "drywall" / "data.yaml").read_text())["test"] == "../test/images"
        assert not (raw / "drywall" / "test").exists()
    # the exported splits, parsed and kept (split: as_exported); drywall has no test split
    cracks = json.loads((project / "metrics" / "data" / "cracks.json").read_text())
    drywall = json.loads((project / "metrics" / "data" / "drywall.json").read_text())
    assert [cracks[s]["images"] for s in ("train", "val", "test")] == [4, 1, 2]
    assert cracks["train"]["without_foreground"] == 1  # c2 has no annotation; c1's empty polygon renders its box
    assert [drywall[s]["images"] for s in ("train", "val")] == [2, 1]
    assert drywall.get("test", {}).get("images", 0) == 0
    assert not any((project / "data" / "processed" / "drywall").glob("test/images/*"))
    # exact pixels: the crack polygon (4..20.5, 4..8) and the drywall box of valid d2
    crack = mask(project, "cracks", "val", rf_name("c3", 5))
    assert crack.shape == (24, 32) and crack[6, 12] == 255 and crack[0, 0] == 0 and crack[20, 28] == 0
    box = mask(project, "drywall", "val", rf_name("d2", 3))
    expected = np.zeros((24, 32), np.uint8)
    expected[2:22, 10:14] = 255  # coco [10, 2, 4, 20]; yolo 0.375 0.5 0.125 0.8333333 of 32 x 24: the same box
    assert np.array_equal(box, expected)
    out = capsys.readouterr()
    assert "Downloading Dataset Version Zip" in out.out  # the fake SDK's own output went through the stage
    assert_secret_nowhere(project, out.out, out.err, caplog.text)


def test_a_refused_download_names_the_project_never_the_key(project, monkeypatch, capsys, caplog):
    set_params(project, drywall={"workspace": "no-such-workspace", "format": "coco"})
    with pytest.raises(SystemExit) as info:
        run_stage("stages/download.py", "drywall", monkeypatch)
    message = str(info.value)
    assert "no-such-workspace/drywall-join-detect version 2" in message and "***" in message
    assert not (project / "data" / "raw" / "drywall").exists()
    out = capsys.readouterr()
    assert_secret_nowhere(project, message, out.out, out.err, caplog.text)
