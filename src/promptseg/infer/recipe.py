"""The inference recipe: how a model turns an image and a prompt into a mask, as evaluation scored it.

Evaluation writes one recipe per dataset into ``metrics/eval/<rung>.json`` (``<dataset>.recipe``,
beside the threshold it chose on val; the file is an output of ``evaluate@<rung>``, the model folder
is not touched). ``promptseg predict`` (torch and ONNX engines), ``promptseg measure`` through
``predict --measure``, and ``promptseg app`` read that one recipe for the prompt's dataset; a CLI flag
overrides a field and the output says which.

Fields: ``threshold`` (chosen on val), ``morphology`` and ``kernel`` (open/close), ``boxes`` (each region
filled to its bounding box, the labels' shape for box-annotated datasets; ``infer.mask_shape``) and ``strip_length``
(with boxes: each horizontal and vertical strip boxed on its own, ``infer.mask_shape: strips``), ``hflip_tta`` (logits
averaged with the mirrored image's), ``prompt_ensemble`` (logits averaged over the dataset's prompts,
thresholded at ``ensemble_threshold``; evaluation's per-prompt masks are single-prompt), ``tiled`` with
``tile_upscale`` and ``tile_overlap`` (promptseg.infer.tiling), and ``batch_size``.
"""

from __future__ import annotations

import hashlib
import json
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from promptseg.metrics import postprocess_probabilities
from promptseg.params import ParamsError
from promptseg.settings import (
    MASK_SHAPES,
    InferSettings,
    PositiveInt,
    Share,
    Threshold,
    TilingSettings,
    check_value,
)

__all__ = ["FALLBACK_THRESHOLD", "RECIPE_FILENAME", "Recipe", "load_recipe", "override", "recipe_prompts"]

FALLBACK_THRESHOLD = 0.5
RECIPE_FILENAME = "recipe.json"  # written by `promptseg export` beside model.onnx: the recipes travel with it


def copy_recipes(eval_path: Path, out_dir: Path) -> Path | None:
    """``out_dir/recipe.json``: each dataset's threshold and recipe from ``eval_path`` (None if it has none)."""
    try:
        data = json.loads(Path(eval_path).read_text())
    except (OSError, ValueError):
        return None
    keep = {
        d: {"threshold": e["threshold"], **({"recipe": e["recipe"]} if "recipe" in e else {})}
        for d, e in data.items()
        if isinstance(e, dict) and "threshold" in e
    }
    if not keep:
        return None
    if isinstance(data.get(SCORED_MODEL_KEY), dict):
        keep[SCORED_MODEL_KEY] = data[SCORED_MODEL_KEY]
    target = Path(out_dir) / RECIPE_FILENAME
    target.write_text(json.dumps({**keep, "copied_from": str(eval_path)}, indent=2) + "\n")
    return target


def recipe_file(eval_path: Path, export_dir: Path | None) -> Path:
    """``eval_path`` if it exists, else the ``recipe.json`` an ONNX export carries (its ``export_dir``)."""
    if not Path(eval_path).exists() and export_dir is not None and (Path(export_dir) / RECIPE_FILENAME).exists():
        return Path(export_dir) / RECIPE_FILENAME
    return Path(eval_path)


def _option(default, help: str, flag: str | None = None, **cli):
    """A recipe field: its default and the ``promptseg predict`` flag generated from it (promptseg.serve.cli):
    ``help``; ``flag`` when it is not ``--<field-name>``; ``cli`` extra argparse settings (``choices``,
    ``kind``: probability | positive_int | positive_float); ``help=""``: no flag."""
    return field(default=default, metadata={"help": help, "flag": flag, **cli})


