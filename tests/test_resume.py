"""Exact resume: SIGKILL a real `stages/train.py <rung>` after its first checkpoint, rerun it, and get the same
bytes in every file of models/<rung>/ as an uninterrupted run (so every tensor's sha256 is equal too)."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from conftest import TINY_COMMON, TINY_MODEL, TINY_RUNGS, TINY_UNET

ROOT = Path(__file__).resolve().parents[1]
RUNGS = {name: TINY_RUNGS[name] for name in ("unet", "full", "lora")}


def make_repo(root: Path, processed_root: Path) -> Path:
    """A repository copy with params.yaml's every section and tiny model/train values; data/processed linked."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["model"].update({k: v for k, v in TINY_MODEL.items()}, unet=TINY_UNET)
    params["train"] = {
        "common": {
            **TINY_COMMON,
            "epochs": 2,
            "negative_prompt_prob": 0.25,
            "unrelated_negative_prompts": ["segment sky"],
        },
        "rungs": RUNGS,
    }
    root.mkdir(parents=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / "stages").mkdir()
    (root / "stages" / "train.py").write_text((ROOT / "stages" / "train.py").read_text())
    (root / "data").mkdir()
    (root / "data" / "processed").symlink_to(processed_root)
    return root


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    """One tracking store for every run here: its schema migration (seconds) happens once."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def _env(mlflow_uri: str) -> dict:
    return {
        **os.environ,
        "MLFLOW_TRACKING_URI": mlflow_uri,
        "PYTHONPATH": str(ROOT / "src"),
        "OMP_NUM_THREADS": "1",
        "PROMPTSEG_CLIP_BPE": str(ROOT / "vendor" / "clip" / "bpe_simple_vocab_16e6.txt.gz"),
    }


def train(repo: Path, rungs: list[str], mlflow_uri: str) -> subprocess.CompletedProcess:
    """`stages/train.py <rung>` for each rung, in ONE process (the interpreter starts once)."""
    driver = "import runpy, sys; main = runpy.run_path('stages/train.py')['main']; [main(r) for r in sys.argv[1:]]"
    return subprocess.run(
        [sys.executable, "-c", driver, *rungs],
        cwd=repo,
        env=_env(mlflow_uri),
        capture_output=True,
        text=True,
        timeout=600,
    )


def kill_after_first_checkpoint(repo: Path, rung: str, mlflow_uri: str) -> None:
    """Start `stages/train.py <rung>`, SIGKILL it as soon as its first epoch's checkpoint file appears."""
    checkpoint = repo / "checkpoints" / rung / "last.pt"
    process = subprocess.Popen(
        [sys.executable, "stages/train.py", rung],
        cwd=repo,
        env=_env(mlflow_uri),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)  # in epoch 2: the rerun restarts epoch 2 from its boundary
    assert process.wait() == -signal.SIGKILL and checkpoint.exists()
    assert not (repo / "models" / rung / "model.safetensors").exists()  # it was killed before the end


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def tensor_hashes(folder: Path) -> dict[str, str]:
    return {
        k: hashlib.sha256(v.contiguous().numpy().tobytes()).hexdigest()
        for k, v in load_file(str(folder / "model.safetensors")).items()
    }


def test_sigkill_then_rerun_gives_the_uninterrupted_bytes_for_unet_full_and_lora(tmp_path, processed_root, mlflow_uri):
    rungs = list(RUNGS)
    straight = make_repo(tmp_path / "straight", processed_root)
    done = train(straight, rungs, mlflow_uri)
    assert done.returncode == 0, done.stderr[-3000:]
    killed = make_repo(tmp_path / "killed", processed_root)
    for rung in rungs:
        kill_after_first_checkpoint(killed, rung, mlflow_uri)
    resumed = train(killed, rungs, mlflow_uri)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert all(f"resumed from checkpoints/{rung}/last.pt after epoch 1" in resumed.stdout for rung in rungs)
    for rung in rungs:
        a, b = tensor_hashes(straight / "models" / rung), tensor_hashes(killed / "models" / rung)
        assert a.keys() == b.keys() and a == b, rung
        # no timings or run ids in the model folder: the same weights give the same bytes (and one DVC hash)
        assert folder_bytes(straight / "models" / rung) == folder_bytes(killed / "models" / rung), rung
        # the live log continues the same step series: one row per epoch, the uninterrupted run's values
        live_a, live_b = straight / "metrics" / "train" / rung, killed / "metrics" / "train" / rung
        val_dice = (live_b / "plots" / "metrics" / "val_dice.tsv").read_text()
        assert [row.split("\t")[0] for row in val_dice.splitlines()] == ["step", "0", "1"], val_dice
        assert val_dice == (live_a / "plots" / "metrics" / "val_dice.tsv").read_text(), rung
        assert folder_bytes(live_a / "plots" / "images") == folder_bytes(live_b / "plots" / "images"), rung
        # ... and the same MLflow run (its id was in the checkpoint), not a second one
        run_id = json.loads((killed / "metrics" / "train" / f"{rung}.json").read_text())["mlflow_run_id"]
        history = MlflowClient(mlflow_uri).get_metric_history(run_id, "val_dice")
        assert sorted((m.step, m.value) for m in history) == [
            (int(step), float(value)) for step, value in (row.split("\t") for row in val_dice.splitlines()[1:])
        ]
    client, experiment = (
        MlflowClient(mlflow_uri),
        yaml.safe_load((ROOT / "params.yaml").read_text())["mlflow"]["experiment"],
    )
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 2 * len(rungs) and {r.info.status for r in runs} == {"FINISHED"}  # straight + resumed
    unet = tensor_hashes(straight / "models" / "unet")
    assert any(k.endswith("running_var") for k in unet) and any(k.endswith("num_batches_tracked") for k in unet)
