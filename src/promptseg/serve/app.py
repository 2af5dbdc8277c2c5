"""`promptseg app --model models/<rung>`: a Gradio page to segment, measure and download on your own photos.

Upload a photo (or pick a test image), choose a preset prompt or type one, move the threshold (it starts at
the recipe's val threshold for the prompt's dataset; an unseen prompt says its threshold is the fallback),
set the overlay opacity and, for measurements in mm and the BRE Digest 251 category, the scale. Outputs:
the overlay, the mask, the measurements table and a summary; the mask PNG and the measurements JSON to
download. Masks come from the same Segmenter and recipe as ``promptseg predict`` (promptseg.infer), so the app's
mask equals predict's for the same engine and threshold (tests/test_app_browser.py checks it in Chromium).
Bound to 127.0.0.1 unless ``--host`` says otherwise. A bad upload gives a message on the page; the app
keeps serving.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2

from promptseg.images import DEFAULT_MAX_IMAGE_PIXELS, IMAGE_SUFFIXES, TOO_LARGE, read_rgb
from promptseg.infer.engines import load_segmenter
from promptseg.infer.recipe import check_recipes, load_recipe, override, recipe_file, recipe_prompts
from promptseg.infer.segmenter import Segmenter
from promptseg.paths import eval_json, mask_name, processed_dir
from promptseg.serve.measure import draw_measurements, measure_kind, measure_mask

__all__ = ["AppModel", "build_app", "launch", "segment"]

TABLE_COLUMNS = ["#", "length", "mean width", "max width", "orientation (deg)", "area (px)", "BRE 251 / class"]


@dataclass
class AppModel:
    engine: Segmenter
    engine_name: str
    card: dict
    rung: str
    eval_path: Path
    model_dir: Path
    test_images: list[Path]
    torch_fallback: bool = False  # engine auto chose ONNX: a recipe only torch runs switches to torch (engine_for)
    _torch_engine: Segmenter | None = None

    def engine_for(self, recipe) -> tuple[Segmenter, str]:
        """(engine, name) that runs ``recipe``: the chosen one, or, with ``torch_fallback``, PyTorch (loaded once)
        for a U-Net recipe at each photo's own size, which the ONNX export (traced at one size) cannot run."""
        if not (self.torch_fallback and self.engine.cannot_follow(recipe)):
            return self.engine, self.engine_name
        if self._torch_engine is None:
            self._torch_engine = load_segmenter(self.model_dir, "torch")
        return self._torch_engine, "torch"

    @property
    def presets(self) -> list[str]:
        prompts = self.card.get("prompts") or {}
        return [p for ps in prompts.values() if isinstance(ps, list) for p in ps]