@dataclass(frozen=True)
class Recipe:
    """How a model turns a photo and a prompt into a mask: declared once here, filled from ``params.yaml: infer``
    (:meth:`from_settings`) and the val threshold, recorded per dataset in ``metrics/eval/<rung>.json``, and
    followed by every caller through ``promptseg.infer.segmenter.Segmenter``. The fields' order is the JSON's."""

    threshold: float = _option(
        FALLBACK_THRESHOLD,
        "probability threshold in [0, 1]; default: the one chosen on val for the prompt's dataset "
        "(metrics/eval/<rung>.json), else 0.5",
        kind="probability",
    )
    morphology: bool = _option(True, "opening/closing (--no-morphology keeps 1-px structures)")
    kernel: int = _option(3, "opening/closing kernel side", flag="--kernel-size", kind="positive_int")
    boxes: bool = _option(
        False,
        "each region of the mask filled to its bounding box (the drywall labels are boxes; evaluation decides "
        "per dataset on val: infer.mask_shape)",
    )
    strip_length: float = _option(
        0.0,
        "with --boxes: each horizontal and vertical strip at least this share of the shorter side long boxed on its "
        "own, as joints are labelled one box each (0: each region whole; infer.mask_shape: strips)",
        kind="probability",
    )
    hflip_tta: bool = _option(False, "average with the mirrored image")
    prompt_ensemble: bool = _option(False, "average the logits over the prompt's dataset's prompts")
    ensemble_threshold: float | None = _option(None, "")  # chosen on val for the ensemble; no flag
    tiled: bool = _option(False, "sliding-window inference at the image's resolution")
    tile_upscale: float = _option(1.0, "tiled: resize factor of the photo before tiling", kind="positive_float")
    tile_overlap: float = _option(0.25, "tiled: fraction of a tile shared by neighbours, in [0, 1)", kind="probability")
    batch_size: int = _option(16, "images (tiles when tiled) per forward pass", kind="positive_int")
    native_resolution: bool = _option(False, "U-Net: the whole photo at its own size, no resize and no tiles")
    precision: str = _option(
        "fp32",
        "torch engine: bf16 autocast is faster on CPUs with AVX512-BF16/AMX (masks may differ slightly); auto: "
        "bf16 on CUDA and on such CPUs",
        choices=("auto", "fp32", "bf16"),
    )

    @classmethod
    def from_settings(
        cls,
        infer: InferSettings,
        dataset: str,
        threshold: float = FALLBACK_THRESHOLD,
        ensemble_threshold=None,
        shape: str | None = None,
    ) -> Recipe:
        """The recipe ``params.yaml: infer`` gives ``dataset``, with the threshold chosen on val; ``shape``: the mask
        shape chosen on val, pixels | boxes | strips (None: what ``infer.mask_shape`` says for the dataset, pixels
        for ``choose_on_val``)."""
        shape = infer.mask_shape.get(dataset, "pixels") if shape is None else shape
        plain = cls(
            threshold=float(threshold),
            morphology=bool(infer.morphology.enabled),
            kernel=int(infer.morphology.kernel),
            hflip_tta=bool(infer.hflip_tta),
            prompt_ensemble=bool(infer.prompt_ensemble),
            ensemble_threshold=None if ensemble_threshold is None else float(ensemble_threshold),
            tiled=bool(infer.tiled.get(dataset, False)),
            tile_upscale=float(infer.tiling.upscale),
            tile_overlap=float(infer.tiling.overlap),
            batch_size=int(infer.batch_size),
            native_resolution=bool(infer.native_resolution.get(dataset, False)),
            precision=str(infer.precision),
        )
        return plain.shaped("pixels" if shape == "choose_on_val" else shape, infer.strip_length)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def mask_shape(self) -> str:
        """pixels | boxes | strips: what :meth:`mask` draws (``infer.mask_shape``'s names)."""
        return ("strips" if self.strip_length > 0 else "boxes") if self.boxes else "pixels"

    def shaped(self, shape: str, strip_length: float) -> Recipe:
        """This recipe drawing ``shape`` (pixels | boxes | strips; ``strip_length`` used by strips)."""
        if shape not in MASK_SHAPES:
            raise ValueError(f"unknown mask shape {shape!r}: use {', '.join(MASK_SHAPES)}")
        return replace(self, boxes=shape != "pixels", strip_length=float(strip_length) if shape == "strips" else 0.0)

    def mask(self, probs, threshold: float | None = None):
        """The ``uint8`` ``{0, 255}`` mask of one ``(H, W)`` probability map: ``threshold`` (default: the recipe's),
        open/close, boxes or strips (``promptseg.metrics.postprocess_probabilities``)."""
        return postprocess_probabilities(
            probs,
            self.threshold if threshold is None else threshold,
            morphology=self.morphology,
            kernel_size=self.kernel,
            boxes=self.boxes,
            strip_length=self.strip_length,
        )

    @classmethod
    def from_dict(cls, data: dict, where: str = "recipe") -> Recipe:
        """The recipe in ``data``, each field checked against the range its params key allows
        (:func:`_recipe_types`); :class:`RecipeError` naming ``where`` and the field otherwise."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: check_recipe_field(k, v, where) for k, v in data.items() if k in known})

    def describe(self) -> str:
        parts = [
            f"threshold {self.threshold:g}",
            f"morphology {'open/close k=' + str(self.kernel) if self.morphology else 'off'}",
            f"boxes {'on' if self.boxes else 'off'}"
            + (
                f" (strips of at least {self.strip_length:g} of the shorter side)"
                if self.boxes and self.strip_length
                else ""
            ),
            f"flip TTA {'on' if self.hflip_tta else 'off'}",
            f"prompt ensemble {'on' if self.prompt_ensemble else 'off'}",
            (f"tiled on (upscale {self.tile_upscale:g}, overlap {self.tile_overlap:g})" if self.tiled else "tiled off"),
            f"native resolution {'on' if self.native_resolution else 'off'}",
            f"precision {self.precision}",
        ]
        return ", ".join(parts)


class RecipeError(ValueError):
    """A recipe file holds a value its params key would refuse (one line naming the file and the field)."""


def _recipe_types() -> dict:
    """Each recipe field's type and range: the params key it comes from (promptseg.settings)."""
    infer, tiling = (typing.get_type_hints(c, include_extras=True) for c in (InferSettings, TilingSettings))
    return {
        "threshold": Threshold,  # one of infer.threshold_grid
        "morphology": bool,
        "kernel": PositiveInt,  # infer.morphology.kernel
        "boxes": bool,  # infer.mask_shape, decided on val
        "strip_length": Share,  # infer.strip_length where infer.mask_shape chose strips, else 0
        "hflip_tta": bool,
        "prompt_ensemble": bool,
        "ensemble_threshold": Threshold | None,
        "tiled": bool,
        "tile_upscale": tiling["upscale"],
        "tile_overlap": tiling["overlap"],
        "batch_size": infer["batch_size"],
        "native_resolution": bool,
        "precision": infer["precision"],
    }


