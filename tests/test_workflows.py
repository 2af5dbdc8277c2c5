"""The GitHub Actions workflows: valid against the workflow schema, and the jobs run what the README promises."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
GPU_LABELS = ["self-hosted", "linux", "gpu"]


def _load(path: Path) -> dict:
    data = yaml.safe_load(path.read_text())
    if True in data:  # YAML 1.1 reads the key `on` as the boolean true
        data["on"] = data.pop(True)
    return data


def _runs(job: dict) -> str:
    return "\n".join(step.get("run", "") for step in job.get("steps", []))


def _validate(paths) -> subprocess.CompletedProcess:
    """check-jsonschema against the GitHub workflow schema it vendors (SchemaStore's; no network)."""
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "check-jsonschema"),
            "--builtin-schema",
            "vendor.github-workflows",
            *map(str, paths),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_there_are_the_two_workflows():
    assert {p.name for p in WORKFLOWS} >= {"ci.yml", "gpu-paper.yml"}


def test_every_workflow_matches_the_github_workflow_schema(tmp_path):
    result = _validate(WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "broken.yml"  # the check can fail: a job without runs-on, a step with an unknown key
    broken.write_text("on: push\njobs:\n  a:\n    steps:\n      - rn: make test\n")
    assert _validate([broken]).returncode != 0


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_workflow_parses_and_every_job_has_a_runner_and_steps(path):
    data = _load(path)
    assert data.get("on") and data.get("jobs"), f"{path.name}: needs `on` and `jobs`"
    for name, job in data["jobs"].items():
        assert job.get("runs-on"), f"{path.name}: job {name} has no runs-on"
        assert job.get("steps"), f"{path.name}: job {name} has no steps"


def test_cpu_job_runs_the_test_command_and_the_default_pipeline():
    data = _load(ROOT / ".github" / "workflows" / "ci.yml")
    job = next(iter(data["jobs"].values()))
    assert job["runs-on"] == "ubuntu-latest"
    runs = _runs(job)
    assert "make test" in runs and "make repro" in runs
    assert "make test" in (ROOT / ".ci" / "run").read_text()  # the same command as our CI script
    assert {"push", "pull_request"} <= set(data["on"])


def test_gpu_job_runs_the_paper_profile_on_the_self_hosted_gpu_runner_with_a_dvc_remote():
    path = ROOT / ".github" / "workflows" / "gpu-paper.yml"
    text = path.read_text()
    data = _load(path)
    job = next(iter(data["jobs"].values()))
    assert job["runs-on"] == GPU_LABELS
    assert "self-hosted, linux, gpu" in text.split("name:")[0]  # documented in the header comment
    assert {"workflow_dispatch", "pull_request"} <= set(data["on"])
    runs = _runs(job)
    order = [runs.index(s) for s in ("dvc pull || true", "make repro-paper", "dvc push", "dvc metrics diff")]
    assert order == sorted(order), "pull, reproduce, push, then compare"
    assert "$GITHUB_STEP_SUMMARY" in runs and "dvc plots diff" in runs and "gh pr comment" in runs
    for secret in (
        "DVC_REMOTE_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_ENDPOINT_URL",
        "ROBOFLOW_API_KEY",
    ):
        assert f"secrets.{secret}" in text


def test_gpu_job_shows_the_headline_before_every_metric():
    runs = _runs(next(iter(_load(ROOT / ".github" / "workflows" / "gpu-paper.yml")["jobs"].values())))
    headline = runs.index("dvc metrics diff origin/main --targets metrics/summary.json")
    changed = runs.index("dvc exp show --only-changed")
    everything = runs.index("dvc metrics diff origin/main --md")
    assert headline < changed < everything
