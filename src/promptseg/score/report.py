"""``metrics/report.md`` from the metrics files alone: no model, no images, no scoring.

Inputs (all small JSON files written by earlier stages):

- ``metrics/data/<dataset>.json``: per split counts (images, with/without foreground, mean foreground
  fraction) and the counters of what the mask stage skipped or repaired;
- ``metrics/train/<rung>.json``: method, architecture, trainable/total parameters, seconds per epoch
  (or ``{"rung", "method", "skipped": reason}`` for a rung that was skipped);
- ``metrics/eval/<rung>.json``: per dataset the threshold chosen on val, the inference options measured on
  val (``options_val``), and per split per-prompt scores, prompt-switching lit fractions and paraphrase
  scores (see :mod:`promptseg.score.evaluate`); ``{"skipped": reason}`` for a skipped rung.

- ``metrics/runtime/<rung>.json``: measured ms per image (PyTorch, ONNX), model size, peak memory
  (:mod:`promptseg.score.runtime`);
- ``metrics/eval/baselines.json``: the no-learning baselines ("all zeros", "all ones" and, for thin structures,
  "darkest 5%") scored on the same test images by the ``baselines`` stage (:mod:`promptseg.score.baselines`), so a
  model's figures can be read against masks that need no model;
- with ``bootstrap`` settings, ``metrics/eval/per_image/<rung>.csv`` and each dataset's source-photo groups (the
  processed ``index.csv``): every rung's mIoU interval and the LoRA-minus-full paired interval, resampling whole
  source photos (:mod:`promptseg.score.intervals`).

The report's core is one "ladder" table per dataset: the baselines first, then every rung of
``train.rungs`` in params order.

Everything is GitHub-flavoured markdown (tables padded so they read in a terminal too), numbers to 3 decimals.
A file that is missing (a rung not yet evaluated) gives one line saying so, never an exception.

A dataset whose export has no test split (``eval.missing_test_split: report_val``; the official drywall exports)
is reported on val in every table, and the header, the table titles and the notes say so:
"no test split: threshold chosen on the same images, optimistic".
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from promptseg.params import DATASETS, NO_TEST_SPLIT_NOTE, THIN_STRUCTURE_DATASETS
from promptseg.paths import (
    data_json,
    eval_json,
    figure_png,
    per_image_csv,
    runtime_json,
    train_json,
    worst_png,
    write_json,
)
from promptseg.score.intervals import Interval, paired_interval, read_scored_rows, score_interval
from promptseg.settings import BOX_SHAPES, BootstrapParams, zeroshot_skip_reason

__all__ = ["build_report", "build_summary", "rung_intervals", "write_report", "QUIRK_IGNORED_KEYS", "BASELINES_FILE"]

ZEROSHOT = "zeroshot"
BASELINE_NAMES = ("all zeros", "all ones")  # the prompt-blind constant masks; "darkest N%" joins them for cracks
BASELINES_FILE = "baselines.json"  # under metrics/eval: written by the `baselines` stage
CEILINGS_FILE = "ceilings.json"  # under metrics/eval: what the crack labels allow (promptseg.score.ceilings)

# Counters in metrics/data/<dataset>.json that describe the data rather than something skipped or repaired.
QUIRK_IGNORED_KEYS = frozenset(
    {
        "images",
        "images_listed",
        "with_foreground",
        "without_foreground",
        "mean_foreground_fraction",
        "images_without_labels",
        "annotations",
        "polygons",
        "multipart_polygons",
        "rle",
        "boxes",
        "unused_categories",  # Roboflow's supercategory entry: describes the export, nothing was skipped
    }
)

MISSING = "n/a"
NONE = "\u2014"  # an em dash: a cell that has no meaning for this row (a baseline's parameters)
SKIPPED = "skipped"
INFER_OPTIONS = (
    ("single prompt", "single_prompt"),
    ("prompt ensemble", "ensemble"),
    ("single prompt + hflip", "single_prompt+hflip"),
    ("prompt ensemble + hflip", "ensemble+hflip"),
    ("single prompt, tiled", "single_prompt+tiled"),
)


# --------------------------------------------------------------------------- formatting helpers
def _num(value: Any, digits: int = 3) -> str:
    if value is None or isinstance(value, bool):
        return MISSING
    try:
        x = float(value)
    except (TypeError, ValueError):
        return MISSING
    if math.isnan(x):
        return MISSING
    return f"{x:.{digits}f}"


def _int(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return MISSING
    try:
        return f"{int(value):,}"
    except (TypeError, ValueError):
        return MISSING


def _pct(fraction: Any) -> str:
    try:
        return _num(float(fraction) * 100.0)
    except (TypeError, ValueError):
        return MISSING


def _cell(text: Any) -> str:
    """One table cell: no newlines, pipes escaped."""
    return str(text).replace("\n", " ").replace("|", "\\|")


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: Sequence[str]) -> str:
    """A markdown table padded to equal column widths (``align``: "l" or "r" per column)."""
    body = [[_cell(c) for c in row] for row in rows]
    head = [_cell(h) for h in header]
    widths = [max([len(head[i]), 3] + [len(r[i]) for r in body]) for i in range(len(head))]

    def line(cells):
        padded = [c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(cells, widths, align)]
        return "| " + " | ".join(padded) + " |"

    rule = "| " + " | ".join(("-" * (w - 1) + ":") if a == "r" else "-" * w for w, a in zip(widths, align)) + " |"
    return "\n".join([line(head), rule, *(line(r) for r in body)])


def _get(d: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def _quirks(split_counts: dict) -> str:
    found = [
        (k, v)
        for k, v in sorted(split_counts.items())
        if k not in QUIRK_IGNORED_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool) and v
    ]
    if not found:
        return "0"
    total = sum(v for _, v in found)
    return f"{_int(total)} (" + ", ".join(f"{k} {_int(v)}" for k, v in found) + ")"


def _source_description(model_source: str) -> str:
    if model_source == "small":
        return "`small` (a small CLIPSeg built from a config: random initial weights, trained here from scratch)"
    return f"`{model_source}` (pretrained CLIPSeg weights, fine-tuned here)"


# --------------------------------------------------------------------------- sections
def _scored_split(dataset: str, eval_metrics: dict[str, dict], scored_splits: dict[str, str] | None) -> str:
    """The split a dataset's tables report: ``scored_splits`` where given, else ``val`` when an evaluation says
    it reported val (``reported_split``: the export has no test split), else ``test``."""
    if scored_splits and dataset in scored_splits:
        return scored_splits[dataset]
    if any(_get(ev, dataset, "reported_split") == "val" for ev in eval_metrics.values()):
        return "val"
    return "test"


def _split_label(split: str) -> str:
    """``"test split"``, or ``"val split; no test split: ..., optimistic"`` for a dataset reported on val."""
    return "test split" if split == "test" else f"{split} split; {NO_TEST_SPLIT_NOTE}"


def _missing_test_lines(splits: dict[str, str]) -> list[str]:
    out = []
    for dataset, split in splits.items():
        if split != "test":
            out += [
                f"**{dataset}: reported on {split}, {NO_TEST_SPLIT_NOTE}.** Its export has no test split (the "
                "official drywall exports have train and valid only, and "
                f"`data.{dataset}.split: as_exported` keeps them), so with `eval.missing_test_split: report_val` "
                f"every {dataset} table below scores the {split} images with the threshold chosen on those same "
                f"images, and its no-learning baselines are scored on {split} too. These figures overstate what "
                f"the model would reach on unseen images; `data.{dataset}.split: grouped` sets a test split "
                "aside (whole source photos).",
                "",
            ]
    return out


def _header(rungs: list[str], model_source: str, datasets: Sequence[str], clipseg_in_ladder: bool) -> list[str]:
    source = (
        f"Model source: {_source_description(model_source)}. "
        if clipseg_in_ladder
        else "No CLIPSeg rung in this ladder (`model.source` describes only those; profiles/paper.yaml and "
        "profiles/clipseg-small.yaml add them). "
    )
    return [
        "# promptseg report",
        "",
        f"{source}Rungs: {', '.join(f'`{v}`' for v in rungs) if rungs else 'none'}. Datasets: {', '.join(datasets)}.",
        "",
        "Metric: IoU and Dice are computed per image over the whole 2-D mask, then averaged over images "
        "(mIoU, Dice); an image whose ground truth and prediction are both empty scores 1. "
        "Each rung's threshold is chosen on val only and then applied to test; "
        "every image is scored with every prompt of its dataset.",
        "",
    ]


def _data_section(data_metrics: dict[str, dict], datasets: Sequence[str]) -> list[str]:
    out = ["## Table 1: data", ""]
    rows, missing = [], []
    for dataset in datasets:
        counts = data_metrics.get(dataset)
        if not counts:
            missing.append(dataset)
            continue
        for split in ("train", "val", "test"):
            c = counts.get(split)
            if not isinstance(c, dict):
                continue
            rows.append(
                [
                    dataset,
                    split,
                    _int(c.get("images")),
                    _int(c.get("with_foreground")),
                    _int(c.get("without_foreground")),
                    _pct(c.get("mean_foreground_fraction")),
                    _quirks(c),
                ]
            )
    if rows:
        out += [
            _table(
                [
                    "dataset",
                    "split",
                    "images",
                    "with foreground",
                    "without foreground",
                    "mean foreground %",
                    "skipped/repaired",
                ],
                rows,
                "llrrrrl",
            ),
            "",
        ]
    for dataset in datasets:  # what parsing met, per EXPORTED split (the rows above are the splits as written)
        export = (data_metrics.get(dataset) or {}).get("export")
        if isinstance(export, dict) and export:
            parsed = "; ".join(f"`{split}` {_quirks(c)}" for split, c in export.items() if isinstance(c, dict))
            out += [f"`{dataset}` export as parsed, per exported split, skipped/repaired: {parsed}.", ""]
    listed = [d for d in datasets if d not in missing]
    if listed:  # every problem with its file, annotation and kind (written by masks@<dataset>)
        out += [
            "Every problem met, with its file: "
            + ", ".join(
                f"[`{d}`](data/problems/{d}.csv) ({_int((data_metrics.get(d) or {}).get('problems'))})" for d in listed
            )
            + ".",
            "",
        ]
    for dataset in missing:
        out += [
            f"No data summary for `{dataset}` (metrics/data/{dataset}.json is missing: run "
            f"`dvc repro masks@{dataset}`).",
            "",
        ]
    return out


def _score_columns(dataset: str) -> list[tuple[str, str]]:
    cols = [("mIoU", "miou"), ("Dice", "dice")]
    if dataset in THIN_STRUCTURE_DATASETS:
        cols += [("boundary F1", "boundary_f1"), ("clDice", "cl_dice")]
    return cols


def _skipped(rung: str, train_metrics: dict[str, dict], eval_metrics: dict[str, dict]) -> str | None:
    """The reason a rung was skipped (``"skipped"`` in its eval or train file), else None."""
    for metrics in (eval_metrics, train_metrics):
        reason = _get(metrics.get(rung), "skipped")
        if reason:
            return str(reason)
    return None


def _baseline_rows(base: dict) -> list[tuple[str, dict]]:
    """(name, scores) of the no-learning baselines, in the order they were computed."""
    return [(name, scores) for name, scores in base.items() if isinstance(scores, dict) and scores]


def _per_prompt_section(
    number: int,
    dataset: str,
    rungs: list[str],
    eval_metrics: dict[str, dict],
    baselines: dict,
    boundary_tolerance_px: int | None,
    split: str = "test",
) -> list[str]:
    cols = _score_columns(dataset)
    out = [f"## Table {number}: {dataset}, {_split_label(split)}, per prompt", ""]
    rows, notes = [], []
    for rung in rungs:
        rows += _rung_prompt_rows(rung, eval_metrics.get(rung), dataset, split, cols, notes)
    base = baselines.get(dataset) or {}
    for name, scores in _baseline_rows(base):
        rows.append(
            [
                f"no learning: {name}",
                "no model",
                MISSING,
                *(_num(scores.get(k)) for _, k in cols),
                _int(scores.get("images")),
            ]
        )
    if rows:
        out += [
            _table(
                ["prompt", "rung", "threshold (val)", *(c for c, _ in cols), "images"],
                rows,
                "llr" + "r" * len(cols) + "r",
            ),
            "",
        ]
    if any(isinstance(_get(eval_metrics.get(v), dataset, split, "ensemble"), dict) for v in rungs):
        notes.append(
            "Prompt ensemble: the logits of every prompt of the dataset averaged, thresholded at its own "
            "val threshold (`ensemble_threshold`)."
        )
    if not base:
        notes.append(f"No no-learning baselines for {dataset} (no processed {split} split found).")
    if split != "test":
        notes.insert(0, f"Scored on {split}: {NO_TEST_SPLIT_NOTE}.")
    if dataset in THIN_STRUCTURE_DATASETS:
        tolerance = f"{boundary_tolerance_px} px" if boundary_tolerance_px is not None else "the evaluation tolerance"
        notes.append(
            f"Boundary F1: precision and recall of mask pixels lying within {tolerance} of the other mask; "
            "clDice compares skeletons. Both suit thin cracks, where IoU punishes one-pixel offsets."
        )
    out += [n + "\n" for n in notes]
    return out


_SHAPE_WORDS = {
    "boxes": "each region of the mask is filled to its bounding box",
    "strips": "each horizontal and vertical strip of the mask (and each region left over) is filled to its own "
    "bounding box",
}


def _boxes_note(rung: str, dataset: str, block: dict) -> str:
    """Why a rung's masks of ``dataset`` are boxes or strips (``infer.mask_shape``; promptseg.score.evaluate)."""
    shape = block.get("mask_shape", "boxes")
    measured = block.get("mask_shape_val") or {}
    chosen, pixels = measured.get(shape) or {}, measured.get("pixels") or {}
    others = [
        f"{'at most ' if 'best_dice' in m else ''}{_num(m.get('best_dice', m.get('dice')))} as {name}"
        for name, m in measured.items()
        if name != shape and isinstance(m, dict)
    ]
    why = (
        f"val Dice {_num(chosen.get('dice'))} against {' and '.join(others)}"
        if pixels
        else f"`infer.mask_shape` says {shape}"
    )
    return (
        f"Rung `{rung}`, {dataset}: {_SHAPE_WORDS.get(shape, shape)}, the shape of the labels ({why}); "
        f"`promptseg predict` and the app draw the same {shape}."
    )