def check_recipe_field(name: str, value, where: str = "recipe"):
    """``value`` if the recipe field ``name`` may hold it (the ranges of promptseg.settings), else RecipeError."""
    try:
        return check_value(_recipe_types()[name], value, f"{where}.{name}")
    except ParamsError as exc:
        raise RecipeError(str(exc)) from None


def prompt_dataset(card: dict, prompt: str) -> str | None:
    prompts = card.get("prompts") if isinstance(card, dict) else None
    if not isinstance(prompts, dict):
        return None
    return next((name for name, ps in prompts.items() if isinstance(ps, list) and prompt in ps), None)


def load_recipe(card: dict, prompt: str, rung: str, eval_path: Path) -> tuple[Recipe, str | None, str]:
    """(recipe, dataset or None, why) for ``prompt``: the recipe evaluation wrote for the dataset whose
    training prompts contain it, else the defaults (threshold 0.5) with the reason."""
    prompts = card.get("prompts") if isinstance(card, dict) else None
    if not isinstance(prompts, dict) or not prompts:
        return (
            Recipe(),
            None,
            ("the default recipe, because the model folder has no promptseg.json listing its training prompts"),
        )
    dataset = prompt_dataset(card, prompt)
    if dataset is None:
        known = "; ".join(f"{name}: {', '.join(repr(p) for p in ps)}" for name, ps in prompts.items())
        return (
            Recipe(),
            None,
            (
                f"the default recipe (threshold {FALLBACK_THRESHOLD} is the fallback), because "
                f"{prompt!r} is not one of the model's training prompts ({known})"
            ),
        )
    if not Path(eval_path).exists():
        return (
            Recipe(),
            dataset,
            (
                f"the default recipe, because {eval_path} was not found (evaluate the rung "
                f"{rung!r} to get a tuned threshold)"
            ),
        )
    try:
        entry = json.loads(Path(eval_path).read_text())[dataset]
        threshold = float(entry["threshold"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return (
            Recipe(),
            dataset,
            (
                f"the default recipe, because {eval_path} has no usable threshold for {dataset} "
                f"({type(exc).__name__}: {exc})"
            ),
        )
    threshold = check_recipe_field("threshold", threshold, f"{eval_path}: {dataset}")
    if isinstance(entry.get("recipe"), dict):
        return (
            Recipe.from_dict(entry["recipe"], where=f"{eval_path}: {dataset}.recipe"),
            dataset,
            f"evaluation's recipe for dataset {dataset!r} ({eval_path}), its threshold chosen on val",
        )
    return (
        Recipe(threshold=threshold),
        dataset,
        (
            f"chosen on val for dataset {dataset!r} ({eval_path}); "
            "that file records no recipe (evaluated before recipes were "
            "recorded): the other fields are the defaults"
        ),
    )


def check_recipes(
    card: dict, rung: str, eval_path: Path, model_dir: Path | None = None, warn_only: bool = False
) -> list[str]:
    """Every dataset's recipe in ``eval_path`` loaded and checked once, when a model is loaded (predict, the
    app, the pyfunc model): :class:`RecipeError` naming the file and the field if one is out of range, or if
    the file was scored on other weights than ``model_dir``'s (:func:`check_scored_model`). Returns the notes
    to print (a mismatch with ``warn_only``, a file too old to say which weights it scored)."""
    prompts = card.get("prompts") if isinstance(card, dict) else None
    for dataset_prompts in (prompts or {}).values() if isinstance(prompts, dict) else ():
        if isinstance(dataset_prompts, list) and dataset_prompts:
            load_recipe(card, dataset_prompts[0], rung, eval_path)
    return check_scored_model(eval_path, model_dir, rung, warn_only) if model_dir is not None else []


SCORED_MODEL_KEY = "scored_model"  # metrics/eval/<rung>.json: {"rung", "weights_sha256"} of the weights scored
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def weights_sha256(model_dir: Path) -> str | None:
    """sha256 over a model folder's weight files (top level, sorted by name: each name, then its bytes); None
    if it holds none (an ONNX export folder on its own)."""
    files = sorted(p for p in Path(model_dir).iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def scored_model(model_dir: Path, rung: str) -> dict:
    """What an evaluation records about the model it scored (``<eval json>[SCORED_MODEL_KEY]``)."""
    return {"rung": rung, "weights_sha256": weights_sha256(model_dir)}


def check_scored_model(eval_path: Path, model_dir: Path, rung: str, warn_only: bool = False) -> list[str]:
    """RecipeError (a note with ``warn_only``) when ``eval_path`` records other weights, or another rung, than
    ``model_dir`` / ``rung``: its threshold was chosen for another model. Notes when it cannot tell."""
    try:
        recorded = json.loads(Path(eval_path).read_text()).get(SCORED_MODEL_KEY)
    except (OSError, ValueError, AttributeError):
        return []  # no recipe file (the defaults are used, and said so)
    if not isinstance(recorded, dict):
        return [f"note: {eval_path} does not record the weights it scored (evaluated before it did): not checked"]
    mine = weights_sha256(model_dir)
    problem = None
    if recorded.get("rung") != rung:
        problem = f"was scored on rung {recorded.get('rung')!r}, and {model_dir} is rung {rung!r}"
    elif mine is not None and recorded.get("weights_sha256") != mine:
        problem = (
            f"was scored on weights with sha256 {str(recorded.get('weights_sha256'))[:12]}..., and {model_dir} "
            f"holds {mine[:12]}... (retrained since?)"
        )
    if problem is None:
        return []
    text = f"{eval_path} {problem}: its threshold and recipe were chosen for another model"
    if warn_only:
        return [f"warning: {text}; used anyway (--warn-recipe-mismatch)"]
    raise RecipeError(
        f"{text}; re-run `dvc repro evaluate@{rung}`, pass --eval-metrics with this model's file, or "
        "--warn-recipe-mismatch to use it anyway"
    )


def override(recipe: Recipe, **flags) -> tuple[Recipe, list[str]]:
    """``recipe`` with every flag that is not None replacing its field; also the list 'field value' changed."""
    changes = {k: v for k, v in flags.items() if v is not None}
    unknown = set(changes) - {f.name for f in fields(Recipe)}
    if unknown:
        raise ValueError(f"unknown recipe field(s): {', '.join(sorted(unknown))}")
    said = [f"{k} {v}" for k, v in changes.items() if getattr(recipe, k) != v]
    return replace(recipe, **changes), said


def recipe_prompts(recipe: Recipe, card: dict, prompt: str, dataset: str | None):
    """(the prompt or the prompt list to run, the threshold for it): the dataset's prompts and the ensemble
    threshold when the recipe says prompt_ensemble and the prompt is one of a dataset's."""
    if recipe.prompt_ensemble and dataset is not None:
        return list(card["prompts"][dataset]), float(
            recipe.ensemble_threshold if recipe.ensemble_threshold is not None else recipe.threshold
        )
    return prompt, float(recipe.threshold)