def load_app_model(
    model_dir: str | Path,
    *,
    engine: str = "auto",
    eval_path: str | Path | None = None,
    images: str | Path | None = None,
    threads: int | None = None,
    warn_recipe_mismatch: bool = False,
) -> AppModel:
    """The model (ONNX export where one exists and ``engine`` is auto or onnx, else PyTorch), its recipe file
    and the test images offered in the page (``images``, else data/processed/<dataset>/test/images)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(
            f"model folder {model_dir} not found: train it first (`dvc repro train`) or pass "
            "--model with a trained model folder (e.g. models/unet)"
        )
    chosen = load_segmenter(model_dir, engine, threads=threads)
    card = dict(chosen.card)
    rung = str(card.get("rung") or model_dir.name)
    eval_path = recipe_file(Path(eval_path) if eval_path else eval_json(rung), chosen.export_dir)
    for note in check_recipes(card, rung, eval_path, model_dir, warn_recipe_mismatch):  # RecipeError: a ValueError
        print(note)
    folders = [Path(images)] if images else [processed_dir(d) / "test" / "images" for d in (card.get("prompts") or {})]
    test_images = sorted(p for f in folders if f.is_dir() for p in f.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return AppModel(
        chosen, chosen.engine, card, rung, eval_path, model_dir, test_images, torch_fallback=engine == "auto"
    )


def recipe_for(app: AppModel, prompt: str):
    """(recipe, dataset, message) for a prompt; the message says where the threshold comes from."""
    recipe, dataset, why = load_recipe(app.card, prompt, app.rung, app.eval_path)
    return recipe, dataset, f"threshold {recipe.threshold:g}: {why}"


def segment(
    app: AppModel,
    image_path: str | None,
    prompt: str,
    threshold: float,
    opacity: float,
    mm_per_px: float | None,
    out_dir: Path,
) -> dict:
    """Everything the page shows for one request; ``{"error": message}`` for a bad request."""
    prompt = (prompt or "").strip()
    if not image_path:
        return {"error": "Upload a photo or pick a test image first."}
    if not prompt:
        return {"error": 'Type a prompt, e.g. "segment crack".'}
    try:
        rgb = read_rgb(Path(image_path), DEFAULT_MAX_IMAGE_PIXELS)
    except (ValueError, OSError) as exc:
        if getattr(exc, "kind", None) == TOO_LARGE:
            return {"error": f"{Path(image_path).name}: {exc.reason}"}
        return {
            "error": f"Could not read {Path(image_path).name} as an image (corrupt, or not an image file). "
            "Upload a JPEG or PNG photo."
        }
    started = time.perf_counter()
    recipe, dataset, why = recipe_for(app, prompt)
    recipe, changed = override(recipe, threshold=float(threshold))
    run_prompt, t = recipe_prompts(recipe, app.card, prompt, dataset)
    engine, engine_name = app.engine_for(recipe)
    try:
        mask = engine.masks([rgb], run_prompt, recipe, threshold=t)[0]
    except ValueError as exc:
        return {"error": str(exc)}
    predicted = time.perf_counter()
    kind = measure_kind(app.card, prompt)
    scale = float(mm_per_px) if mm_per_px else None
    result = measure_mask(mask, kind=kind, mm_per_px=scale)
    measured = time.perf_counter()
    seconds = time.perf_counter() - started
    mask_path, json_path = _write_request_files(out_dir, image_path, prompt, mask, recipe, engine_name, result)
    overlay = draw_measurements(rgb, mask, result, alpha=float(opacity))
    unit = "mm" if scale else "px"
    lines = _summary_lines(result, kind, unit)
    lines.append(why + (f" (slider: threshold {float(threshold):g})" if changed else ""))
    lines.extend(f"note: {n}" for n in result["notes"])
    fell_back = (
        " (the recipe runs the photo at its own size, which the ONNX export cannot)" if engine is not app.engine else ""
    )
    lines.append(f"engine {engine_name}{fell_back}, {seconds * 1000:.0f} ms")
    return {
        "overlay": overlay,
        "mask": mask,
        "rows": _table_rows(result, unit),
        "summary": "\n\n".join(lines),
        "mask_path": str(mask_path),
        "json_path": str(json_path),
        "seconds": seconds,
        "seconds_predict": predicted - started,
        "seconds_measure": measured - predicted,
        "lit_share": float((mask > 0).mean()),
        "measurements": result,
    }


def _write_request_files(out_dir: Path, image_path, prompt: str, mask, recipe, engine_name: str, result: dict):
    """``<stem>__<prompt slug>.png`` (the mask) and ``..._measurements.json`` in ``out_dir``: their paths."""

    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(image_path).stem
    mask_path = out_dir / mask_name(stem, prompt)
    cv2.imwrite(str(mask_path), mask)
    json_path = out_dir / mask_name(stem, prompt, "_measurements", ext=".json")
    json_path.write_text(
        json.dumps(
            {
                "image": Path(image_path).name,
                "prompt": prompt,
                "recipe": recipe.to_dict(),
                "engine": engine_name,
                "measurements": result,
            },
            indent=1,
        )
        + "\n"
    )
    return mask_path, json_path


def _table_rows(result: dict, unit: str) -> list[list]:
    """One row of :data:`TABLE_COLUMNS` per measured component, lengths and widths in ``unit``."""
    rows = []
    for c in result["components"]:
        length, mean_w, max_w = (c[f"{k}_{unit}"] for k in ("length", "mean_width", "max_width"))
        extra = c.get("bre_251_category", c.get("orientation", ""))
        rows.append(
            [c["id"], round(length, 2), round(mean_w, 2), round(max_w, 2), c["orientation_deg"], c["area_px"], extra]
        )
    return rows


def _summary_lines(result: dict, kind: str, unit: str) -> list[str]:
    """The summary's first lines: count and total length (cracks: max width, BRE 251; joints: taped share)."""
    im = result["image"]
    what = "crack" if kind == "crack" else "joint"
    lines = [
        (
            f"**{im['count']} {what}{'s' if im['count'] != 1 else ''}**, total length "
            f"{im.get('total_length_mm', im['total_length_px']):.1f} {unit}"
        )
    ]
    if kind == "crack" and im["count"]:
        lines[0] += f", max width {im.get('max_width_mm', im['max_width_px']):.2f} {unit}"
        if im.get("bre_251_category") is not None:
            lines.append(f"BRE Digest 251 category **{im['bre_251_text']}**")
    if kind == "joint":
        lines.append(f"taped share of the image {im['taped_share']:.3f}; orientations {im['orientations']}")
    return lines


