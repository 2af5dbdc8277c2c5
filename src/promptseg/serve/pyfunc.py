"""A trained rung as an MLflow pyfunc model, registered as ``promptseg-<rung>`` in the project's MLflow registry.

    import mlflow, pandas as pd
    mlflow.set_tracking_uri("sqlite:///mlflow.db")
    model = mlflow.pyfunc.load_model("models:/promptseg-unet/1")
    out = model.predict(pd.DataFrame({"image": [open("wall.jpg", "rb").read()], "prompt": ["segment crack"]}))
    # out["mask"][0]: PNG bytes of a {0, 255} mask at the image's own size

Input: a DataFrame with ``image`` (the bytes of an encoded image file: PNG, JPEG, ...) and ``prompt`` (text).
Output: a DataFrame with ``mask`` (PNG bytes, {0, 255}, the image's own size) and ``threshold`` (the one used);
with ``params={"measure": True}`` also ``measurements``: :func:`promptseg.measure.measure_mask`'s result as JSON
(kind from the prompt's dataset, as ``promptseg predict --measure``; ``mm_per_px`` for millimetres and the BRE 251
category; the measure settings' defaults, as ``promptseg app``).

The signature (:func:`serving_signature`) lets ``mlflow models serve`` take JSON: binary columns travel as
base64, as MLflow documents it (``{"dataframe_split": {"columns": ["image", "prompt"], "data": [["<base64>",
"segment crack"]]}, "params": {"threshold": 0.4}}``); the response's ``mask`` is base64 too (docs/tracking.md).
A bad request (an unreadable image, an empty prompt, a threshold outside [0, 1]) raises an ``MlflowException``
with ``INVALID_PARAMETER_VALUE``: the server answers 400 with the message and keeps serving.
The masks are the ones ``promptseg predict --model models/<rung>`` writes: the same loader
(:func:`promptseg.infer.torch_engine.load_trained_model`) and the same inference recipe (promptseg.infer.recipe): the model
carries evaluation's recipe per dataset (``metrics/eval/<rung>.json``'s ``<dataset>.recipe``: threshold chosen on
val, open/close, flip TTA, prompt ensemble, tiling, native resolution, precision), and each row runs
:func:`promptseg.infer.recipe.load_recipe` (the recipe of the dataset whose training prompts contain the prompt, else
the defaults with threshold 0.5), :func:`promptseg.infer.recipe.recipe_prompts` and
``Segmenter.masks`` (promptseg.infer.segmenter), as ``predict`` does. ``params={"threshold": t}`` (t in [0, 1])
overrides the threshold like ``--threshold``; the default, -1, keeps the recipe's. An undecodable image is an
error naming its row (nothing is silently dropped).

:func:`log_pyfunc_model` logs the model folder with this wrapper, the recipes, a signature and an input example,
and registers it; the evaluation stage calls it once the recipes are chosen on val.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

import cv2
import numpy as np

from promptseg.images import DEFAULT_MAX_IMAGE_PIXELS, ImageReadError, decode_image_bytes
from promptseg.infer.engines import load_segmenter
from promptseg.infer.recipe import (
    SCORED_MODEL_KEY,
    Recipe,
    check_recipes,
    load_recipe,
    override,
    recipe_prompts,
    scored_model,
)
from promptseg.paths import MODEL_CARD
from promptseg.serve.measure import measure_kind, measure_mask
from promptseg.tracking import connect

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow.pyfunc  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE  # noqa: E402

__all__ = [
    "PromptSegPyfunc",
    "log_pyfunc_model",
    "registered_name",
    "decode_image",
    "encode_mask",
    "serving_signature",
]

MODEL_ARTIFACT, SERVING_ARTIFACT = "model_dir", "serving"
# What the pyfunc environment needs, pinned to the versions installed here (the project's pins, read from the
# installed packages so they cannot drift from requirements.txt); given explicitly so MLflow does not infer
# them by loading the model in a subprocess.
RUNTIME_PACKAGES = ("torch", "transformers", "peft", "opencv-python-headless", "numpy", "pillow", "mlflow", "pandas")


def pip_requirements() -> list[str]:
    """``name==version`` of every runtime package as installed, then ``promptseg`` itself."""

    return [f"{name}=={version(name)}" for name in RUNTIME_PACKAGES] + ["promptseg"]


def registered_name(rung: str) -> str:
    """The registry name of a rung (the same name as its DVC artifact in dvc.yaml)."""
    return f"promptseg-{rung}"


def decode_image(data: bytes, row: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 RGB from an encoded image file's bytes (what :func:`promptseg.images.read_rgb` gives for the
    same file); ValueError naming the row when the bytes are not a readable image."""

    if isinstance(data, str):  # a base64 string (JSON serving input)
        data = base64.b64decode(data)
    try:  # the one decoder: full decoding, EXIF orientation, the pixel cap
        image = decode_image_bytes(bytes(data), f"row {row}", cv2.IMREAD_COLOR, DEFAULT_MAX_IMAGE_PIXELS)
    except ImageReadError as exc:
        raise ValueError(
            f"row {row}: `image` is not a readable image file (PNG, JPEG, ...): {exc.reason}; pass the file's bytes."
        ) from None
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def encode_mask(mask: np.ndarray) -> bytes:
    """PNG bytes of a (H, W) uint8 mask (lossless: decoding gives the same pixels)."""

    ok, buffer = cv2.imencode(".png", mask)
    if not ok:
        raise ValueError("could not encode the mask as PNG")
    return buffer.tobytes()