def _boxes_dropped_note(rung: str, dataset: str, block: dict) -> str:
    """Why a rung's masks of ``dataset`` are pixels although a box shape scored higher on val: it broke prompt
    switching."""
    measured = block.get("mask_shape_val") or {}
    switching = block["mask_shape_switching_val"]
    shape = switching.get("shape", "boxes")
    limit = switching.get("limit")
    where = "; ".join(
        f"on {other} val photos its prompts light {_num(m.get(f'{shape}_lit'))} as {shape} and "
        f"{_num(m.get('pixels_lit'))} as pixels, against {_num(m.get('own_prompts_lit'))} for the {other} prompts"
        for other, m in (switching.get("on") or {}).items()
    )
    return (
        f"Rung `{rung}`, {dataset}: pixel masks, although {shape} scored a higher val Dice "
        f"({_num((measured.get(shape) or {}).get('dice'))} against "
        f"{_num((measured.get('pixels') or {}).get('best_dice'))}): as {shape} they would break prompt switching, "
        f"which pixels keep ({where}; the limit is {_num(limit, 2)} of the latter)."
    )


def _shape_dropped(block: dict) -> bool:
    """Whether evaluation dropped the box shape val chose, for prompt switching (``boxes_dropped``: before strips)."""
    switching = block.get("mask_shape_switching_val") or {}
    return bool(switching.get("dropped", switching.get("boxes_dropped")))


