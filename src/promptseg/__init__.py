"""promptseg: text-prompted segmentation of wall cracks and drywall joints."""

__version__ = "0.1.0"

# Our split names; Roboflow calls the validation split "valid".
SPLITS = ("train", "val", "test")
ROBOFLOW_SPLIT_NAMES = {"train": "train", "valid": "val", "val": "val", "test": "test"}