def build_app(app: AppModel):
    """The page: inputs on the left, overlay and mask on the right, the measurements below (a declarative
    layout; the work is in :func:`segment`)."""
    import gradio as gr  # noqa: PLC0415 (heavy, optional: gradio)

    out_root = Path(tempfile.mkdtemp(prefix="promptseg-app-"))
    presets = app.presets or ["segment crack"]
    first_recipe, _, first_why = recipe_for(app, presets[0])

    def on_prompt(prompt):
        recipe, _, why = recipe_for(app, (prompt or "").strip())
        return gr.update(value=recipe.threshold), why

    def run(upload, picked, prompt, threshold, opacity, mm_per_px):
        image_path = upload if upload else next((str(p) for p in app.test_images if p.name == picked), None)
        try:
            res = segment(
                app, image_path, prompt, threshold, opacity, mm_per_px or None, out_root / f"{time.time_ns()}"
            )
        except Exception as exc:  # noqa: BLE001 -- keep serving whatever happens; say it on the page
            res = {"error": f"Segmentation failed: {type(exc).__name__}: {exc}"}
        if "error" in res:
            return None, None, [], f"**Error:** {res['error']}", None, None
        return res["overlay"], res["mask"], res["rows"], res["summary"], res["mask_path"], res["json_path"]

    with gr.Blocks(title=f"promptseg: {app.rung}", analytics_enabled=False) as demo:
        gr.Markdown(
            f"## promptseg: text-prompted crack and drywall-joint segmentation ({app.rung}, "
            f"{app.engine_name} engine)\nUpload a photo or pick a test image, choose or type a prompt, "
            "then Segment. Give the scale (mm per pixel) for widths in mm and the BRE Digest 251 category."
        )
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="Photo (JPEG/PNG)", type="filepath", elem_id="upload")
                picked = gr.Dropdown(
                    choices=[p.name for p in app.test_images], value=None, label="... or a test image", elem_id="picked"
                )
                preset = gr.Dropdown(choices=presets, value=presets[0], label="Prompt presets", elem_id="preset")
                prompt = gr.Textbox(value=presets[0], label="Prompt (free text)", elem_id="prompt")
                threshold = gr.Slider(
                    0.0, 1.0, value=first_recipe.threshold, step=0.01, label="Threshold", elem_id="threshold"
                )
                threshold_note = gr.Markdown(first_why, elem_id="threshold_note")
                opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Overlay opacity", elem_id="opacity")
                scale = gr.Number(value=0, label="Scale, mm per pixel (0: pixels only)", elem_id="scale")
                button = gr.Button("Segment", variant="primary", elem_id="segment")
            with gr.Column():
                overlay = gr.Image(label="Overlay", type="numpy", elem_id="overlay")
                mask = gr.Image(label="Mask", type="numpy", image_mode="L", elem_id="mask")
        summary = gr.Markdown(elem_id="summary")
        table = gr.Dataframe(headers=TABLE_COLUMNS, label="Measurements", elem_id="table", interactive=False)
        with gr.Row():
            mask_file = gr.File(label="Mask PNG", elem_id="mask_file")
            json_file = gr.File(label="Measurements JSON", elem_id="json_file")
        # the threshold follows the prompt once it is typed (not at every key stroke)
        preset.change(lambda p: p, preset, prompt).then(on_prompt, prompt, [threshold, threshold_note])
        prompt.blur(on_prompt, prompt, [threshold, threshold_note])
        prompt.submit(on_prompt, prompt, [threshold, threshold_note])
        button.click(
            run,
            [upload, picked, prompt, threshold, opacity, scale],
            [overlay, mask, table, summary, mask_file, json_file],
        )
    return demo


def launch(app: AppModel, *, host: str = "127.0.0.1", port: int | None = None, block: bool = True):
    demo = build_app(app)
    demo.queue(default_concurrency_limit=1)
    demo.launch(server_name=host, server_port=port, prevent_thread_lock=not block, show_error=True, quiet=not block)
    return demo