def _rung_prompt_rows(rung: str, ev: dict | None, dataset: str, split: str, cols, notes: list[str]) -> list:
    """One rung's rows of the per-prompt table: each prompt, their mean, the ensemble; or a note saying why none."""
    if ev is None:
        notes.append(
            f"Rung `{rung}`: not evaluated yet (metrics/eval/{rung}.json is missing: run `dvc repro evaluate@{rung}`)."
        )
        return []
    if ev.get("skipped"):
        notes.append(f"Rung `{rung}`: skipped, no numbers (the reason is under the {dataset} ladder table).")
        return []
    block = ev.get(dataset)
    test = _get(block, split)
    if not isinstance(test, dict):
        notes.append(f"Rung `{rung}`: no {split} scores for {dataset} in metrics/eval/{rung}.json.")
        return []
    rows = []
    threshold = _num(block.get("threshold"))
    if block.get("mask_shape") in BOX_SHAPES:
        threshold += f", {block['mask_shape']}"
        notes.append(_boxes_note(rung, dataset, block))
    elif _shape_dropped(block):
        notes.append(_boxes_dropped_note(rung, dataset, block))
    for prompt, scores in (test.get("prompts") or {}).items():
        rows.append(
            [f'"{prompt}"', rung, threshold, *(_num(scores.get(k)) for _, k in cols), _int(scores.get("images"))]
        )
    mean = test.get("all_prompts") or {}
    rows.append(["mean over prompts", rung, threshold, *(_num(mean.get(k)) for _, k in cols), _int(test.get("images"))])
    ensemble = test.get("ensemble")
    if isinstance(ensemble, dict):
        rows.append(
            [
                "prompt ensemble",
                rung,
                _num(block.get("ensemble_threshold", block.get("threshold"))),
                *(_num(ensemble.get(k)) for _, k in cols),
                _int(ensemble.get("images")),
            ]
        )
    return rows


def _best_baseline(base: dict) -> tuple[str, float] | None:
    """(name, Dice) of the no-learning baseline with the highest mean test Dice (the first one on a tie)."""
    named = [
        (name, s.get("dice"))
        for name, s in _baseline_rows(base)
        if isinstance(s.get("dice"), (int, float)) and not math.isnan(s.get("dice"))
    ]
    return max(named, key=lambda t: t[1]) if named else None


def _beaten_notes(
    dataset: str, rungs: list[str], eval_metrics: dict[str, dict], base: dict, split: str = "test"
) -> list[str]:
    """One line per rung whose mean Dice on ``split`` does not beat the best no-learning mask (at 3 decimals)."""
    best = _best_baseline(base)
    if best is None:
        return []
    best_name, best_dice = best
    notes = []
    for rung in rungs:
        dice = _get(eval_metrics.get(rung), dataset, split, "all_prompts", "dice")
        if isinstance(dice, (int, float)) and not math.isnan(dice) and round(dice, 3) <= round(best_dice, 3):
            notes.append(
                f"Note: `{rung}` on {dataset} (mean Dice {_num(dice)}) does not beat the no-learning "
                f"'{best_name}' mask (Dice {_num(best_dice)})."
            )
    return notes


def _method_cell(rung: str, tr: dict) -> str:
    method = tr.get("method") or ("zero-shot (no training)" if rung == ZEROSHOT else MISSING)
    architecture = tr.get("architecture")
    return f"{method} / {architecture}" if architecture else str(method)


def _schedule_cell(tr: dict) -> str:
    """``"<epochs> @ <image_size>"`` of a trained rung (rungs may override both), or the missing mark."""
    if tr.get("epochs") is None or tr.get("image_size") is None:
        return MISSING
    return f"{tr['epochs']} @ {tr['image_size']}"


