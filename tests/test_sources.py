"""The download stage's sources: synthetic, local (zip or folder), roboflow (key from the environment only)."""

import zipfile

import pytest

from promptseg.ingest.sources import SourceError, land_export
from promptseg.settings import LocalSettings, RoboflowSettings, SourceSettings, SyntheticSettings, build

SYNTH = build(
    SyntheticSettings,
    {
        "seed": 1,
        "image_size": 96,
        "counts": {"train": 3, "valid": 2, "test": 2},
        "negative_share": 0.0,
        "augment_copies_share": 0.0,
    },
    "synthetic",
)
ROBOFLOW = RoboflowSettings(workspace="objectdetect-pu6rn", project="drywall-join-detect", version=2, format="coco")


def source(kind, path=""):
    """data.<dataset>'s source keys, as the download stage builds them."""
    return SourceSettings(source=kind, roboflow=ROBOFLOW, local=LocalSettings(path))


def tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_synthetic_lands_atomically(tmp_path):
    out = tmp_path / "raw" / "cracks"
    assert land_export("cracks", source("synthetic"), SYNTH, out) == "synthetic"
    assert (out / "train" / "_annotations.coco.json").exists()
    assert not (tmp_path / "raw" / "cracks.partial").exists()


def test_roboflow_without_key_fails_fast_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("ROBOFLOW_API_KEY", raising=False)
    out = tmp_path / "raw" / "drywall"
    with pytest.raises(SourceError) as info:
        land_export("drywall", source("roboflow"), SYNTH, out)
    message = str(info.value)
    assert "ROBOFLOW_API_KEY" in message and "source: local" in message and "synthetic" in message
    assert not out.exists() and not (tmp_path / "raw" / "drywall.partial").exists()


def test_roboflow_error_never_shows_the_key(tmp_path, monkeypatch):
    import requests
    import roboflow

    secret = "rf_SECRET_1234567890"
    monkeypatch.setenv("ROBOFLOW_API_KEY", secret)

    def offline(api_key=None, **_):
        raise requests.exceptions.ConnectionError(f"HTTPSConnectionPool: /?api_key={api_key} failed")

    monkeypatch.setattr(roboflow, "Roboflow", offline)
    with pytest.raises(SourceError) as info:
        land_export("drywall", source("roboflow"), SYNTH, tmp_path / "raw" / "drywall")
    assert secret not in str(info.value) and "no network" in str(info.value)

    def refused(api_key=None, **_):
        raise RuntimeError(f"workspace not found for key {api_key}")

    monkeypatch.setattr(roboflow, "Roboflow", refused)
    with pytest.raises(SourceError) as info:
        land_export("drywall", source("roboflow"), SYNTH, tmp_path / "raw" / "drywall")
    assert secret not in str(info.value) and "***" in str(info.value)


def test_local_zip_lands_the_same_tree_as_the_folder(tmp_path):
    export = tmp_path / "my-export"
    land_export("cracks", source("synthetic"), SYNTH, export)
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w") as zf:  # wrapped in one top folder, as downloads often are
        for path in export.rglob("*"):
            zf.write(path, f"cracks-3ii36-1/{path.relative_to(export)}")
    from_folder, from_zip = tmp_path / "a" / "cracks", tmp_path / "b" / "cracks"
    land_export("cracks", source("local", str(export)), SYNTH, from_folder)
    land_export("cracks", source("local", str(archive)), SYNTH, from_zip)
    assert tree(from_folder) == tree(from_zip) == tree(export)


@pytest.mark.parametrize("path, expected", [("", "local.path is empty"), ("/no/such/export.zip", "does not exist")])
def test_local_bad_path_is_a_clear_error(tmp_path, path, expected):
    with pytest.raises(SourceError, match=expected):
        land_export("cracks", source("local", path), SYNTH, tmp_path / "out")


def test_local_non_zip_file_is_a_clear_error(tmp_path):
    bogus = tmp_path / "export.tar"
    bogus.write_text("not a zip")
    with pytest.raises(SourceError, match="not a zip archive"):
        land_export("cracks", source("local", str(bogus)), SYNTH, tmp_path / "out")


def test_unknown_source_names_the_choices(tmp_path):
    with pytest.raises(SourceError, match="choose one of synthetic, local, roboflow"):
        land_export("cracks", source("kaggle"), SYNTH, tmp_path / "out")


def test_failed_download_keeps_the_previous_export(tmp_path, monkeypatch):
    out = tmp_path / "raw" / "cracks"
    land_export("cracks", source("synthetic"), SYNTH, out)
    before = tree(out)
    monkeypatch.delenv("ROBOFLOW_API_KEY", raising=False)
    with pytest.raises(SourceError):
        land_export("cracks", source("roboflow"), SYNTH, out)
    assert tree(out) == before
