"""Shared fixtures: a tiny processed tree made by the real pipeline (synthetic export -> parser -> masks)."""
import os
import warnings

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
warnings.filterwarnings("ignore", category=FutureWarning)

TINY_MODEL = {
    "source": "small",
    "clipseg": {
        "vision": {"hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2, "intermediate_size": 128, "patch_size": 16},
        "text": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64},
        "projection_dim": 32, "reduce_dim": 16, "extract_layers": [0, 1, 2], "decoder_num_attention_heads": 2,
    },
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
}
PROMPTS = {"cracks": ["segment crack", "segment wall crack"],
           "drywall": ["segment joint tape", "segment drywall seam", "segment taping area"]}


@pytest.fixture(scope="session")
def processed_root(tmp_path_factory):
    """data/processed-like tree for both datasets: 8 train, 4 val, 4 test images of 128 px each."""
    from promptseg.exports import read_export
    from promptseg.masks import build_processed_dataset
    from promptseg.synthetic import write_synthetic_export

    root = tmp_path_factory.mktemp("pipeline")
    for dataset in ("cracks", "drywall"):
        raw = root / "raw" / dataset
        write_synthetic_export(dataset, raw, seed=3, image_size=128,
                               counts={"train": 8, "valid": 4, "test": 4}, negative_share=0.1)
        build_processed_dataset(read_export(raw), root / "processed" / dataset)
    return root / "processed"