def _ladder_section(
    number: int,
    dataset: str,
    rungs: list[str],
    train_metrics: dict[str, dict],
    eval_metrics: dict[str, dict],
    baselines: dict,
    split: str = "test",
    ceiling: dict | None = None,
    intervals: dict[str, Interval] | None = None,
) -> list[str]:
    """One dataset's ladder: the no-learning baselines, then every rung in ``rungs`` (params) order; with
    ``ceiling`` (:func:`promptseg.score.ceilings.label_ceilings` of the same split), what its labels allow; with
    ``intervals`` (``{rung: Interval}`` of its mIoU), a column of them and a note on how they were drawn."""
    cols = _score_columns(dataset)
    out = [f"## Table {number}: {dataset} ladder ({_split_label(split)}, mean over prompts)", ""]
    level = next(iter(intervals.values())).level if intervals else None
    header = [
        "rung",
        "method / architecture",
        "trainable params",
        "total params",
        *(c for c, _ in cols),
        *([f"mIoU {_percent(level)} interval"] if level is not None else []),
        "cross-prompt lit",
        "unrelated-prompt lit",
        "epochs @ px",
        "s/epoch",
    ]
    rows, notes, skipped_notes = [], [], []
    base = baselines.get(dataset) or {}
    for name, scores in _baseline_rows(base):
        lit = _num(scores.get("lit"))
        extra = [NONE] if level is not None else []
        rows.append(
            [name, "no learning", NONE, NONE, *(_num(scores.get(k)) for _, k in cols), *extra, lit, lit, NONE, NONE]
        )
    for rung in rungs:
        row = _ladder_row(rung, dataset, split, cols, len(header), train_metrics, eval_metrics, notes, skipped_notes)
        if row is not None:
            if level is not None and len(row) == len(header) - 1:
                row.insert(4 + len(cols), _interval_cell((intervals or {}).get(rung)))
            rows.append(row)
    if rows:
        out += [_table(header, rows, "llrr" + "r" * (len(header) - 4)), ""]
    if level is not None:
        groups = max(i.groups for i in intervals.values())
        notes.append(
            f"mIoU intervals: {_percent(level)} percentile bootstrap over whole source photos ({groups} groups of "
            f"the {split} split: a photo's flipped copies and near-duplicates are resampled together; "
            "promptseg.score.intervals). Two rungs whose intervals overlap may still differ: only their difference "
            "resampled on the same photos can tell (the report does so for LoRA against full)."
        )
    best = _best_baseline(base)
    if best is not None:
        out += [f"Read every rung against the best no-learning baseline ({best[0]}, Dice {_num(best[1])}).", ""]
        notes = _beaten_notes(dataset, rungs, eval_metrics, base, split) + notes
    else:
        notes.insert(0, f"No no-learning baselines for {dataset} (no processed {split} split found).")
    out += _ceiling_lines(ceiling, split)
    if split != "test":
        notes.insert(0, f"Scored on {split}: {NO_TEST_SPLIT_NOTE} (see the note at the top).")
    if base:
        notes.append(
            "The no-learning masks ignore the prompt, so their cross- and unrelated-prompt lit is simply "
            "the share of pixels they light with any prompt."
        )
    out += [n + "\n" for n in skipped_notes + notes]
    return out


def _percent(level: float) -> str:
    return f"{100 * level:g} %"


def _interval_cell(interval: Interval | None) -> str:
    return MISSING if interval is None else f"[{_num(interval.low)}, {_num(interval.high)}]"


def _paired_text(interval: Interval | None, a: str, b: str) -> str:
    """`` (paired ...)``: the mean difference a - b on the same rows, its interval, and what it says."""
    if interval is None:
        return ""
    if interval.low > 0:
        verdict = f"`{a}` is above `{b}`"
    elif interval.high < 0:
        verdict = f"`{a}` is below `{b}`"
    else:
        verdict = "the split cannot tell them apart"
    sign = "+" if interval.mean >= 0 else ""
    low_sign = "+" if interval.low >= 0 else ""
    high_sign = "+" if interval.high >= 0 else ""
    return (
        f"; paired on the same {interval.rows} (image, prompt) rows: {sign}{_num(interval.mean)}, "
        f"{_percent(interval.level)} interval [{low_sign}{_num(interval.low)}, {high_sign}{_num(interval.high)}] "
        f"over {interval.groups} source photos: {verdict}"
    )


def _ceiling_lines(ceiling: dict | None, split: str) -> list[str]:
    """What the labels allow (promptseg.score.ceilings), in two sentences; nothing without it."""
    one, each = (ceiling or {}).get("one width"), (ceiling or {}).get("each image's width")
    if not one or not each:
        return []
    widths = ceiling.get("label_width_px") or {}
    width_text = (
        f" The labels' own width (area / skeleton length) runs from {_num(widths['p10'], 1)} px (10th percentile) "
        f"through {_num(widths['p50'], 1)} (median) to {_num(widths['p90'], 1)} (90th)."
        if {"p10", "p50", "p90"} <= set(widths)
        else ""
    )
    return [
        f"What the labels allow (read off the {split} labels themselves, not a model): their own centerline drawn "
        f"at one width (a disk of radius {one.get('radius_px', MISSING)} px, the best single radius) scores "
        f"mIoU {_num(one.get('miou'))} / Dice {_num(one.get('dice'))}; drawn at each image's best width, "
        f"{_num(each.get('miou'))} / {_num(each.get('dice'))}. A model that finds every crack's centerline exactly "
        "but draws every crack at one width scores about the first at best; to go beyond it, a model has to read "
        f"each crack's labelled width off the photo.{width_text}",
        "",
    ]


def _ladder_row(rung, dataset, split, cols, width, train_metrics, eval_metrics, notes, skipped_notes):
    """One rung's row of the ladder table (None when it has neither training nor evaluation), with a note for
    whatever is missing."""
    tr, ev = train_metrics.get(rung), eval_metrics.get(rung)
    reason = _skipped(rung, train_metrics, eval_metrics)
    if reason is not None:
        skipped_notes.append(f"`{rung}` was skipped: {reason.rstrip('.')}.")
        return [rung, _method_cell(rung, tr or {}), *([SKIPPED] * (width - 2))]
    if tr is None and ev is None:
        notes.append(
            f"Rung `{rung}`: neither trained nor evaluated yet (no metrics/train/{rung}.json "
            f"or metrics/eval/{rung}.json)."
        )
        return None
    if tr is None and rung != ZEROSHOT:
        notes.append(f"Rung `{rung}`: metrics/train/{rung}.json is missing (run `dvc repro train@{rung}`).")
    if ev is None:
        notes.append(f"Rung `{rung}`: not evaluated yet (metrics/eval/{rung}.json is missing).")
    elif not isinstance(_get(ev, dataset, split), dict):
        notes.append(f"Rung `{rung}`: no {split} scores for {dataset} in metrics/eval/{rung}.json.")
    tr = tr or {}
    trainable = tr.get("trainable_params")
    if rung == ZEROSHOT and trainable is None:
        trainable = 0
    test = _get(ev, dataset, split) or {}
    mean = test.get("all_prompts") or {}
    return [
        rung,
        _method_cell(rung, tr),
        _int(trainable),
        _int(tr.get("total_params")),
        *(_num(mean.get(k)) for _, k in cols),
        _num(test.get("cross_prompt_lit")),
        _num(test.get("unrelated_prompt_lit")),
        _schedule_cell(tr),
        _num(tr.get("seconds_per_epoch")),
    ]


