"""DVC stage `masks@<dataset>`: parse the raw export, group copies and re-split (data.<dataset>.split),
render {0,255} masks, write metrics/data/<dataset>.json, contact sheets, the suspicious-items CSV and the
problems table (every problem with its file). data/processed/<dataset> is written to a .partial sibling
and renamed into place when complete."""

import sys

from promptseg import paths
from promptseg.ingest.exports import read_export
from promptseg.ingest.masks import write_problems_csv, write_processed_dataset
from promptseg.ingest.qa import read_index, write_contact_sheets, write_suspicious_csv
from promptseg.ingest.splits import plan_splits
from promptseg.settings import load_stage_settings, masks_settings, to_plain

SHOW_PROBLEMS = 10  # problem lines printed; all of them are in metrics/data/problems/<dataset>.csv


def main(dataset: str) -> None:
    settings = load_stage_settings(f"masks@{dataset}", masks_settings, dataset)
    cfg = settings.masks
    raw, out = paths.raw_dir(dataset), paths.processed_dir(dataset)
    problems_csv = paths.problems_csv(dataset)
    read = None
    try:
        read = read_export(raw, empty_segmentation=settings.empty_polygon, max_image_pixels=settings.max_image_pixels)
        plan = plan_splits(
            read.records,
            strategy=settings.split,
            ratios=to_plain(cfg.grouped_split.ratios),
            seed=cfg.grouped_split.seed,
            max_distance=cfg.near_duplicates.dhash_max_distance,
            min_correlation=cfg.near_duplicates.min_correlation,
        )
        summary = write_processed_dataset(
            read, out, min_box_side_px=cfg.min_box_side_px, plan=plan, describes=(paths.data_json(dataset),)
        )
    except (ValueError, OSError) as exc:
        if read is not None and read.problems:
            write_problems_csv(read.problems, problems_csv)
            exc = f"{exc} (all {len(read.problems)} problems: {problems_csv})"
        sys.exit(f"masks@{dataset}: {exc}")

    metrics_dir = paths.METRICS_DATA
    metrics_dir.mkdir(parents=True, exist_ok=True)
    kinds = write_problems_csv(read.problems, problems_csv)  # after rendering: its problems are included
    print(
        f"[masks] {dataset}: {len(read.problems)} problems ("
        + ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items()))
        + f") in {problems_csv}"
    )
    for problem in read.problems[:SHOW_PROBLEMS]:
        print(f"[masks] {dataset}: {problem}")
    if len(read.problems) > SHOW_PROBLEMS:
        print(f"[masks] {dataset}: ... and {len(read.problems) - SHOW_PROBLEMS} more in {problems_csv}")
    write_contact_sheets(
        out, dataset, paths.contact_sheets_dir(), grid=cfg.contact_sheet.grid, tile_px=cfg.contact_sheet.tile_px
    )
    suspicious = paths.suspicious_csv(dataset)
    summary["suspicious"] = write_suspicious_csv(
        read_index(out / "index.csv"),
        suspicious,
        max_foreground_share=cfg.suspicious_max_foreground_share,
    )
    metrics = paths.data_json(dataset)
    paths.write_json(metrics, summary, sort_keys=True)

    split = summary["split"]
    for which in ("as_exported", "written"):
        figures = ", ".join(
            f"{s} {v['images']} images / {v['groups']} photos, leak {v['leak_by_name']} by name "
            f"{v['leak_by_hash']} by hash"
            for s, v in split[which].items()
        )
        print(f"[masks] {dataset}: {which.replace('_', ' ')}: {figures}")
    print(f"[masks] {dataset}: wrote {out}, {metrics}, {suspicious}, {problems_csv} and contact sheets")


if __name__ == "__main__":
    main(sys.argv[1])
