"""Data in: sources (Roboflow, synthetic, local folders), the export readers, splits, masks and their QA."""
