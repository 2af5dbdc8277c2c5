"""promptseg: text-prompted segmentation of wall cracks and drywall joints."""

__version__ = "0.1.0"