def _options_section(
    number: int,
    rungs: list[str],
    eval_metrics: dict[str, dict],
    datasets: Sequence[str],
    infer_defaults: dict | None,
) -> list[str]:
    """Best-threshold val Dice of each inference option (``options_val``), per rung and dataset."""
    out = [f"## Table {number}: Inference options on validation", ""]
    settings = ""
    if infer_defaults:
        settings = " (now " + ", ".join(f"`{k}: {str(bool(v)).lower()}`" for k, v in infer_defaults.items()) + ")"
    out += [
        "Best-threshold Dice (mean over val images, and over prompts for a single prompt) of each inference "
        "option: one prompt at a time, the logit average over the dataset's prompts (prompt ensemble), and "
        "each with horizontal-flip test-time augmentation, and one prompt with sliding-window (tiled) inference at "
        "the image's own resolution. These are measured on val only (test is never used to choose), and the "
        "defaults in params.yaml `infer.hflip_tta` / `infer.prompt_ensemble`"
        f"{settings} / `infer.tiled` follow them.",
        "",
    ]
    rows, notes = [], []
    for rung in rungs:
        ev = eval_metrics.get(rung)
        if ev is None or ev.get("skipped"):
            continue  # the ladder tables say why
        for dataset in datasets:
            options = _get(ev, dataset, "options_val")
            if not isinstance(options, dict):
                if isinstance(ev.get(dataset), dict):
                    notes.append(
                        f"Rung `{rung}`: no `options_val` for {dataset} in metrics/eval/{rung}.json "
                        "(`eval.measure_inference_options` is off, or it was evaluated before the options "
                        f"were measured: rerun `dvc repro evaluate@{rung}`)."
                    )
                continue
            known = [
                (label, options.get(key))
                for label, key in INFER_OPTIONS
                if isinstance(options.get(key), (int, float)) and not math.isnan(options.get(key))
            ]
            best = max(known, key=lambda t: t[1])[0] if known else MISSING
            rows.append([rung, dataset, *(_num(options.get(key)) for _, key in INFER_OPTIONS), best])
    if rows:
        out += [
            _table(
                ["rung", "dataset", *(label for label, _ in INFER_OPTIONS), "best on val"],
                rows,
                "ll" + "r" * len(INFER_OPTIONS) + "l",
            ),
            "",
        ]
        out += [n + "\n" for n in notes]
    elif notes:  # no rung has them: one line, not one per rung and dataset
        out += [
            "Not measured in this run: `eval.measure_inference_options` is off (it adds about 40 s per rung on "
            "2 CPU cores; the paper profile turns it on). Turn it on and rerun `dvc repro` to fill this table.",
            "",
        ]
    else:
        out += ["No inference-option figures yet (no rung has been evaluated).", ""]
    return out


def _switching_row(rung: str, dataset: str, split: str, scores: dict, data_metrics: dict[str, dict]) -> list[str]:
    """One row of the prompt-switching table: the lit shares of one rung on one dataset's reported split."""
    paraphrases = scores.get("paraphrases") or {}
    para = "; ".join(f'"{p}" {_num(s.get("dice"))}' for p, s in paraphrases.items()) or MISSING
    return [
        rung,
        dataset if split == "test" else f"{dataset} ({split})",
        _num(_get(data_metrics, dataset, split, "mean_foreground_fraction")),
        _num(scores.get("in_prompt_lit")),
        _num(scores.get("cross_prompt_lit")),
        _num(scores.get("unrelated_prompt_lit")),
        para,
    ]


def _switching_section(
    number: int,
    rungs: list[str],
    eval_metrics: dict[str, dict],
    data_metrics: dict[str, dict],
    datasets: Sequence[str],
    splits: dict[str, str] | None = None,
) -> list[str]:
    splits = splits or {}
    on_val = [d for d in datasets if splits.get(d, "test") != "test"]
    title = "test split" + (f"; {', '.join(on_val)}: val, {NO_TEST_SPLIT_NOTE}" if on_val else "")
    out = [
        f"## Table {number}: prompt switching ({title})",
        "",
        "Fraction of pixels lit: with the dataset's own prompts (in-prompt; compare with the ground-truth "
        "foreground share), with every prompt of the OTHER dataset, each masked with its own dataset's recipe as "
        "`promptseg predict` masks it (cross-prompt: a model that does not switch on the prompt lights the same "
        "pixels; lower is better) and with unrelated prompts, masked with the photo's dataset's recipe "
        "(lower is better). Paraphrase Dice: prompts never used in training, scored like the training prompts.",
        "",
    ]
    rows, notes = [], []
    for rung in rungs:
        ev = eval_metrics.get(rung)
        if ev is None:
            notes.append(f"Rung `{rung}`: not evaluated yet.")
            continue
        if ev.get("skipped"):
            notes.append(f"Rung `{rung}`: skipped (see the ladder tables).")
            continue
        for dataset in datasets:
            split = splits.get(dataset, "test")
            scores = _get(ev, dataset, split)
            if isinstance(scores, dict):
                rows.append(_switching_row(rung, dataset, split, scores, data_metrics))
    if rows:
        out += [
            _table(
                [
                    "rung",
                    "dataset",
                    "ground-truth foreground",
                    "in-prompt lit",
                    "cross-prompt lit",
                    "unrelated-prompt lit",
                    "paraphrase Dice",
                ],
                rows,
                "llrrrrl",
            ),
            "",
        ]
    out += [n + "\n" for n in notes]
    return out


PRETRAINED_ARCHITECTURES = ("hed",)  # rungs that start from real pretrained weights (promptseg.modeling.hed)


