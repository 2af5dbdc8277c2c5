"""The inference recipe: how a model turns an image and a prompt into a mask, as evaluation scored it.

Evaluation writes one recipe per dataset into ``metrics/eval/<rung>.json`` (``<dataset>.recipe``,
beside the threshold it chose on val; the file is an output of ``evaluate@<rung>``, the model folder
is not touched). ``promptseg predict`` (torch and ONNX engines), ``promptseg measure`` through
``predict --measure``, and ``promptseg app`` read that one recipe for the prompt's dataset; a CLI flag
overrides a field and the output says which.

Fields: ``threshold`` (chosen on val), ``morphology`` and ``kernel`` (open/close), ``hflip_tta`` (logits
averaged with the mirrored image's), ``prompt_ensemble`` (logits averaged over the dataset's prompts,
thresholded at ``ensemble_threshold``; evaluation's per-prompt masks are single-prompt), ``tiled`` with
``tile_upscale`` and ``tile_overlap`` (promptseg.infer.tiling), and ``batch_size``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

__all__ = [
    "FALLBACK_THRESHOLD",
    "Recipe",
    "load_recipe",
    "override",
    "predict_masks_with_recipe",
    "recipe_from_eval_config",
]

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
    target = Path(out_dir) / RECIPE_FILENAME
    target.write_text(json.dumps({**keep, "copied_from": str(eval_path)}, indent=2) + "\n")
    return target


def recipe_file(eval_path: Path, engine) -> Path:
    """``eval_path`` if it exists, else the ``recipe.json`` an ONNX export carries (``engine.export_dir``)."""
    export_dir = getattr(engine, "export_dir", None)
    if not Path(eval_path).exists() and export_dir is not None and (Path(export_dir) / RECIPE_FILENAME).exists():
        return Path(export_dir) / RECIPE_FILENAME
    return Path(eval_path)


@dataclass(frozen=True)
class Recipe:
    threshold: float = FALLBACK_THRESHOLD
    morphology: bool = True
    kernel: int = 3
    hflip_tta: bool = False
    prompt_ensemble: bool = False
    ensemble_threshold: float | None = None
    tiled: bool = False
    tile_upscale: float = 1.0
    tile_overlap: float = 0.25
    batch_size: int = 16
    native_resolution: bool = False  # U-Net: the whole photo at its own size (promptseg.infer.native), before tiling
    precision: str = "fp32"  # the forward's precision on the torch engine (infer.precision)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Recipe:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def describe(self) -> str:
        parts = [
            f"threshold {self.threshold:g}",
            f"morphology {'open/close k=' + str(self.kernel) if self.morphology else 'off'}",
            f"flip TTA {'on' if self.hflip_tta else 'off'}",
            f"prompt ensemble {'on' if self.prompt_ensemble else 'off'}",
            (f"tiled on (upscale {self.tile_upscale:g}, overlap {self.tile_overlap:g})" if self.tiled else "tiled off"),
            f"native resolution {'on' if self.native_resolution else 'off'}",
            f"precision {self.precision}",
        ]
        return ", ".join(parts)


def recipe_from_eval_config(
    cfg, dataset: str, threshold: float, ensemble_threshold: float | None = None, precision: str = "fp32"
) -> dict:
    """The recipe evaluation scored ``dataset`` with (``cfg``: promptseg.score.evaluate.EvalConfig; ``precision``: the
    model's ``infer.precision``), as a dict."""
    return Recipe(
        threshold=float(threshold),
        morphology=bool(cfg.morphology),
        kernel=int(cfg.kernel_size),
        hflip_tta=bool(cfg.hflip_tta),
        prompt_ensemble=bool(cfg.prompt_ensemble),
        ensemble_threshold=None if ensemble_threshold is None else float(ensemble_threshold),
        tiled=bool(cfg.tiled.get(dataset, False)),
        tile_upscale=float(cfg.tile_upscale),
        tile_overlap=float(cfg.tile_overlap),
        batch_size=int(cfg.batch_size),
        native_resolution=bool(cfg.native_resolution.get(dataset, False)),
        precision=str(precision),
    ).to_dict()


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
    if isinstance(entry.get("recipe"), dict):
        return Recipe.from_dict(entry["recipe"]), dataset, f"evaluation's recipe for dataset {dataset!r} ({eval_path})"
    return (
        Recipe(threshold=threshold),
        dataset,
        (
            f"threshold chosen on val for dataset {dataset!r} ({eval_path}); "
            "that file records no recipe (evaluated before recipes were "
            "recorded): the other fields are the defaults"
        ),
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


def onnx_cannot_run(engine, recipe: Recipe) -> bool:
    """Whether ``engine`` is an ONNX export that cannot follow ``recipe``: a U-Net export (traced at one input
    size) asked to run each photo at its own size. A CLIPSeg resizes on the torch engine too (as evaluation
    did), so its export follows such a recipe; a tiled recipe runs on both engines."""
    return hasattr(engine, "session") and recipe.native_resolution and engine.model_type != "clipseg"


def predict_probabilities_with_recipe(engine, images: list[np.ndarray], prompt, recipe: Recipe) -> list[np.ndarray]:
    """Probabilities for ``images`` with ``prompt`` (a string or an ensemble list) the way ``recipe`` says,
    on a torch ``TrainedModel`` or an ``OnnxSegmenter``: single pass or tiled (both engines), at each photo's
    own size (torch only: the export is traced at one size), flip TTA or not."""
    from promptseg.infer.tiling import predict_probabilities_tiled

    prompts = [prompt] * len(images)
    tiled = {"upscale": recipe.tile_upscale, "overlap": recipe.tile_overlap, "batch_size": recipe.batch_size}
    if hasattr(engine, "session"):  # OnnxSegmenter
        if onnx_cannot_run(engine, recipe):
            raise ValueError(
                "this recipe runs the U-Net on each photo at its own size, which runs on the torch engine: use "
                "--engine torch, or --no-native-resolution to run the ONNX engine at the export's size (not the "
                "recipe evaluation scored)"
            )
        if recipe.tiled:  # tiles of the export's size: the session runs on each batch of tiles
            return predict_probabilities_tiled(engine, images, prompts, hflip_tta=recipe.hflip_tta, **tiled)
        return engine.predict_probabilities(images, prompts, batch_size=recipe.batch_size, hflip_tta=recipe.hflip_tta)
    trained = getattr(engine, "trained", engine)
    trained.precision = recipe.precision  # infer.precision as evaluated, or --precision
    from promptseg.infer.native import predict_probabilities_native, supports_native_resolution

    if recipe.native_resolution and supports_native_resolution(trained):  # as evaluation: before tiling
        return predict_probabilities_native(
            trained, images, prompts, batch_size=recipe.batch_size, hflip_tta=recipe.hflip_tta
        )
    if recipe.tiled:
        return predict_probabilities_tiled(trained, images, prompts, hflip_tta=recipe.hflip_tta, **tiled)
    from promptseg.infer.torch_engine import predict_probabilities

    return predict_probabilities(trained, images, prompts, batch_size=recipe.batch_size, hflip_tta=recipe.hflip_tta)


def predict_masks_with_recipe(
    engine, images: list[np.ndarray], prompt, recipe: Recipe, threshold: float | None = None
) -> list[np.ndarray]:
    """{0,255} masks: :func:`predict_probabilities_with_recipe`, then threshold (``threshold`` or the
    recipe's) and the recipe's open/close (promptseg.infer.torch_engine.postprocess_probabilities)."""
    from promptseg.infer.torch_engine import postprocess_probabilities

    t = recipe.threshold if threshold is None else threshold
    return [
        postprocess_probabilities(p, t, morphology=recipe.morphology, kernel_size=recipe.kernel)
        for p in predict_probabilities_with_recipe(engine, images, prompt, recipe)
    ]
