"""Latency of the registered pyfunc model served by `mlflow models serve`: one photo per POST, base64 JSON.

    .venv/bin/python benchmarks/serve_latency.py [--model models/unet] [--photo wall.jpg] [--repeats 9]

Logs ``--model`` (default models/unet; without it an UNTRAINED U-Net of params.yaml's shape, the same cost)
as a pyfunc model into a temporary sqlite store, starts ``mlflow models serve --env-manager local`` on
127.0.0.1 and a free port (1 worker, OMP_NUM_THREADS=--threads), POSTs ``--photo`` (default: a synthetic
640 x 640 JPEG) ``--repeats`` times after one warm-up, and prints the median and max wall time per request
from the client's side, beside the same model's in-process ``pyfunc.predict`` on the same bytes (the gap is
HTTP, JSON and base64). The server is stopped at the end.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))


def post(url: str, body: bytes) -> float:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as answer:
        json.loads(answer.read())
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--photo", default=None)
    parser.add_argument("--prompt", default="segment crack")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import cv2
    import numpy as np
    import pandas as pd

    from promptseg.infer.recipe import Recipe
    from promptseg.serve.pyfunc import log_pyfunc_model

    tmp = Path(tempfile.mkdtemp(prefix="serve-latency-"))
    model = Path(args.model) if args.model else REPO / "models" / "unet"
    if not model.is_dir():
        from app_latency import untrained_unet

        model = untrained_unet(yaml.safe_load((REPO / "params.yaml").read_text()), tmp / "unet")
    if args.photo:
        photo = Path(args.photo)
    else:
        from promptseg.ingest.synthetic import render_wall_sample

        photo = tmp / "wall.jpg"
        cv2.imwrite(str(photo), render_wall_sample("cracks", np.random.default_rng(0), 640).image)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    cfg = {"tracking_uri": uri, "experiment": "serve-latency", "artifact_root": str(tmp / "mlartifacts")}
    recipes = {d: Recipe().to_dict() for d in ("cracks", "drywall")}
    model_uri = log_pyfunc_model(model, cfg, recipes=recipes)

    import mlflow

    loaded = mlflow.pyfunc.load_model(model_uri)
    frame = pd.DataFrame({"image": [photo.read_bytes()], "prompt": [args.prompt]})
    local = []
    for i in range(args.repeats + 1):
        started = time.perf_counter()
        loaded.predict(frame)
        if i:
            local.append(time.perf_counter() - started)

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": str(args.threads)}
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local"]
        + ["-h", "127.0.0.1", "-p", str(port), "-w", "1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        started = time.perf_counter()
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5):
                    break
            except OSError:
                if server.poll() is not None or time.perf_counter() - started > 180:
                    raise SystemExit("the server did not start") from None
                time.sleep(0.5)
        startup = time.perf_counter() - started
        body = json.dumps(
            {
                "dataframe_split": {
                    "columns": ["image", "prompt"],
                    "data": [[base64.b64encode(photo.read_bytes()).decode(), args.prompt]],
                }
            }
        ).encode()
        served = [post(f"http://127.0.0.1:{port}/invocations", body) for _ in range(args.repeats + 1)][1:]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    height, width = cv2.imread(str(photo)).shape[:2]
    report = {
        "model": str(model),
        "photo": f"{photo.name}: {width}x{height}, {photo.stat().st_size} bytes",
        "threads": args.threads,
        "server_start_s": round(startup, 1),
        "served_median_s": round(statistics.median(served), 3),
        "served_max_s": round(max(served), 3),
        "in_process_median_s": round(statistics.median(local), 3),
    }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