def _pretrained_section(
    number: int,
    rungs: list[str],
    train_metrics: dict[str, dict],
    eval_metrics: dict[str, dict],
    datasets: Sequence[str],
    splits: dict[str, str],
    paired: dict[tuple[str, str, str], Interval] | None = None,
) -> list[str]:
    """The project's question on real weights: the rungs of a pretrained architecture side by side with what
    they train (parameters, LoRA weights), what it cost (training minutes) and what they score; the U-Net
    rung (random init) beside them when present; with ``paired`` (``{(lora, full, dataset): Interval}``), how
    sure the LoRA-minus-full difference is. Empty when no pretrained rung has train metrics."""
    ours = [r for r in rungs if (train_metrics.get(r) or {}).get("architecture") in PRETRAINED_ARCHITECTURES]
    if not ours:
        return []
    others = [r for r in rungs if r not in ours and (train_metrics.get(r) or {}).get("architecture") == "unet"]
    header = ["rung", "method", "trainable params", "LoRA params", "train min"]
    for dataset in datasets:
        header += [f"{dataset} {_split_label(splits[dataset])} mIoU", f"{dataset} Dice"]
    rows = []
    for rung in [*ours, *others]:
        tr, ev = train_metrics.get(rung) or {}, eval_metrics.get(rung) or {}
        seconds = _train_seconds(tr)
        row = [
            rung,
            _method_cell(rung, tr),
            _int(tr.get("trainable_params")),
            _int(tr.get("lora_params")) if tr.get("lora_params") else NONE,
            _num(seconds / 60.0, 1) if seconds is not None else MISSING,
        ]
        for dataset in datasets:
            mean = _get(ev, dataset, splits[dataset], "all_prompts") or {}
            row += [_num(mean.get("miou")), _num(mean.get("dice"))]
        rows.append(row)
    out = [
        f"## Table {number}: pretrained HED-VGG16 rungs (ImageNet, then BSDS500 edges) against the random-init U-Net",
        "",
        "Same data, prompts, negatives, recipe and evaluation as every rung. `hed_zeroshot` is HED's own edge map "
        "with the threshold chosen on val: it ignores the prompt and traces edges, so it is a crack baseline; its "
        "drywall figures say how far joints are from edges, not what a model of joints does. Training minutes are "
        "wall time on this machine (shared by other jobs at times: see the run's notes).",
        "",
        _table(header, rows, "llrrr" + "r" * (2 * len(datasets))),
        "",
    ]
    lora = [r for r in ours if (train_metrics.get(r) or {}).get("method") == "lora"]
    full = [r for r in ours if (train_metrics.get(r) or {}).get("method") == "full"]
    if lora and full:
        lo, fu = train_metrics[lora[0]], train_metrics[full[0]]
        for dataset in datasets:
            a = _number(_get(eval_metrics.get(lora[0]), dataset, splits[dataset], "all_prompts", "miou"))
            b = _number(_get(eval_metrics.get(full[0]), dataset, splits[dataset], "all_prompts", "miou"))
            if a is None or b is None:
                continue
            out.append(
                f"{dataset}: `{lora[0]}` {_num(a)} vs `{full[0]}` {_num(b)} {_split_label(splits[dataset])} mIoU "
                f"({'+' if a >= b else ''}{_num(a - b)}), after {_int(lo.get('epochs'))} vs {_int(fu.get('epochs'))} "
                f"epochs, {_int(lo.get('trainable_params'))} vs {_int(fu.get('trainable_params'))} trainable "
                f"parameters ({_int(lo.get('lora_params'))} of them LoRA weights on the encoder)"
                f"{_paired_text((paired or {}).get((lora[0], full[0], dataset)), lora[0], full[0])}.\n"
            )
    return out


def _runtime_section(number: int, rungs: list[str], runtime: dict[str, dict]) -> list[str]:
    """Measured inference time, model size and peak memory per rung (``metrics/runtime/<rung>.json``)."""
    out = [
        f"## Table {number}: runtime and footprint",
        "",
        "Measured by the `runtime@<rung>` stages on a handful of test images (`params.yaml: runtime`): "
        "milliseconds per image through `promptseg predict`'s PyTorch path and through the ONNX engine "
        "(`--engine onnx`, exported to a temporary folder), each the fastest of the timed rounds; the model "
        "folder's size on disk; the peak resident memory of the measuring process (interpreter and libraries "
        "included) after the PyTorch path and after the ONNX path too.",
        "",
    ]
    rows, notes = [], []
    for rung in rungs:
        r = runtime.get(rung)
        if r is None:
            notes.append(f"Rung `{rung}`: no metrics/runtime/{rung}.json yet (run `dvc repro runtime@{rung}`).")
            continue
        if r.get("skipped"):
            continue  # the ladder tables say why
        rows.append(
            [
                rung,
                _num(r.get("torch_ms_per_image"), 1),
                _num(r.get("onnx_ms_per_image"), 1),
                _num(r.get("model_mb"), 1),
                _num(r.get("onnx_mb"), 1),
                _num(r.get("peak_rss_mb"), 0),
                _num(r.get("peak_rss_onnx_mb"), 0),
                _int(r.get("images")),
                f"{r.get('device', MISSING)}, {_int(r.get('threads'))} threads, batch {_int(r.get('batch_size'))}",
            ]
        )
    if rows:
        out += [
            _table(
                [
                    "rung",
                    "torch ms/image",
                    "ONNX ms/image",
                    "model MB",
                    "ONNX MB",
                    "peak RSS MB (torch)",
                    "peak RSS MB (+ONNX)",
                    "images",
                    "setting",
                ],
                rows,
                "lrrrrrrrl",
            ),
            "",
        ]
    out += [n + "\n" for n in notes]
    return out


def _figures_section(figures: dict[str, list[str]] | None, splits: dict[str, str] | None = None) -> list[str]:
    if not figures:
        return []
    on_val = [d for d, s in (splits or {}).items() if s != "test"]
    where = "first test images" + (f"; {', '.join(on_val)}: first val images, {NO_TEST_SPLIT_NOTE}" if on_val else "")
    out = [
        "## Qualitative figures",
        "",
        f"Each row: image, ground truth, heatmap, binary mask ({where}; first prompt of the dataset).",
        "",
    ]
    if any(Path(link).stem.endswith("_worst") for links in figures.values() for link in links):
        out += [
            "Worst-image galleries (`<rung>_<dataset>_worst`): the `eval.worst_images` lowest-Dice images of the "
            "reported split with the dataset's first prompt; each row: image (its Dice and IoU in the title), "
            "ground truth, the mask evaluation scored.",
            "",
        ]
    for rung, links in figures.items():
        for link in links:
            if link.endswith(".csv"):
                out.append(f"- {rung}, per-image scores (IoU, Dice, foreground shares): [{Path(link).name}]({link})")
                continue
            name = Path(link).stem.removeprefix(rung + "_")
            label = f"{name.removesuffix('_worst')}, worst images" if name.endswith("_worst") else name
            out.append(f"- {rung}, {label}: ![{Path(link).stem}]({link})")
    return out + [""]


