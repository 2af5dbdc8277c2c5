"""Mask rendering speed: parse + render + write 1,000 synthetic images (500 per dataset), images/s.

.venv/bin/python benchmarks/render_masks.py [--images 1000] [--size 320]
"""

import argparse
import tempfile
import time
from pathlib import Path

from promptseg.ingest.exports import read_export
from promptseg.ingest.masks import build_processed_dataset, render_record_mask
from promptseg.ingest.synthetic import write_synthetic_export


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=320)
    args = parser.parse_args()
    per_dataset = args.images // 2
    counts = {"train": per_dataset * 8 // 10, "valid": per_dataset // 10}
    counts["test"] = per_dataset - counts["train"] - counts["valid"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        started = time.perf_counter()
        for dataset in ("cracks", "drywall"):
            write_synthetic_export(
                dataset, tmp / "raw" / dataset, seed=0, image_size=args.size, counts=counts, negative_share=0.1
            )
        generate = time.perf_counter() - started
        reads = {d: read_export(tmp / "raw" / d) for d in ("cracks", "drywall")}
        started = time.perf_counter()
        import collections

        n = 0
        for read in reads.values():  # rendering alone: masks in memory, no image decode or PNG write
            for record in read.records:
                render_record_mask(record, record.height or args.size, record.width or args.size, collections.Counter())
                n += 1
        render_only = time.perf_counter() - started
        started = time.perf_counter()
        for dataset in ("cracks", "drywall"):
            build_processed_dataset(read_export(tmp / "raw" / dataset), tmp / "processed" / dataset)
        end_to_end = time.perf_counter() - started
    total = 2 * per_dataset
    print(f"images: {total} ({args.size}x{args.size})")
    print(f"synthetic generation: {total / generate:8.1f} images/s ({generate:.1f} s)")
    print(f"render only (in memory): {n / render_only:8.1f} images/s")
    print(
        f"parse + decode + render + write PNG + copy image (masks stage): {total / end_to_end:8.1f} images/s "
        f"({end_to_end:.1f} s)"
    )


if __name__ == "__main__":
    main()
