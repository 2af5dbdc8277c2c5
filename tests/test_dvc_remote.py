"""A DVC remote round trip with a local-folder remote (S3, GCS and SSH take the same commands; docs/remote.md).

A tiny pipeline (`dvc repro train@unet`: download, masks and the U-Net on tiny params) is run, committed and
pushed; a fresh `git clone` runs `dvc pull --with-deps train@unet`, after which `dvc repro train@unet` has nothing
to do and `promptseg predict --model models/unet` writes masks byte-identical to the original's, with no
training; `dvc artifacts get <repo> promptseg-unet -o <dir>` returns the model folder, once a version is tagged
the way DVC reads artifact versions (a Git tag `promptseg-unet@v0.1.0`). The original's cache is deleted
before the clone pulls, so everything the clone gets comes from the remote.
"""

import filecmp
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import copy_repository, write_tiny_pipeline_params

BIN = Path(sys.executable).parent
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
TARGET = "train@unet"


def run(args, cwd, **env):
    full_env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
        "HF_HUB_OFFLINE": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(Path(cwd) / "src"),  # each copy runs its own sources
        **env,
    }
    full_env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def predict(repo: Path, out: Path) -> list[str]:
    images = repo / "data" / "processed" / "cracks" / "test" / "images"
    run(
        ["promptseg", "predict", "--model", "models/unet", "--prompt", "segment crack", str(images), "--out", str(out)],
        repo,
    )
    return sorted(p.name for p in out.glob("*.png"))


@pytest.fixture(scope="module")
def pushed(tmp_path_factory):
    """The original repository, run and pushed to a local-folder remote; its cache deleted afterwards."""
    tmp = tmp_path_factory.mktemp("remote")
    origin, store = copy_repository(tmp / "origin"), tmp / "store"
    write_tiny_pipeline_params(origin)
    run(["git", "init", "-q"], origin)
    run(["dvc", "remote", "add", "-d", "store", str(store)], origin)  # committed in .dvc/config, as docs/remote.md
    run(["git", "add", "-A"], origin)
    run([*GIT, "commit", "-qm", "base"], origin)
    run(["dvc", "repro", TARGET], origin)
    run(["git", "add", "-A"], origin)
    run([*GIT, "commit", "-qm", "run"], origin)
    run([*GIT, "tag", "-a", "promptseg-unet@v0.1.0", "-m", "promptseg-unet v0.1.0"], origin)
    started = time.perf_counter()
    out = run(["dvc", "push"], origin)
    push_s = time.perf_counter() - started
    print(f"dvc push: {out.strip().splitlines()[-1]}; {folder_bytes(store) / 1e6:.1f} MB in {push_s:.1f} s")
    masks = predict(origin, tmp / "masks-origin")
    shutil.rmtree(origin / ".dvc" / "cache")  # from here on, only the remote holds the data and the model
    return tmp, origin, store, masks


def test_a_fresh_clone_pulls_and_reproduces_nothing_and_predicts_the_same_masks(pushed):
    tmp, origin, store, masks = pushed
    clone = tmp / "clone"
    run(["git", "clone", "-q", str(origin), str(clone)], tmp)
    shutil.copytree(origin / "vendor", clone / "vendor")  # git-ignored: `make install` fetches it
    assert not (clone / "models" / "unet").exists()
    started = time.perf_counter()
    out = run(["dvc", "pull", "--with-deps", TARGET], clone)
    print(
        f"dvc pull: {out.strip().splitlines()[-1]}; {folder_bytes(clone / '.dvc' / 'cache') / 1e6:.1f} MB in "
        f"{time.perf_counter() - started:.1f} s"
    )
    weights = "models/unet/model.safetensors"
    assert (clone / weights).read_bytes() == (origin / weights).read_bytes()  # the pushed weights, not retrained
    status = run(["dvc", "status", "--with-deps", TARGET], clone)
    assert "Data and pipelines are up to date." in status, status
    repro = run(["dvc", "repro", TARGET], clone)
    assert f"Stage '{TARGET}' didn't change, skipping" in repro and "Running stage" not in repro, repro
    got = predict(clone, tmp / "masks-clone")
    assert got == masks and len(masks) >= 2  # the tiny split's crack test photos
    match, mismatch, errors = filecmp.cmpfiles(tmp / "masks-origin", tmp / "masks-clone", masks, shallow=False)
    assert match == masks and not mismatch and not errors


def test_dvc_artifacts_get_returns_the_model_folder_from_the_remote(pushed):
    tmp, origin, _, _ = pushed
    run(["dvc", "artifacts", "get", str(origin), "promptseg-unet", "-o", str(tmp / "unet")], tmp)
    names = sorted(p.name for p in (tmp / "unet").iterdir())
    assert names == sorted(p.name for p in (origin / "models" / "unet").iterdir())  # the workspace's copy
    assert "model.safetensors" in names and "promptseg.json" in names
    match, mismatch, errors = filecmp.cmpfiles(tmp / "unet", origin / "models" / "unet", names, shallow=False)
    assert match == names and not mismatch and not errors
    run(["dvc", "artifacts", "get", str(origin), "promptseg-unet", "--rev", "v0.1.0", "-o", str(tmp / "v1")], tmp)
    assert (tmp / "v1" / "model.safetensors").read_bytes() == (tmp / "unet" / "model.safetensors").read_bytes()
