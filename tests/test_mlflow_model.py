"""promptseg.serve.pyfunc: a tiny trained U-Net logged, registered and loaded back from the registry predicts
exactly the masks `promptseg predict` writes, through the same recipe (threshold, open/close, flip TTA, ...)."""

import json

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from promptseg.serve.cli import main

from conftest import PROMPTS, TINY_MODEL, predict_argv

UNET = {
    "widths": [8, 16, 32, 64],
    "freeze_text": False,
    "presence_gate": False,
    "text": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64},
}


@pytest.fixture(scope="module")
def unet_dir(tmp_path_factory):
    """A tiny U-Net trained 15 AdamW steps on dark lines, saved like models/unet (weights, processor, card)."""
    from promptseg.modeling.unet import build_unet_model

    model, processor = build_unet_model({**TINY_MODEL, "unet": UNET}, 64, 0)
    generator = torch.Generator().manual_seed(0)
    images = 0.8 + 0.1 * torch.randn(4, 3, 64, 64, generator=generator)
    targets = torch.zeros(4, 64, 64)
    for i in range(4):
        targets[i, 10 + 12 * i : 13 + 12 * i, :] = 1
    images = images * (1 - 0.6 * targets[:, None])
    tokens = processor.tokenizer(["segment crack", "segment joint tape"] * 2, padding=True, return_tensors="pt")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(15):
        loss = F.binary_cross_entropy_with_logits(model(images, tokens["input_ids"], tokens["attention_mask"]), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    d = tmp_path_factory.mktemp("models") / "unet"
    model.eval().save_pretrained(d)
    processor.save_pretrained(d)
    (d / "promptseg.json").write_text(json.dumps({"rung": "unet", "architecture": "unet", "prompts": PROMPTS}))
    return d


def wall_images(folder):
    rng = np.random.default_rng(1)
    folder.mkdir()
    names = []
    for i, (h, w) in enumerate([(48, 64), (70, 52), (64, 64)]):
        image = np.clip(rng.normal(200, 15, (h, w, 3)), 0, 255).astype(np.uint8)
        image[h // 3 : h // 3 + 3 + i] = 60  # a dark band
        names.append(f"w{i}.png")
        cv2.imwrite(str(folder / names[-1]), image)
    return names


def test_registered_pyfunc_predicts_the_masks_of_promptseg_predict(unet_dir, tmp_path, monkeypatch):
    import mlflow

    from promptseg.infer.recipe import Recipe
    from promptseg.infer.torch_engine import load_trained_model
    from promptseg.serve.pyfunc import log_pyfunc_model

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    cfg = {"tracking_uri": uri, "experiment": "pyfunc-test", "artifact_root": str(tmp_path / "mlartifacts")}
    folder = tmp_path / "in"
    names = wall_images(folder)
    images = [cv2.cvtColor(cv2.imread(str(folder / n)), cv2.COLOR_BGR2RGB) for n in names]
    # thresholds that split each dataset's probabilities (so the masks are neither empty nor full)
    trained = load_trained_model(unet_dir)
    thresholds = {}
    for dataset, prompt in (("cracks", "segment crack"), ("drywall", "segment joint tape")):
        probs = np.concatenate([p.ravel() for p in trained.whole_image_probabilities(images, [prompt] * len(images))])
        thresholds[dataset] = float(np.quantile(probs, 0.9))
    recipes = {d: Recipe(threshold=t).to_dict() for d, t in thresholds.items()}  # the default recipe's fields
    eval_json = tmp_path / "unet.json"
    eval_json.write_text(json.dumps({d: {"threshold": r["threshold"], "recipe": r} for d, r in recipes.items()}))

    model_uri = log_pyfunc_model(unet_dir, cfg, recipes=recipes)
    assert model_uri == "models:/promptseg-unet/1"
    mlflow.set_tracking_uri(uri)
    loaded = mlflow.pyfunc.load_model("models:/promptseg-unet/1")
    schema = loaded.metadata.get_input_schema()
    assert schema.input_names() == ["image", "prompt"]
    assert loaded.metadata.get_params_schema() is not None
    # its environment pins what is installed (pillow 12.3.0 here, not the 13.0.0 a hand-written list had)
    from importlib.metadata import version
    from pathlib import Path

    pinned = Path(mlflow.pyfunc.get_model_dependencies("models:/promptseg-unet/1")).read_text().split()
    assert {f"pillow=={version('pillow')}", f"torch=={version('torch')}", "promptseg"} <= set(pinned)

    for prompt, dataset in (("segment crack", "cracks"), ("segment joint tape", "drywall"), ("segment a cat", None)):
        out_dir = tmp_path / f"cli-{prompt.replace(' ', '-')}"
        assert (
            main(
                predict_argv(
                    str(unet_dir),
                    str(folder),
                    out=str(out_dir),
                    prompt=prompt,
                    extra=["--eval-metrics", str(eval_json)],
                )
            )
            == 0
        )
        frame = pd.DataFrame({"image": [(folder / n).read_bytes() for n in names], "prompt": [prompt] * len(names)})
        got = loaded.predict(frame)
        assert list(got["threshold"]) == [thresholds[dataset] if dataset else 0.5] * len(names)
        lit = 0.0
        for name, png in zip(names, got["mask"]):
            mask = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
            expected = cv2.imread(str(next(out_dir.glob(f"{name[:-4]}__*.png"))), cv2.IMREAD_UNCHANGED)
            assert mask.dtype == np.uint8 and mask.shape == expected.shape
            assert np.array_equal(mask, expected), (prompt, name)
            lit += (mask > 0).mean()
        if dataset:
            assert 0.0 < lit / len(names) < 1.0  # the comparison is not between two empty (or full) masks

    ones = loaded.predict(
        pd.DataFrame({"image": [(folder / names[0]).read_bytes()], "prompt": ["segment crack"]}),
        params={"threshold": 0.0},
    )
    assert ones["threshold"][0] == 0.0
    with pytest.raises(Exception, match="row 1: `image` is not a readable image"):
        loaded.predict(
            pd.DataFrame(
                {"image": [(folder / names[0]).read_bytes(), b"not an image"], "prompt": ["segment crack"] * 2}
            )
        )
    # a second log of the same rung is version 2 of the same registered model
    assert log_pyfunc_model(unet_dir, cfg, recipes=recipes) == "models:/promptseg-unet/2"


def test_pyfunc_applies_the_recipe_flip_tta_and_kernel_5_like_promptseg_predict(unet_dir, tmp_path, monkeypatch):
    """A recipe with flip TTA on and a 5-px open/close: the pyfunc's masks equal `promptseg predict`'s with the
    same recipe file, and differ from the masks without flip TTA (so the recipe is really applied)."""
    import mlflow

    from promptseg.infer.recipe import Recipe
    from promptseg.infer.torch_engine import load_trained_model
    from promptseg.serve.pyfunc import log_pyfunc_model

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    cfg = {"tracking_uri": uri, "experiment": "pyfunc-recipe", "artifact_root": str(tmp_path / "mlartifacts")}
    folder = tmp_path / "in"
    names = wall_images(folder)
    images = [cv2.cvtColor(cv2.imread(str(folder / n)), cv2.COLOR_BGR2RGB) for n in names]
    trained = load_trained_model(unet_dir)
    probs = np.concatenate([p.ravel() for p in trained.whole_image_probabilities(images, ["segment crack"] * 3)])
    recipe = Recipe(threshold=float(np.quantile(probs, 0.85)), morphology=True, kernel=5, hflip_tta=True, batch_size=2)
    recipes = {"cracks": recipe.to_dict(), "drywall": Recipe(threshold=0.5).to_dict()}
    eval_json = tmp_path / "unet.json"
    eval_json.write_text(json.dumps({d: {"threshold": r["threshold"], "recipe": r} for d, r in recipes.items()}))
    assert log_pyfunc_model(unet_dir, cfg, recipes=recipes, rung="unet") == "models:/promptseg-unet/1"
    mlflow.set_tracking_uri(uri)
    loaded = mlflow.pyfunc.load_model("models:/promptseg-unet/1")

    out_dir = tmp_path / "cli"
    args = predict_argv(str(unet_dir), str(folder), out=str(out_dir))
    assert main([*args, "--eval-metrics", str(eval_json)]) == 0
    frame = pd.DataFrame({"image": [(folder / n).read_bytes() for n in names], "prompt": ["segment crack"] * 3})
    got = loaded.predict(frame)
    assert list(got["threshold"]) == [recipe.threshold] * 3
    no_flip = trained.masks(images, "segment crack", Recipe(**{**recipe.to_dict(), "hflip_tta": False}))
    differs = 0
    for name, png, plain in zip(names, got["mask"], no_flip):
        mask = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
        expected = cv2.imread(str(out_dir / f"{name[:-4]}__segment-crack.png"), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(mask, expected), name
        assert 0.0 < (mask > 0).mean() < 1.0
        differs += int(not np.array_equal(mask, plain))
    assert differs > 0  # flip TTA changed at least one mask: the pyfunc did not ignore it


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _post(url: str, body: dict, timeout: float = 120.0) -> tuple[int, dict, float]:
    """(HTTP status, the JSON answer, seconds) of a POST; an HTTP error's status and body, not an exception."""
    import time
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, json.loads(answer.read()), time.perf_counter() - started
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}"), time.perf_counter() - started


def test_mlflow_models_serve_answers_a_photo_with_the_mask_of_promptseg_predict(unet_dir, tmp_path, monkeypatch):
    """`mlflow models serve -m models:/promptseg-unet/1 --env-manager local` on 127.0.0.1 and a free port: a JPEG
    photo POSTed as base64 JSON comes back as the mask `promptseg predict` writes (pixel for pixel), with the
    measurements when asked; a malformed request is a 400 naming the problem and the server keeps serving."""
    import base64
    import os
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    from promptseg.infer.recipe import Recipe
    from promptseg.infer.torch_engine import load_trained_model
    from promptseg.ingest.synthetic import render_wall_sample
    from promptseg.serve.pyfunc import log_pyfunc_model

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    cfg = {"tracking_uri": uri, "experiment": "serve-test", "artifact_root": str(tmp_path / "mlartifacts")}
    photo = tmp_path / "photos" / "wall.jpg"  # a camera's format: JPEG, not square
    photo.parent.mkdir()
    bgr = render_wall_sample("cracks", np.random.default_rng(5), 96, negative=False).image[:80]
    assert cv2.imwrite(str(photo), bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])
    trained = load_trained_model(unet_dir)  # a threshold that lights about a tenth of the photo
    rgb = cv2.cvtColor(cv2.imread(str(photo)), cv2.COLOR_BGR2RGB)
    threshold = float(np.quantile(trained.whole_image_probabilities([rgb], ["segment crack"])[0], 0.9))
    recipes = {"cracks": Recipe(threshold=threshold).to_dict(), "drywall": Recipe(threshold=0.5).to_dict()}
    eval_json = tmp_path / "unet.json"
    eval_json.write_text(json.dumps({d: {"threshold": r["threshold"], "recipe": r} for d, r in recipes.items()}))
    assert log_pyfunc_model(unet_dir, cfg, recipes=recipes) == "models:/promptseg-unet/1"
    out_dir = tmp_path / "cli"
    args = predict_argv(str(unet_dir), str(photo), out=str(out_dir))
    assert main([*args, "--eval-metrics", str(eval_json)]) == 0
    expected = cv2.imread(str(out_dir / "wall__segment-crack.png"), cv2.IMREAD_UNCHANGED)
    assert expected.shape == (80, 96) and 0.0 < (expected > 0).mean() < 0.5  # neither empty nor full

    port = _free_port()
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": src, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    bin_dir = Path(sys.executable).parent
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen(
        [str(bin_dir / "mlflow"), "models", "serve", "-m", "models:/promptseg-unet/1", "--env-manager", "local"]
        + ["-h", "127.0.0.1", "-p", str(port), "-w", "1"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the uvicorn worker is stopped with it
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline, ready = time.monotonic() + 480, False  # start-up is imports: 20 s quiet, minutes on a starved core
        while time.monotonic() < deadline and server.poll() is None and not ready:
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=5) as answer:
                    ready = answer.status == 200
            except OSError:
                time.sleep(1)
        assert ready, f"the server did not answer /ping: {(tmp_path / 'serve.log').read_text()[-3000:]}"

        image = base64.b64encode(photo.read_bytes()).decode()
        request = {"dataframe_split": {"columns": ["image", "prompt"], "data": [[image, "segment crack"]]}}
        status, answer, seconds = _post(f"{base}/invocations", request)
        assert status == 200, answer
        row = answer["predictions"][0]
        mask = cv2.imdecode(np.frombuffer(base64.b64decode(row["mask"]), np.uint8), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(mask, expected) and row["threshold"] == threshold and "measurements" not in row
        print(f"served /invocations: {seconds * 1000:.0f} ms for one {photo.stat().st_size} byte JPEG")

        status, answer, _ = _post(
            f"{base}/invocations", {**request, "params": {"threshold": 0.0, "measure": True, "mm_per_px": 0.5}}
        )
        assert status == 200, answer
        row = answer["predictions"][0]
        all_on = cv2.imdecode(np.frombuffer(base64.b64decode(row["mask"]), np.uint8), cv2.IMREAD_UNCHANGED)
        assert row["threshold"] == 0.0 and (all_on == 255).all()  # threshold 0: every pixel is on
        measured = json.loads(row["measurements"])
        assert measured["kind"] == "crack" and measured["mm_per_px"] == 0.5 and measured["image"]

        bad = {"dataframe_split": {"columns": ["image", "prompt"], "data": [[base64.b64encode(b"no").decode(), "x"]]}}
        status, answer, _ = _post(f"{base}/invocations", bad)
        assert status == 400 and "row 0: `image` is not a readable image" in answer["message"], answer
        status, answer, _ = _post(f"{base}/invocations", {"dataframe_split": {"columns": ["image"], "data": [[image]]}})
        assert 400 <= status < 500 and "prompt" in answer["message"], answer
        status, _, _ = _post(f"{base}/invocations", request)  # still serving
        assert status == 200 and server.poll() is None
    finally:
        import signal

        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
        log.close()
    time.sleep(0.5)
    with pytest.raises(OSError):  # nothing listens on the port any more
        urllib.request.urlopen(f"{base}/ping", timeout=5)
