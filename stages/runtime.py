"""DVC stage `runtime@<rung>`: metrics/runtime/<rung>.json, the rung's measured inference time
(PyTorch and ONNX), model size on disk and peak memory on a handful of test images (promptseg.score.runtime).

Params read (declared by the stage in dvc.yaml): runtime, infer.batch_size, data.cracks.prompts,
data.drywall.prompts.
"""

import sys

from promptseg import paths
from promptseg.score.evaluate import skipped_reason
from promptseg.score.runtime import measure_runtime, runtime_images, write_runtime
from promptseg.settings import load_stage_settings, runtime_settings


def main(rung: str) -> None:
    s = load_stage_settings(f"runtime@{rung}", runtime_settings)
    cfg = s.runtime
    out = paths.runtime_json(rung)
    model_dir = paths.model_dir(rung)
    skipped = skipped_reason(model_dir)
    if skipped:
        write_runtime(out, {"skipped": skipped})
        print(f"[runtime] {rung}: skipped: {skipped}")
        return
    prompts = {name: list(p) for name, p in s.prompts.items()}
    images, image_prompts = runtime_images(paths.DATA_PROCESSED, prompts, cfg.images)
    figures = measure_runtime(
        model_dir,
        images,
        image_prompts,
        rounds=cfg.rounds,
        batch_size=s.batch_size,
        threads=cfg.threads or None,
        onnx=cfg.onnx,
    )
    write_runtime(out, figures)
    print(
        f"[runtime] {rung}: torch {figures['torch_ms_per_image']} ms/image, "
        f"onnx {figures.get('onnx_ms_per_image', 'n/a')} ms/image, {figures['model_mb']} MB, "
        f"peak RSS {figures['peak_rss_mb']} MB"
    )


if __name__ == "__main__":
    main(sys.argv[1])
