"""The evaluation's figures: the first images of a split (image | truth | heatmap | mask) and the k worst.

matplotlib is imported inside the functions (heavy, and only these figures need it).
"""

from __future__ import annotations

from pathlib import Path

import cv2

from promptseg.images import load_split
from promptseg.infer.recipe import Recipe
from promptseg.infer.segmenter import Segmenter
from promptseg.paths import prompt_slug

__all__ = ["qualitative_figure", "worst_images", "worst_images_figure", "message_figure", "panel_figure"]


def qualitative_figure(
    segmenter: Segmenter,
    processed_root: Path,
    dataset: str,
    prompt: str,
    recipe: Recipe,
    figure_images: int,
    out_path: Path,
    split: str = "test",
    note: str | None = None,
) -> None:
    """image | ground truth | heatmap | binary mask for the first ``figure_images`` images of a split, predicted
    the way ``recipe`` says (evaluation's recipe for the dataset: the masks it scored).

    The title names the split and ``note`` (e.g. :data:`NO_TEST_SPLIT_NOTE` when val stands in for test). A split
    with no images (or ``figure_images: 0``) still gets a figure, one that says so: the file is a declared output."""
    data = load_split(processed_root, dataset, split)
    n = min(figure_images, len(data.images))
    heading = f"{dataset}, {split} split" + (f" ({note})" if note else "")
    if n == 0:
        message_figure(
            f"{heading}: no images to show ({len(data.images)} in the split, eval.figure_images: {figure_images})",
            out_path,
        )
        return
    probs = segmenter.probabilities(data.images[:n], [prompt] * n, recipe)
    threshold = recipe.threshold
    shape = f", {recipe.mask_shape}" if recipe.boxes else ""
    rows = []
    for image, truth, prob in zip(data.images, data.truths, probs):
        mask = recipe.mask(prob)
        rows.append(
            [
                (image, "image", None),
                (truth, "ground truth", "gray"),
                (prob, f"heatmap: {prompt!r}", "magma"),
                (mask, f"mask (t={threshold:g}{shape})", "gray"),
            ]
        )
    panel_figure(rows, data.stems, heading, out_path, highlight=bool(note))


def message_figure(text: str, out_path: Path) -> None:
    """A small figure that only says ``text`` (a declared figure with nothing to show)."""
    import matplotlib  # noqa: PLC0415 (heavy, optional: only figures need it)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig = plt.figure(figsize=(6, 1.2))
    fig.text(0.02, 0.5, text, fontsize=7, va="center", wrap=True)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=80)
    plt.close(fig)


def panel_figure(rows, row_labels, heading: str, out_path: Path, highlight: bool = False, titles_every_row=False):
    """One figure row per entry of ``rows``, each a list of (array, title, cmap) panels; ``row_labels`` beside
    each row; ``heading`` on top (dark red when ``highlight``)."""
    import matplotlib  # noqa: PLC0415 (heavy, optional: only figures need it)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    cols = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(3 * cols, 3 * len(rows)), squeeze=False)
    for row, (panels, label) in enumerate(zip(rows, row_labels)):
        for col, (panel, title, cmap) in enumerate(panels):
            axes[row, col].imshow(panel, cmap=cmap, vmin=0 if cmap else None, vmax=(1 if cmap == "magma" else None))
            axes[row, col].set_title(title if (row == 0 or titles_every_row) else "", fontsize=9)
            axes[row, col].axis("off")
        axes[row, 0].set_ylabel(str(label)[:24], fontsize=7)
    fig.suptitle(heading, fontsize=10, color="darkred" if highlight else "black")
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=80)
    plt.close(fig)


def worst_images(rows: list[dict], dataset: str, split: str, prompt: str, k: int) -> list[dict]:
    """The ``k`` per-image rows (:func:`per_image_rows`) of ``dataset``/``split``/``prompt`` with the lowest Dice
    (ties: the lower IoU, then the stem)."""
    mine = [r for r in rows if r["dataset"] == dataset and r["split"] == split and r["prompt"] == prompt]
    return sorted(mine, key=lambda r: (float(r["dice"]), float(r["iou"]), r["stem"]))[: max(int(k), 0)]


def worst_images_figure(
    processed_root: Path,
    dataset: str,
    split: str,
    prompt: str,
    rows: list[dict],
    masks_dir: Path,
    k: int,
    out_path: Path,
    note: str | None = None,
) -> list[str]:
    """image | ground truth | prediction for the ``k`` lowest-Dice images of ``split`` with ``prompt``, each row
    titled with the image's Dice and IoU. The predictions are the masks evaluation scored and wrote
    (``masks_dir/<stem>__<prompt slug>.png``); ``rows`` are its per-image rows. With nothing to show (no rows,
    ``k`` 0) the figure says why. Returns the stems shown, worst first."""
    worst = worst_images(rows, dataset, split, prompt, k)
    heading = f"{dataset}, {split} split: the {len(worst)} lowest-Dice images with {prompt!r}" + (
        f" ({note})" if note else ""
    )
    if not worst:
        scored = sum(1 for r in rows if r["dataset"] == dataset and r["split"] == split)
        message_figure(
            f"{dataset}, {split} split: no worst-image gallery ({scored} per-image scores for this split, "
            f"eval.worst_images: {k})",
            out_path,
        )
        return []
    data = load_split(processed_root, dataset, split)
    index = {stem: i for i, stem in enumerate(data.stems)}
    panel_rows = []
    for r in worst:
        i = index[r["stem"]]
        mask_path = Path(masks_dir) / f"{r['stem']}__{prompt_slug(prompt)}.png"
        mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise FileNotFoundError(f"{mask_path}: the scored mask is missing; rerun the evaluation that wrote it")
        panel_rows.append(
            [
                (data.images[i], f"Dice {float(r['dice']):.3f}, IoU {float(r['iou']):.3f}\n{r['stem'][:30]}", None),
                (data.truths[i], "ground truth", "gray"),
                (mask, "prediction", "gray"),
            ]
        )
    panel_figure(panel_rows, [r["stem"] for r in worst], heading, out_path, highlight=bool(note), titles_every_row=True)
    return [r["stem"] for r in worst]
