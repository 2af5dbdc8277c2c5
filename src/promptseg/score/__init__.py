"""Scoring: evaluation of a rung, its figures, the no-learning baselines, runtime, and the report."""