class PromptSegPyfunc(mlflow.pyfunc.PythonModel):
    """image + prompt in, {0, 255} mask out, through ``promptseg predict``'s inference path."""

    def load_context(self, context) -> None:
        self.trained = load_segmenter(Path(context.artifacts[MODEL_ARTIFACT]), "torch")
        self.serving_path = Path(context.artifacts[SERVING_ARTIFACT])
        self.serving = json.loads(self.serving_path.read_text())
        rung = str(self.trained.card.get("rung") or self.serving.get("rung", ""))
        model_dir = Path(context.artifacts[MODEL_ARTIFACT])  # RecipeError: a field out of range, other weights
        for note in check_recipes(self.trained.card, rung, self.serving_path, model_dir):
            print(note, file=sys.stderr)

    def recipe_for(self, prompt: str, threshold: float | None = None):
        """(recipe, the prompt or ensemble list to run, the threshold) for ``prompt``, as ``promptseg predict``
        resolves them (``threshold``: the ``--threshold`` override, None for the recipe's)."""
        rung = str(self.trained.card.get("rung") or self.serving.get("rung", ""))
        recipe, dataset, _ = load_recipe(self.trained.card, prompt, rung, self.serving_path)
        recipe, _ = override(recipe, threshold=threshold)
        run_prompt, used = recipe_prompts(recipe, self.trained.card, prompt, dataset)
        return recipe, run_prompt, used

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        try:
            request = _read_request(model_input, params or {})
        except ValueError as exc:  # the caller's mistake: a 400 with the message when served
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from exc
        return self._predict(*request)

    def _predict(self, images, prompts, override, measure, mm_per_px) -> pd.DataFrame:

        masks: list = [None] * len(images)
        thresholds: list = [None] * len(images)
        for prompt in dict.fromkeys(prompts):  # one recipe per prompt; batches of its batch_size, rows in order
            recipe, run_prompt, threshold = self.recipe_for(prompt, override)
            rows = [i for i, p in enumerate(prompts) if p == prompt]
            for start in range(0, len(rows), recipe.batch_size):
                chunk = rows[start : start + recipe.batch_size]
                batch = self.trained.masks([images[i] for i in chunk], run_prompt, recipe, threshold=threshold)
                for i, mask in zip(chunk, batch):
                    masks[i], thresholds[i] = mask, threshold
        out = pd.DataFrame({"mask": [encode_mask(m) for m in masks], "threshold": thresholds})
        if measure:
            out["measurements"] = [
                json.dumps(measure_mask(m, kind=measure_kind(self.trained.card, p), mm_per_px=mm_per_px))
                for m, p in zip(masks, prompts)
            ]
        return out


def _read_request(model_input, params: dict) -> tuple:
    """(images, prompts, threshold override or None, measure, mm_per_px or None) from a request; a ValueError
    naming the row or the param for anything the caller must fix."""
    if not isinstance(model_input, pd.DataFrame):
        raise ValueError("input must be a table with the columns `image` and `prompt`")
    missing = {"image", "prompt"} - set(model_input.columns)
    if missing:
        raise ValueError(f"input needs the columns `image` and `prompt`; missing: {', '.join(sorted(missing))}")
    if model_input.empty:
        raise ValueError("input has no rows: send at least one image and prompt")
    images = [decode_image(data, i) for i, data in enumerate(model_input["image"])]
    prompts = [str(p).strip() if p is not None else "" for p in model_input["prompt"]]
    for i, prompt in enumerate(prompts):
        if not prompt:
            raise ValueError(f"row {i}: `prompt` is empty; give a text prompt such as 'segment crack'.")
    override = params.get("threshold")
    override = None if override is None or float(override) < 0 else float(override)  # -1: the val threshold
    if override is not None and override > 1:
        raise ValueError(f"params threshold {override} is outside [0, 1]")
    mm_per_px = params.get("mm_per_px")
    mm_per_px = None if mm_per_px is None or float(mm_per_px) <= 0 else float(mm_per_px)  # -1: pixels only
    return images, prompts, override, bool(params.get("measure", False)), mm_per_px