# --------------------------------------------------------------------------- assembly
def build_report(
    data_metrics: dict[str, dict],
    train_metrics: dict[str, dict],
    eval_metrics: dict[str, dict],
    baselines: dict,
    *,
    model_source: str,
    rungs: list[str] | None = None,
    datasets: Sequence[str] = DATASETS,
    figures: dict[str, list[str]] | None = None,
    boundary_tolerance_px: int | None = None,
    infer_defaults: dict | None = None,
    runtime: dict[str, dict] | None = None,
    scored_splits: dict[str, str] | None = None,
    clipseg_in_ladder: bool = True,
    ceilings: dict | None = None,
    intervals: dict[str, dict[str, Interval]] | None = None,
    paired: dict[tuple[str, str, str], Interval] | None = None,
) -> str:
    """The markdown report.

    Args:
        data_metrics: ``{dataset: metrics/data/<dataset>.json}`` (missing datasets allowed).
        train_metrics: ``{rung: metrics/train/<rung>.json}``.
        eval_metrics: ``{rung: metrics/eval/<rung>.json}``.
        baselines: ``{dataset: promptseg.score.baselines.trivial_baseline_scores(...)}`` on the test split (metrics/eval/baselines.json).
        model_source: ``model.source`` from params.yaml (``"small"`` or pretrained weights).
        rungs: the ladder's rungs, in params order; default: every rung found in train or eval metrics.
            A rung with no files gets a line saying so; a skipped rung gets a "skipped" row and its reason.
        datasets: datasets to report.
        figures: ``{rung: [relative link, ...]}`` to qualitative PNGs that exist (``*_worst.png``: the worst-image
            galleries) and to the per-image CSV (``*.csv``).
        boundary_tolerance_px: the boundary F1 tolerance, named in the thin-structure note when given.
        infer_defaults: ``{"hflip_tta": bool, "prompt_ensemble": bool}`` from ``params.yaml: infer``, named next to
            the inference-options table when given.
        runtime: ``{rung: metrics/runtime/<rung>.json}``; a runtime table when given (None: no table).
        scored_splits: ``{dataset: "test" | "val"}``, the split each dataset's tables report (``val`` for a dataset
            without test split, labelled as optimistic); default: ``val`` where an evaluation says
            ``reported_split: val``, else ``test``.
        clipseg_in_ladder: whether the ladder has CLIPSeg rungs; without them the header says so instead of
            describing ``model_source``, and the CLIPSeg zero-shot notes are left out.
        ceilings: ``metrics/eval/ceilings.json`` (:func:`promptseg.score.ceilings.ceiling_scores`): what each
            thin-structure dataset's labels allow, stated under its ladder when scored on the same split.
        intervals: ``{dataset: {rung: Interval}}`` of each rung's mIoU on the reported split
            (:func:`rung_intervals`): a column of the ladder tables when given.
        paired: ``{(lora rung, full rung, dataset): Interval}`` of the mean per-row difference
            (:func:`rung_intervals`), stated with the LoRA-against-full comparison.
    """
    if rungs is None:
        rungs = list(dict.fromkeys([*train_metrics, *eval_metrics]))
    rungs = list(rungs)
    zeroshot_skipped = zeroshot_skip_reason(ZEROSHOT, "clipseg", model_source) is not None  # the one rule
    if clipseg_in_ladder and not zeroshot_skipped and ZEROSHOT in eval_metrics and ZEROSHOT not in rungs:
        rungs.append(ZEROSHOT)
    if zeroshot_skipped:
        rungs = [v for v in rungs if v != ZEROSHOT]

    splits = {d: _scored_split(d, eval_metrics, scored_splits) for d in datasets}
    lines = _header(rungs, model_source, datasets, clipseg_in_ladder) + _missing_test_lines(splits)
    if clipseg_in_ladder and zeroshot_skipped:
        lines += ["Zero-shot: a zero-shot row is meaningless for a randomly initialised model and is omitted.", ""]
    elif clipseg_in_ladder and ZEROSHOT not in eval_metrics:
        lines += [f"Zero-shot: no metrics/eval/{ZEROSHOT}.json yet, so no zero-shot row.", ""]
    lines += _data_section(data_metrics, datasets)
    number = 2
    for dataset in datasets:
        ceiling = (ceilings or {}).get(dataset)
        if ((ceilings or {}).get("scored_splits") or {}).get(dataset) != splits[dataset]:
            ceiling = None  # read off another split than the ladder's: not comparable
        lines += _ladder_section(
            number,
            dataset,
            rungs,
            train_metrics,
            eval_metrics,
            baselines,
            splits[dataset],
            ceiling,
            (intervals or {}).get(dataset) or None,
        )
        number += 1
    pretrained = _pretrained_section(number, rungs, train_metrics, eval_metrics, datasets, splits, paired)
    if pretrained:
        lines += pretrained
        number += 1
    lines += _options_section(number, rungs, eval_metrics, datasets, infer_defaults)
    number += 1
    for dataset in datasets:
        lines += _per_prompt_section(
            number, dataset, rungs, eval_metrics, baselines, boundary_tolerance_px, splits[dataset]
        )
        number += 1
    lines += _switching_section(number, rungs, eval_metrics, data_metrics, datasets, splits)
    if runtime is not None:
        lines += _runtime_section(number + 1, rungs, runtime)
    lines += _figures_section(figures, splits)
    text = "\n".join(lines)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text.rstrip("\n") + "\n"


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def _train_seconds(tr: dict) -> float | None:
    """A rung's training wall time: ``train_seconds`` when the train metrics have it, else epochs x s/epoch."""
    seconds = _number(tr.get("train_seconds"))
    if seconds is None:
        per_epoch, epochs = _number(tr.get("seconds_per_epoch")), _number(tr.get("epochs"))
        seconds = per_epoch * epochs if per_epoch is not None and epochs is not None else None
    return seconds


def build_summary(
    train_metrics: dict[str, dict],
    eval_metrics: dict[str, dict],
    baselines: dict,
    *,
    rungs: Sequence[str],
    datasets: Sequence[str] = DATASETS,
) -> dict:
    """The headline, ``metrics/summary.json`` (about 20 numbers; the full files stay for drill-down).

    Per dataset: test ``miou`` and ``dice`` (mean over prompts) of every evaluated rung and of the best
    no-learning mask (``no_learning``: the highest test Dice, as the report's ladder names it), and
    ``cross_prompt_lit.<rung>``: the test cross-prompt lit of the rung with the highest VAL Dice (test never
    chooses). ``train_minutes``: the training wall time of every rung, summed. Skipped or missing rungs are left out.
    """
    summary: dict[str, Any] = {}
    for dataset in datasets:
        block: dict[str, Any] = {}
        best_val: tuple[float, str] | None = None
        for rung in rungs:
            ev = eval_metrics.get(rung)
            test = _get(ev, dataset, "test", "all_prompts")
            if not isinstance(test, dict):
                continue
            miou, dice = _number(test.get("miou")), _number(test.get("dice"))
            if miou is None and dice is None:
                continue
            block[rung] = {k: round(v, 4) for k, v in (("miou", miou), ("dice", dice)) if v is not None}
            val_dice = _number(_get(ev, dataset, "val", "all_prompts", "dice"))
            if val_dice is not None and (best_val is None or val_dice > best_val[0]):
                best_val = (val_dice, rung)
        best = _best_baseline(baselines.get(dataset) or {})
        if best is not None:
            scores = baselines[dataset][best[0]]
            block["no_learning"] = {
                k: round(v, 4) for k in ("miou", "dice") if (v := _number(scores.get(k))) is not None
            }
        if best_val is not None:
            lit = _number(_get(eval_metrics.get(best_val[1]), dataset, "test", "cross_prompt_lit"))
            if lit is not None:
                block["cross_prompt_lit"] = {best_val[1]: round(lit, 4)}
        if block:
            summary[dataset] = block
    seconds = [
        s
        for v in rungs
        if (tr := train_metrics.get(v)) and not tr.get("skipped") and (s := _train_seconds(tr)) is not None
    ]
    if seconds:
        summary["train_minutes"] = round(sum(seconds) / 60.0, 2)
    return summary


