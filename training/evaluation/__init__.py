"""Evaluation: datasets with gold, metrics, the side-by-side evaluator, reports and plots."""