def serving_signature():
    """Input ``image`` (binary: base64 in JSON) and ``prompt`` (string); params ``threshold`` (-1: the recipe's),
    ``measure`` (False), ``mm_per_px`` (-1: pixels only); output ``mask`` (binary PNG), ``threshold`` and, when
    measured, ``measurements`` (JSON string)."""
    from mlflow.models import ModelSignature  # noqa: PLC0415 (heavy, optional: mlflow)
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema  # noqa: PLC0415 (heavy, optional: mlflow)

    return ModelSignature(
        inputs=Schema([ColSpec("binary", "image"), ColSpec("string", "prompt")]),
        outputs=Schema(
            [
                ColSpec("binary", "mask"),
                ColSpec("double", "threshold"),
                ColSpec("string", "measurements", required=False),
            ]
        ),
        params=ParamSchema(
            [
                ParamSpec("threshold", "double", -1.0),
                ParamSpec("measure", "boolean", False),
                ParamSpec("mm_per_px", "double", -1.0),
            ]
        ),
    )


def _example_image(size: int = 32) -> bytes:
    """A small deterministic wall-like image (a dark diagonal line on grey) as PNG bytes: the input example."""
    image = np.full((size, size, 3), 180, np.uint8)
    idx = np.arange(size)
    image[idx, idx] = 40
    return encode_mask(image)


def log_pyfunc_model(
    model_dir: str | Path,
    mlflow_cfg: dict,
    *,
    recipes: dict[str, dict],
    run_id: str | None = None,
    rung: str | None = None,
) -> str:
    """Log ``models/<rung>`` as a pyfunc model and register it as ``promptseg-<rung>``.

    Args:
        model_dir: the trained model folder (``promptseg predict --model`` reads the same).
        mlflow_cfg: params.yaml ``mlflow`` (``tracking_uri``, ``experiment``).
        recipes: ``{dataset: recipe}``, each metrics/eval/<rung>.json's ``<dataset>.recipe`` (a dict of
            :class:`promptseg.infer.recipe.Recipe`'s fields, or a ``Recipe``); its ``threshold`` is the one chosen on val.
        run_id: the rung's MLflow run (its training run) to log into; None starts a new run.
        rung: the rung's name; default: the model card's ``rung``, else the folder's name.

    Returns the registered model's URI, ``models:/promptseg-<rung>/<version>``.
    """

    model_dir = Path(model_dir)
    if not (model_dir / MODEL_CARD).is_file():
        raise FileNotFoundError(
            f"{model_dir} has no promptseg.json: not a trained model folder (train it first: `dvc repro train@<rung>`)"
        )
    card = json.loads((model_dir / MODEL_CARD).read_text())
    rung = rung or str(card.get("rung") or model_dir.name)

    recipes = {d: (r if isinstance(r, Recipe) else Recipe.from_dict(r)).to_dict() for d, r in recipes.items()}
    mlflow = connect(mlflow_cfg)
    example = pd.DataFrame(
        {
            "image": [_example_image()],
            "prompt": [next(iter((card.get("prompts") or {"cracks": ["segment crack"]}).values()))[0]],
        }
    )
    # params: MLflow fills a missing param with its default, so the default -1.0 means "the val threshold"
    signature = serving_signature()
    with tempfile.TemporaryDirectory() as tmp:
        serving = Path(tmp) / "serving.json"
        serving.write_text(
            json.dumps(
                {  # the layout of metrics/eval/<rung>.json, so promptseg.infer.recipe.load_recipe reads it
                    "rung": rung,
                    SCORED_MODEL_KEY: scored_model(model_dir, rung),  # load_context checks the weights match
                    **{d: {"threshold": float(r["threshold"]), "recipe": r} for d, r in recipes.items()},
                },
                indent=2,
            )
        )
        with mlflow.start_run(run_id=run_id, run_name=None if run_id else rung):
            info = mlflow.pyfunc.log_model(
                name="pyfunc_model",
                python_model=PromptSegPyfunc(),
                artifacts={MODEL_ARTIFACT: str(model_dir), SERVING_ARTIFACT: str(serving)},
                signature=signature,
                input_example=example,
                pip_requirements=pip_requirements(),
                registered_model_name=registered_name(rung),
            )
    return f"models:/{registered_name(rung)}/{info.registered_model_version}"