def _read_json(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        print(f"[report] ignoring {path}: not readable JSON ({exc})")
        return None
    return value if isinstance(value, dict) else None


def write_report(
    metrics_dir: Path,
    out_path: Path,
    *,
    rungs: list[str],
    model_source: str,
    datasets: Sequence[str] = DATASETS,
    boundary_tolerance_px: int = 2,
    infer_defaults: dict | None = None,
    summary_path: Path | None = None,
    clipseg_in_ladder: bool = True,
    groups: dict[str, dict[str, str]] | None = None,
    bootstrap: BootstrapParams | None = None,
) -> str:
    """Read the metrics files under ``metrics_dir`` (data, train, eval and ``eval/baselines.json``) and write the
    markdown report to ``out_path`` (figure links relative to it) and, with ``summary_path``, the headline
    (:func:`build_summary`) as JSON. With ``bootstrap``, mIoU intervals from the per-image CSVs, resampling the
    source-photo ``groups`` (``{dataset: {stem: group}}``; a stem without a group is its own). Returns the text."""
    metrics_dir, out_path = Path(metrics_dir), Path(out_path)
    rungs = list(rungs)
    if (
        clipseg_in_ladder
        and zeroshot_skip_reason(ZEROSHOT, "clipseg", model_source) is None
        and eval_json(ZEROSHOT, metrics_dir / "eval").exists()
        and ZEROSHOT not in rungs
    ):
        rungs.append(ZEROSHOT)
    data = {d: m for d in datasets if (m := _read_json(data_json(d, metrics_dir / "data"))) is not None}
    train = {v: m for v in rungs if (m := _read_json(train_json(v, metrics_dir / "train"))) is not None}
    evals = {v: m for v in rungs if (m := _read_json(eval_json(v, metrics_dir / "eval"))) is not None}
    runtime = {v: m for v in rungs if (m := _read_json(runtime_json(v, metrics_dir / "runtime"))) is not None}
    baselines = _read_json(metrics_dir / "eval" / BASELINES_FILE) or {}
    baselines = {d: b for d, b in baselines.items() if d in datasets and isinstance(b, dict) and b}
    ceilings = _read_json(metrics_dir / "eval" / CEILINGS_FILE)
    figures: dict[str, list[str]] = {}
    for rung in rungs:  # linked by path, not read: the first-N figure, then the worst-image gallery
        for dataset in datasets:
            for png in (
                figure_png(rung, dataset, metrics_dir / "eval"),
                worst_png(rung, dataset, metrics_dir / "eval"),
            ):
                if png.exists():
                    figures.setdefault(rung, []).append(_relative(png, out_path.parent))
        per_image = per_image_csv(rung, metrics_dir / "eval")
        if per_image.exists():
            figures.setdefault(rung, []).append(_relative(per_image, out_path.parent))
    intervals, paired = None, None
    if bootstrap is not None:
        intervals, paired = rung_intervals(metrics_dir / "eval", rungs, train, evals, datasets, groups or {}, bootstrap)
    text = build_report(
        data,
        train,
        evals,
        baselines,
        model_source=model_source,
        rungs=rungs,
        datasets=datasets,
        figures=figures,
        boundary_tolerance_px=boundary_tolerance_px,
        infer_defaults=infer_defaults,
        runtime=runtime or None,
        clipseg_in_ladder=clipseg_in_ladder,
        ceilings=ceilings if isinstance(ceilings, dict) else None,
        intervals=intervals,
        paired=paired,
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(text)
    if summary_path is not None:
        summary = build_summary(train, evals, baselines, rungs=rungs, datasets=datasets)
        Path(summary_path).parent.mkdir(parents=True, exist_ok=True)
        write_json(summary_path, summary)
    return text


def rung_intervals(
    eval_dir: Path,
    rungs: Sequence[str],
    train_metrics: dict[str, dict],
    eval_metrics: dict[str, dict],
    datasets: Sequence[str],
    groups: dict[str, dict[str, str]],
    bootstrap: BootstrapParams,
) -> tuple[dict[str, dict[str, Interval]], dict[tuple[str, str, str], Interval]]:
    """Each rung's mIoU interval per dataset on its reported split, from ``per_image/<rung>.csv``, and the paired
    interval of every LoRA rung minus every full rung of the same architecture (``{(lora, full, dataset): ...}``).
    Rungs without a per-image CSV are left out (the table says n/a)."""
    options = {"resamples": bootstrap.resamples, "level": bootstrap.level, "seed": bootstrap.seed}
    intervals: dict[str, dict[str, Interval]] = {}
    paired: dict[tuple[str, str, str], Interval] = {}
    for dataset in datasets:
        split = _scored_split(dataset, eval_metrics, None)
        rows = {r: read_scored_rows(per_image_csv(r, eval_dir), dataset, split) for r in rungs}
        own = groups.get(dataset) or {}
        for rung in rungs:
            if rows[rung] and (found := score_interval(rows[rung], own, **options)) is not None:
                intervals.setdefault(dataset, {})[rung] = found
        method = {r: (train_metrics.get(r) or {}).get("method") for r in rungs}
        architecture = {r: (train_metrics.get(r) or {}).get("architecture") for r in rungs}
        for lora in (r for r in rungs if method[r] == "lora" and rows[r]):
            for full in (r for r in rungs if method[r] == "full" and rows[r] and architecture[r] == architecture[lora]):
                found = paired_interval(rows[lora], rows[full], own, **options)
                if found is not None:
                    paired[(lora, full, dataset)] = found
    return intervals, paired


def _relative(path: Path, start: Path) -> str:

    return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()
